//! Turning provider answers into [`VerifyError`] classes, by status code and error code.
//! Descriptions (human text) are never matched where the provider has codes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{Call, DeadCause, Misconfiguration, TransientKind, VerifyError, sanitize_code};
use super::http::Reply;
use super::retry_after::RateLimitReset;
use crate::api::Provider;

/// The class a provider-specific code table assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Dead(DeadCause),
    Denied,
    Transient(TransientKind),
    Misconfigured,
}

impl Class {
    pub fn into_error(
        self,
        provider: Provider,
        call: Call,
        status: Option<u16>,
        code: Option<String>,
        retry_after: Option<std::time::Duration>,
    ) -> VerifyError {
        match self {
            Class::Dead(cause) => VerifyError::dead(provider, call, status, code, cause),
            Class::Denied => VerifyError::denied(provider, call, status, code, Vec::new()),
            Class::Transient(kind) => {
                VerifyError::transient(provider, call, kind, status, code, retry_after)
            }
            Class::Misconfigured => VerifyError::misconfigured(
                provider,
                Misconfiguration::RequestRejected { call, status, code },
            ),
        }
    }
}

/// An OAuth2 token-endpoint error body (RFC 6749 §5.2), plus Microsoft's `error_codes`
/// (AADSTS numbers), which Microsoft says to key on. Used as oauth2's custom error-response
/// type so every provider's token errors parse through one type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OAuthErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_codes: Vec<u64>,
}

impl fmt::Display for OAuthErrorBody {
    // Only the code: descriptions may quote request data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl ::oauth2::ErrorResponse for OAuthErrorBody {}

/// Classifies a token-endpoint error body: by the provider's own codes (`own`, from
/// [`super::ProviderApi::token_error_class`]) when it knows them, else by RFC 6749's.
pub(crate) fn token_error(
    provider: Provider,
    call: Call,
    status: Option<u16>,
    body: &OAuthErrorBody,
    requested_scopes: &[String],
    own: Option<(Class, String)>,
) -> VerifyError {
    if let Some((class, code)) = own {
        let code = Some(code);
        return match class {
            Class::Denied => {
                VerifyError::denied(provider, call, status, code, requested_scopes.to_vec())
            }
            other => other.into_error(provider, call, status, code, None),
        };
    }
    let code = sanitize_code(&body.error);
    let class = match body.error.as_str() {
        "invalid_grant" => Class::Dead(DeadCause::InvalidGrant),
        "invalid_client" | "unauthorized_client" => Class::Dead(DeadCause::InvalidClient),
        "invalid_scope" => {
            return VerifyError::denied(provider, call, status, code, requested_scopes.to_vec());
        }
        "temporarily_unavailable" | "server_error" => Class::Transient(TransientKind::Unavailable),
        "invalid_request" | "unsupported_grant_type" | "unsupported_response_type" => {
            Class::Misconfigured
        }
        "rate_limit_exceeded" => Class::Transient(TransientKind::RateLimited),
        // Any other code from a token endpoint means the credential was refused.
        _ => Class::Dead(DeadCause::Rejected),
    };
    class.into_error(provider, call, status, code, None)
}

/// The common reading of a resource (API) call's status when the provider has nothing more
/// specific to say: 401 dead, 403/404 denied, 408 timeout, 429 rate limited, 5xx unavailable,
/// other 4xx a configuration problem.
pub(crate) fn api_status(
    provider: Provider,
    reply: &Reply,
    dead: DeadCause,
    code: Option<String>,
    reset: Option<RateLimitReset>,
) -> VerifyError {
    let status = reply.status.as_u16();
    let class = match status {
        401 => Class::Dead(dead),
        403 | 404 => Class::Denied,
        408 => Class::Transient(TransientKind::Timeout),
        429 => Class::Transient(TransientKind::RateLimited),
        500..=599 => Class::Transient(TransientKind::Unavailable),
        _ => Class::Misconfigured,
    };
    class.into_error(
        provider,
        reply.call,
        Some(status),
        code,
        reply.retry_after(reset),
    )
}
