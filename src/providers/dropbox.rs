//! Dropbox: refresh tokens (offline access) for an app key and secret.
//!
//! Hosts: token `https://api.dropboxapi.com/oauth2/token`, API `https://api.dropboxapi.com/2/`.
//! `spec.endpoint` replaces that one host for both.
//!
//! Probe: `POST /2/users/get_current_account` (scope `account_info.read`). Permissions are the
//! scopes of the token response. Errors are classified by the `.tag` of the `error` union.

use reqwest::Method;
use serde::Deserialize;

use super::classify::api_status;
use super::error::{DeadCause, VerifyError, sanitize_code};
use super::http::{Reply, join, parse_endpoint};
use super::{Access, ClientAuth, Cx, Probe, ProviderApi, TokenConfig};
use crate::api::{Account, AuthType};

pub(crate) struct Dropbox;

fn base(cx: &Cx<'_>) -> Result<reqwest::Url, VerifyError> {
    let raw = cx
        .spec
        .endpoint
        .as_deref()
        .unwrap_or("https://api.dropboxapi.com");
    parse_endpoint(cx.provider(), "spec.endpoint", raw)
}

impl ProviderApi for Dropbox {
    const AUTH: &'static [AuthType] = &[AuthType::RefreshToken];
    const MAY_ROTATE_REFRESH_TOKENS: bool = false;
    const PARAMS: &'static [&'static str] = &[];

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        base(cx).map(drop)
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        Ok(TokenConfig {
            url: join(&base(cx)?, "/oauth2/token"),
            client_auth: ClientAuth::Body,
            scopes: Vec::new(),
            introspection_url: None,
        })
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let request = cx.http.bearer(
            Method::POST,
            join(&base(cx)?, "/2/users/get_current_account"),
            access.token(provider)?,
        );
        let reply = cx
            .http
            .send("POST /2/users/get_current_account", request)
            .await?;
        if !reply.is_success() {
            return Err(error(cx, &reply));
        }
        let account: CurrentAccount = reply.json(provider)?;
        Ok(Probe {
            account: Account {
                id: account.account_id,
                name: account
                    .email
                    .or(account.name.map(|n| n.display_name))
                    .unwrap_or_default(),
            },
            permissions: access.scopes().cloned().unwrap_or_default(),
            credential_expires_at: None,
        })
    }
}

/// auth.stone: 401 `invalid_access_token`/`user_suspended`/`expired_access_token` dead (the
/// token was just minted), 401 `missing_scope`/`route_access_denied` and 403 denied, 429
/// transient with Retry-After.
fn error(cx: &Cx<'_>, reply: &Reply) -> VerifyError {
    let provider = cx.provider();
    let body = serde_json::from_slice::<ErrorBody>(&reply.body).ok();
    let tag = body
        .as_ref()
        .and_then(|b| b.error.tag.as_deref())
        .unwrap_or("");
    let code = sanitize_code(tag);
    match (reply.status.as_u16(), tag) {
        (401, "missing_scope") => {
            let missing = body
                .and_then(|b| b.error.required_scope)
                .into_iter()
                .collect();
            VerifyError::denied(provider, reply.call, Some(401), code, missing)
        }
        (401, "route_access_denied") => {
            VerifyError::denied(provider, reply.call, Some(401), code, Vec::new())
        }
        (401, "user_suspended") => VerifyError::dead(
            provider,
            reply.call,
            Some(401),
            code,
            DeadCause::AccountInactive,
        ),
        _ => api_status(provider, reply, DeadCause::TokenRejected, code, None),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Tagged,
}

#[derive(Deserialize)]
struct Tagged {
    #[serde(rename = ".tag")]
    tag: Option<String>,
    #[serde(default)]
    required_scope: Option<String>,
}

#[derive(Deserialize)]
struct CurrentAccount {
    account_id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<Name>,
}

#[derive(Deserialize)]
struct Name {
    display_name: String,
}
