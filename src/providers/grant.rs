//! What a token grant yields: the tokens, and what the probes need from the response.

use std::collections::BTreeSet;

use super::error::{Call, TransientKind, VerifyError};
use super::{ClientAuth, Tokens};
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
