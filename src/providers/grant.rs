//! What a token grant yields: the tokens, and what the probes need from the response.

use std::collections::BTreeSet;

use super::error::{Call, TransientKind, VerifyError};
use crate::api::Provider;
use crate::secret::Redacted;

/// The token request, as errors name it.
pub(crate) const TOKEN_CALL: Call = "POST token endpoint";

/// The result of a token grant: the tokens plus what probes need from the response.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub tokens: Tokens,
    /// Scopes the provider says it granted, when it says.
    pub scopes: Option<BTreeSet<String>>,
    /// Salesforce: the org's API base URL.
    pub instance_url: Option<String>,
    /// The introspection endpoint, when configured (generic oauth2).
    pub introspection_url: Option<reqwest::Url>,
    pub client_auth: ClientAuth,
}

impl Grant {
    pub fn access_token(&self, provider: Provider) -> Result<&Redacted, VerifyError> {
        self.tokens.access_token.as_ref().ok_or_else(|| {
            VerifyError::transient(
                provider,
                TOKEN_CALL,
                TransientKind::Malformed,
                None,
                None,
                None,
            )
        })
    }
}

/// How a provider authenticates token requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// client_id and client_secret in the form body.
    Body,
    /// HTTP Basic (RFC 6749 §2.3.1).
    Basic,
}

/// Tokens from a token grant. Only a provider's answer makes them (the fields are private to
/// `providers`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub(super) access_token: Option<Redacted>,
    pub(super) token_type: Option<String>,
    pub(super) expires_at: Option<jiff::Timestamp>,
    pub(super) refresh_token: Option<Redacted>,
}

impl Tokens {
    /// No tokens (an API key's verdict).
    pub(super) fn none() -> Self {
        Self {
            access_token: None,
            token_type: None,
            expires_at: None,
            refresh_token: None,
        }
    }

    /// The access token.
    pub fn access_token(&self) -> Option<&Redacted> {
        self.access_token.as_ref()
    }

    /// Its type: `bearer` for the standard type (any spelling), else as the provider wrote it.
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }

    /// When the access token expires, if the provider said.
    pub fn expires_at(&self) -> Option<jiff::Timestamp> {
        self.expires_at
    }

    /// A new refresh token: `Some` only when the provider issued one different from the one
    /// spent. Persist it before using the access token; the old one may be dead already.
    pub fn refresh_token(&self) -> Option<&Redacted> {
        self.refresh_token.as_ref()
    }

    /// Tokens made up by a unit test (a scripted provider).
    #[cfg(test)]
    pub(crate) fn scripted(
        access_token: Option<Redacted>,
        expires_at: Option<jiff::Timestamp>,
        refresh_token: Option<Redacted>,
    ) -> Self {
        Self {
            access_token,
            token_type: Some("bearer".into()),
            expires_at,
            refresh_token,
        }
    }
}
