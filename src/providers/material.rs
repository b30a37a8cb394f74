//! The credential material: the values read from the source Secret, and which of them each
//! auth type needs.

use std::collections::BTreeMap;

use super::error::{KeyProblem, MAX_VALUE_BYTES, Misconfiguration, MissingKey, VerifyError};
use super::field::{Field, required_fields};
use crate::api::{AuthType, Provider, SecretKeys};
use crate::secret::Redacted;

/// Values read from the source Secret, under their default names, each redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CredentialMaterial {
    /// OAuth2 client id.
    pub client_id: Option<Redacted>,
    /// OAuth2 client secret.
    pub client_secret: Option<Redacted>,
    /// OAuth2 refresh token.
    pub refresh_token: Option<Redacted>,
    /// API key or token.
    pub api_key: Option<Redacted>,
}

impl CredentialMaterial {
    /// Reads the fields `auth` uses from a Secret's data, honouring `secretRef.keys` renames.
    /// Fails on the first required key that is absent, empty or not UTF-8, and on any key
    /// larger than [`MAX_VALUE_BYTES`]. An optional key (`client_secret` for RefreshToken)
    /// that is absent or empty is left out.
    pub fn from_secret_data<V: AsRef<[u8]>>(
        auth: AuthType,
        keys: &SecretKeys,
        data: &BTreeMap<String, V>,
    ) -> Result<Self, MissingKey> {
        let required = required_fields(auth);
        let read = |field: &'static str, renamed: &Option<String>| {
            let key = renamed.clone().unwrap_or_else(|| field.to_owned());
            let problem = match data.get(&key).map(AsRef::as_ref) {
                None => KeyProblem::Absent,
                Some([]) => KeyProblem::Empty,
                Some(bytes) if bytes.len() > MAX_VALUE_BYTES => {
                    KeyProblem::TooLarge { bytes: bytes.len() }
                }
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(value) => return Ok(Some(Redacted::new(value))),
                    Err(_) => KeyProblem::NotUtf8,
                },
            };
            let unusable = matches!(problem, KeyProblem::NotUtf8 | KeyProblem::TooLarge { .. });
            if required.contains(&field) || unusable {
                Err(MissingKey {
                    field,
                    key,
                    auth,
                    problem,
                })
            } else {
                Ok(None)
            }
        };
        let mut material = CredentialMaterial::default();
        match auth {
            AuthType::ClientCredentials | AuthType::RefreshToken => {
                material.client_id = read(Field::ClientId.key(), &keys.client_id)?;
                material.client_secret = read(Field::ClientSecret.key(), &keys.client_secret)?;
                if auth == AuthType::RefreshToken {
                    material.refresh_token = read(Field::RefreshToken.key(), &keys.refresh_token)?;
                }
            }
            AuthType::ApiKey => material.api_key = read(Field::ApiKey.key(), &keys.api_key)?,
        }
        Ok(material)
    }

    /// Every field with its value, in [`Field::ALL`] order.
    pub fn fields(&self) -> [(Field, &Option<Redacted>); 4] {
        Field::ALL.map(|f| (f, self.get(f)))
    }

    /// One field's value.
    pub fn get(&self, field: Field) -> &Option<Redacted> {
        match field {
            Field::ClientId => &self.client_id,
            Field::ClientSecret => &self.client_secret,
            Field::RefreshToken => &self.refresh_token,
            Field::ApiKey => &self.api_key,
        }
    }

    /// One field's value, to set.
    pub fn field_mut(&mut self, field: Field) -> &mut Option<Redacted> {
        match field {
            Field::ClientId => &mut self.client_id,
            Field::ClientSecret => &mut self.client_secret,
            Field::RefreshToken => &mut self.refresh_token,
            Field::ApiKey => &mut self.api_key,
        }
    }

    /// A field the auth type needs, or Misconfigured(MissingKey) when absent.
    pub(crate) fn need(
        &self,
        provider: Provider,
        auth: AuthType,
        field: Field,
    ) -> Result<&Redacted, VerifyError> {
        self.get(field)
            .as_ref()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                VerifyError::misconfigured(
                    provider,
                    Misconfiguration::MissingKey(MissingKey {
                        field: field.key(),
                        key: field.key().to_owned(),
                        auth,
                        problem: KeyProblem::Absent,
                    }),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_reports_the_renamed_key_that_is_missing() {
        let keys = SecretKeys {
            client_secret: Some("secret".into()),
            ..Default::default()
        };
        let data: BTreeMap<String, Vec<u8>> = [("client_id".to_owned(), b"id".to_vec())].into();
        let err = CredentialMaterial::from_secret_data(AuthType::ClientCredentials, &keys, &data)
            .unwrap_err();
        assert_eq!(err.field, "client_secret");
        assert_eq!(err.key, "secret");
        assert_eq!(err.problem, KeyProblem::Absent);
        assert!(
            err.to_string().contains("client_id, client_secret"),
            "{err}"
        );
    }

    #[test]
    fn material_allows_public_clients_without_secret() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("client_id".to_owned(), b"id".to_vec()),
            ("refresh_token".to_owned(), b"rt".to_vec()),
            ("client_secret".to_owned(), Vec::new()),
        ]
        .into();
        let m = CredentialMaterial::from_secret_data(
            AuthType::RefreshToken,
            &SecretKeys::default(),
            &data,
        )
        .unwrap();
        assert!(m.client_secret.is_none());
        assert_eq!(m.refresh_token.unwrap().expose(), "rt");
    }

    #[test]
    fn material_rejects_empty_and_non_utf8_values() {
        let data: BTreeMap<String, Vec<u8>> = [("api_key".to_owned(), Vec::new())].into();
        let err =
            CredentialMaterial::from_secret_data(AuthType::ApiKey, &SecretKeys::default(), &data)
                .unwrap_err();
        assert_eq!(err.problem, KeyProblem::Empty);
        let data: BTreeMap<String, Vec<u8>> = [("api_key".to_owned(), vec![0xff, 0xfe])].into();
        let err =
            CredentialMaterial::from_secret_data(AuthType::ApiKey, &SecretKeys::default(), &data)
                .unwrap_err();
        assert_eq!(err.problem, KeyProblem::NotUtf8);
    }

    #[test]
    fn material_rejects_oversized_values_even_in_optional_keys() {
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        let data: BTreeMap<String, Vec<u8>> = [
            ("client_id".to_owned(), b"id".to_vec()),
            ("refresh_token".to_owned(), b"rt".to_vec()),
            ("client_secret".to_owned(), big),
        ]
        .into();
        let err = CredentialMaterial::from_secret_data(
            AuthType::RefreshToken,
            &SecretKeys::default(),
            &data,
        )
        .unwrap_err();
        assert_eq!(err.field, "client_secret");
        assert_eq!(
            err.problem,
            KeyProblem::TooLarge {
                bytes: MAX_VALUE_BYTES + 1
            }
        );
        assert!(err.to_string().contains("too large"), "{err}");
    }
}
