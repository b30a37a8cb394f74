//! SafetyCulture: a user or service-user API token sent as a bearer token.
//!
//! Host `https://api.safetyculture.io`; `spec.endpoint` replaces it (an EU base
//! `api.eu.safetyculture.com` is UNCONFIRMED, so it is not offered by name).
//!
//! Probe: `GET /accounts/user/v1/user:WhoAmI` names the token's user and organisation
//! (`organisation:<id>`). Tokens expire after 30 days without use, so a successful call
//! moves the credential's expiry to now + 30 days.

use std::collections::BTreeSet;

use reqwest::Method;
use serde::Deserialize;

use super::classify::api_status;
use super::error::{DeadCause, Misconfiguration, VerifyError};
use super::http::{join, parse_endpoint};
use super::retry_after::RateLimitReset;
use super::{Access, Cx, Probe, ProviderApi, TokenConfig};
use crate::api::{Account, AuthType};

pub(crate) struct SafetyCulture;

fn base(cx: &Cx<'_>) -> Result<reqwest::Url, VerifyError> {
    let raw = cx
        .spec
        .endpoint
        .as_deref()
        .unwrap_or("https://api.safetyculture.io");
    parse_endpoint(cx.provider(), "spec.endpoint", raw)
}

/// API tokens die after this long without use (/reference/introduction).
const INACTIVITY_EXPIRY: jiff::SignedDuration = jiff::SignedDuration::from_hours(30 * 24);

impl ProviderApi for SafetyCulture {
    const AUTH: &'static [AuthType] = &[AuthType::ApiKey];
    const MAY_ROTATE_REFRESH_TOKENS: bool = false;
    const PARAMS: &'static [&'static str] = &[];

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        base(cx).map(drop)
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        Err(cx.misconfigured(Misconfiguration::Other(
            "SafetyCulture takes an API token, not OAuth2 tokens",
        )))
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let base = base(cx)?;
        let key = access.token(provider)?;
        let request = cx.http.bearer(
            Method::GET,
            join(&base, "/accounts/user/v1/user:WhoAmI"),
            key,
        );
        let reply = cx
            .http
            .send("GET /accounts/user/v1/user:WhoAmI", request)
            .await?;
        if !reply.is_success() {
            // The 401 body shape is UNCONFIRMED: status codes only.
            return Err(api_status(
                provider,
                &reply,
                DeadCause::ApiKeyRejected,
                None,
                Some(RateLimitReset::DeltaSeconds("x-ratelimit-reset")),
            ));
        }
        let me: WhoAmI = reply.json(provider)?;
        let name = [me.firstname.as_deref(), me.lastname.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Probe {
            account: Account {
                id: me.user_id,
                name,
            },
            permissions: BTreeSet::from([format!("organisation:{}", me.organisation_id)]),
            credential_expires_at: cx.http.now().checked_add(INACTIVITY_EXPIRY).ok(),
        })
    }
}

#[derive(Deserialize)]
struct WhoAmI {
    user_id: String,
    organisation_id: String,
    #[serde(default)]
    firstname: Option<String>,
    #[serde(default)]
    lastname: Option<String>,
}
