//! The credential fields (client id, client secret, refresh token, API key), their default
//! Secret key names, and which of them each auth type needs.

use crate::api::AuthType;

/// One credential field of [`CredentialMaterial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// OAuth2 client id.
    ClientId,
    /// OAuth2 client secret.
    ClientSecret,
    /// OAuth2 refresh token.
    RefreshToken,
    /// API key or token.
    ApiKey,
}

impl Field {
    /// Every field, in the order revisions digest them.
    pub const ALL: [Field; 4] = [
        Field::ClientId,
        Field::ClientSecret,
        Field::RefreshToken,
        Field::ApiKey,
    ];

    /// The field's default Secret key (and its key in the target Secret).
    pub const fn key(self) -> &'static str {
        match self {
            Field::ClientId => "client_id",
            Field::ClientSecret => "client_secret",
            Field::RefreshToken => "refresh_token",
            Field::ApiKey => "api_key",
        }
    }
}

/// The credential fields (default Secret key names) an auth type needs.
pub fn required_fields(auth: AuthType) -> &'static [&'static str] {
    const CLIENT_CREDENTIALS: &[&str] = &[Field::ClientId.key(), Field::ClientSecret.key()];
    // client_secret is optional: public clients (PKCE apps) have none.
    const REFRESH_TOKEN: &[&str] = &[Field::ClientId.key(), Field::RefreshToken.key()];
    const API_KEY: &[&str] = &[Field::ApiKey.key()];
    match auth {
        AuthType::ClientCredentials => CLIENT_CREDENTIALS,
        AuthType::RefreshToken => REFRESH_TOKEN,
        AuthType::ApiKey => API_KEY,
    }
}
