//! Simpro: an API key sent as a bearer token to the build's own instance.
//!
//! `spec.endpoint` is the instance URL (`https://acme.simprosuite.com`, required; a trailing
//! slash or a trailing `/api/v1.0` is tolerated); every call goes there. `params.companyId`
//! defaults to 0 (single-company builds).
//!
//! Probe: `GET /api/v1.0/currentUser/` names the key's user and its AccessibleCompanies, which
//! become `company:<id>`; the configured company must be among them. No endpoint lists an API
//! application's own permissions (UNCONFIRMED), so nothing else is claimed.

use std::collections::BTreeSet;

use reqwest::{Method, Url};
use serde::Deserialize;

use super::budget::Rate;
use super::classify::api_status;
use super::error::{DeadCause, Misconfiguration, VerifyError};
use super::http::{join, parse_endpoint};
use super::{Access, Cx, Probe, ProviderApi, TokenConfig, json_id};
use crate::api::{Account, AuthType};

pub(crate) struct Simpro;

/// The instance base URL with any trailing `/` or `/api/v1.0` removed.
fn base(cx: &Cx<'_>) -> Result<Url, VerifyError> {
    let raw = cx.spec.endpoint.as_deref().ok_or_else(|| {
        cx.misconfigured(Misconfiguration::MissingEndpoint {
            hint: "the Simpro instance URL, e.g. https://acme.simprosuite.com",
        })
    })?;
    let mut url = parse_endpoint(cx.provider(), "spec.endpoint", raw)?;
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/api/v1.0").unwrap_or(path).to_owned();
    url.set_path(&path);
    Ok(url)
}

fn company(cx: &Cx<'_>) -> Result<String, VerifyError> {
    let id = cx.param("companyId").unwrap_or("0");
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(cx.misconfigured(Misconfiguration::InvalidParam {
            name: "companyId".into(),
            value: id.into(),
            hint: "a Simpro company id (0 on single-company builds)",
        }));
    }
    Ok(id.trim_start_matches('0').to_owned()).map(|s| if s.is_empty() { "0".into() } else { s })
}

impl ProviderApi for Simpro {
    const AUTH: &'static [AuthType] = &[AuthType::ApiKey];
    const MAY_ROTATE_REFRESH_TOKENS: bool = false;
    // "10 requests/s per base URL" (Simpro SDK README, citing developer.simprogroup.com).
    const RATE: Option<Rate> = Some(Rate {
        per_second: 10.0,
        burst: 10.0,
    });
    const PARAMS: &'static [&'static str] = &["companyId"];

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        base(cx)?;
        company(cx)?;
        Ok(())
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        Err(cx.misconfigured(Misconfiguration::Other(
            "Simpro takes an API key, not OAuth2 tokens",
        )))
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let base = base(cx)?;
        let company = company(cx)?;
        let key = access.token(provider)?;
        let request = cx
            .http
            .bearer(Method::GET, join(&base, "/api/v1.0/currentUser/"), key);
        let reply = cx.http.send("GET /api/v1.0/currentUser/", request).await?;
        if !reply.is_success() {
            // No 401/403 body shape is documented (UNCONFIRMED): status codes only.
            return Err(api_status(
                provider,
                &reply,
                DeadCause::ApiKeyRejected,
                None,
                None,
            ));
        }
        let users: Vec<CurrentUser> = reply.json(provider)?;
        let user = users
            .into_iter()
            .next()
            .ok_or_else(|| reply.malformed(provider))?;
        let account = Account {
            id: json_id(&user.id),
            name: user.name.unwrap_or_default(),
        };
        let permissions: BTreeSet<String> = user
            .accessible_companies
            .iter()
            .map(|c| format!("company:{}", json_id(&c.id)))
            .collect();
        let configured = format!("company:{company}");
        if !permissions.contains(&configured) {
            let mut required = cx.required.clone();
            required.insert(configured);
            return Err(VerifyError::PermissionDenied {
                provider,
                missing: super::permissions::missing(self, &permissions, &required),
                account: Some(account),
                granted: permissions,
                call: None,
                status: None,
                code: None,
            });
        }
        Ok(Probe {
            account,
            permissions,
            credential_expires_at: None,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CurrentUser {
    #[serde(rename = "ID")]
    id: serde_json::Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    accessible_companies: Vec<Company>,
}

#[derive(Deserialize)]
struct Company {
    #[serde(rename = "ID")]
    id: serde_json::Value,
}
