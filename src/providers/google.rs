//! Google (Drive): refresh tokens for an OAuth client.
//!
//! Hosts: token `https://oauth2.googleapis.com/token`, API `https://www.googleapis.com`.
//! `spec.endpoint` replaces both with one base URL (token at `/token`, Drive at
//! `/drive/v3/about`).
//!
//! Probe: `GET /drive/v3/about?fields=user` (`fields` is required). Permissions are the scopes
//! of the token response. A 403 is a permission refusal unless its `reason` is a rate limit.

use reqwest::Method;
use serde::Deserialize;

use super::classify::api_status;
use super::error::{DeadCause, TransientKind, VerifyError, sanitize_code};
use super::http::{Reply, join, parse_endpoint};
use super::{Access, ClientAuth, Cx, Probe, ProviderApi, TokenConfig};
use crate::api::{Account, AuthType};

pub(crate) struct Google;

/// (token URL, API base).
fn hosts(cx: &Cx<'_>) -> Result<(reqwest::Url, reqwest::Url), VerifyError> {
    Ok(match cx.spec.endpoint.as_deref() {
        Some(raw) => {
            let base = parse_endpoint(cx.provider(), "spec.endpoint", raw)?;
            (join(&base, "/token"), base)
        }
        None => (
            reqwest::Url::parse("https://oauth2.googleapis.com/token").expect("static URL"),
            reqwest::Url::parse("https://www.googleapis.com").expect("static URL"),
        ),
    })
}

impl ProviderApi for Google {
    const AUTH: &'static [AuthType] = &[AuthType::RefreshToken];
    const MAY_ROTATE_REFRESH_TOKENS: bool = false;
    const PARAMS: &'static [&'static str] = &[];

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        hosts(cx).map(drop)
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        Ok(TokenConfig {
            url: hosts(cx)?.0,
            client_auth: ClientAuth::Body,
            scopes: Vec::new(),
            introspection_url: None,
        })
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let request = cx
            .http
            .bearer(
                Method::GET,
                join(&hosts(cx)?.1, "/drive/v3/about"),
                access.token(provider)?,
            )
            .query(&[("fields", "user")]);
        let reply = cx.http.send("GET /drive/v3/about", request).await?;
        if !reply.is_success() {
            return Err(error(cx, &reply));
        }
        let about: About = reply.json(provider)?;
        let user = about.user.ok_or_else(|| reply.malformed(provider))?;
        Ok(Probe {
            account: Account {
                id: user.permission_id.unwrap_or_default(),
                name: user.email_address.or(user.display_name).unwrap_or_default(),
            },
            permissions: access.scopes().cloned().unwrap_or_default(),
            credential_expires_at: None,
        })
    }
}

/// Google errors: `{"error":{"code","message","status","errors":[{"reason"}],"details":[{"reason"}]}}`.
fn error(cx: &Cx<'_>, reply: &Reply) -> VerifyError {
    let provider = cx.provider();
    let body = serde_json::from_slice::<ErrorBody>(&reply.body).ok();
    let reason = body.as_ref().and_then(|b| {
        b.error
            .errors
            .iter()
            .chain(&b.error.details)
            .find_map(|e| e.reason.clone())
    });
    let code = reason.as_deref().and_then(sanitize_code);
    match (reply.status.as_u16(), reason.as_deref()) {
        (403, Some("userRateLimitExceeded" | "rateLimitExceeded")) => VerifyError::transient(
            provider,
            reply.call,
            TransientKind::RateLimited,
            Some(403),
            code,
            reply.retry_after(None),
        ),
        _ => api_status(provider, reply, DeadCause::TokenRejected, code, None),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    errors: Vec<Reason>,
    #[serde(default)]
    details: Vec<Reason>,
}

#[derive(Deserialize)]
struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct About {
    user: Option<User>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct User {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email_address: Option<String>,
    #[serde(default)]
    permission_id: Option<String>,
}
