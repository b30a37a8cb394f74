//! The provider layer: every HTTP call to a SaaS provider lives here and nowhere else.
//!
//! [`Providers::verify`] turns a credential into a [`Verified`] (token exchange plus one cheap
//! identity and permission probe) or a classified [`VerifyError`]; [`Providers::refresh`] mints
//! a fresh access token. Each provider has one module that knows its hosts, probe calls and
//! error codes (`procore.rs`, `microsoft.rs`, ...); the OAuth2 token plumbing (`token.rs`, on
//! the `oauth2` crate), the HTTP client (`http.rs`) and the error vocabulary (`error.rs`) are
//! shared. How each provider maps `spec.endpoint` onto its hosts is documented in
//! docs/providers.md and on each module.
//!
//! This module is the facade: [`Providers`] and its verify, exchange, probe and refresh. The
//! rest is in parts, re-exported here: `rules.rs` (the `ProviderApi` each provider
//! implements, and its context), `dispatch.rs` (the one place shared code picks a provider's
//! `ProviderApi`: preflight, token grants, [`missing_permissions`]; provider modules never use
//! it, so the dispatch hides no import cycle), `grant.rs` and `verdict.rs` (what a grant and a
//! verification answer), `material.rs` and `field.rs` (what is read from the Secret),
//! `permissions.rs` (comparison in a provider's vocabulary) and `flight.rs` (single flight for
//! refresh-token grants).

// VerifyError carries the account and permission sets of a refusal so the controller can
// report them; it is returned once per verification, never in a hot loop, so its size is fine.
#![allow(clippy::result_large_err)]

/// Runs `$body` with `$api` bound to the provider's implementation.
macro_rules! with_api {
    ($provider:expr, $api:ident => $body:expr) => {
        match $provider {
            $crate::api::Provider::Procore => {
                let $api = $crate::providers::procore::Procore;
                $body
            }
            $crate::api::Provider::Microsoft => {
                let $api = $crate::providers::microsoft::Microsoft;
                $body
            }
            $crate::api::Provider::Salesforce => {
                let $api = $crate::providers::salesforce::Salesforce;
                $body
            }
            $crate::api::Provider::Simpro => {
                let $api = $crate::providers::simpro::Simpro;
                $body
            }
            $crate::api::Provider::SafetyCulture => {
                let $api = $crate::providers::safetyculture::SafetyCulture;
                $body
            }
            $crate::api::Provider::Dropbox => {
                let $api = $crate::providers::dropbox::Dropbox;
                $body
            }
            $crate::api::Provider::Google => {
                let $api = $crate::providers::google::Google;
                $body
            }
            $crate::api::Provider::OAuth2 => {
                let $api = $crate::providers::oauth2::Generic;
                $body
            }
        }
    };
}

pub mod budget;
mod classify;
mod dispatch;
mod dropbox;
mod error;
mod field;
mod flight;
mod google;
mod grant;
mod http;
mod jwt;
mod material;
mod microsoft;
mod oauth2;
mod permissions;
mod procore;
mod retry_after;
mod rules;
mod safetyculture;
mod salesforce;
mod simpro;
mod token;
mod verdict;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(test)]
use futures::future::BoxFuture;
use tracing::instrument;

use crate::api::{AuthType, ConnectorCredentialSpec};
use crate::clock::{Clock, SystemClock};
use crate::metrics::Metrics;

pub use dispatch::missing_permissions;
pub use dispatch::{may_rotate_refresh_tokens, supported_auth};
pub(crate) use error::MAX_VALUE_BYTES;
pub use error::{
    Call, DeadCause, KeyProblem, Misconfiguration, MissingKey, TransientKind, VerifyError,
};
pub use field::{Field, required_fields};
pub(crate) use grant::ClientAuth;
pub use grant::Tokens;
pub use material::CredentialMaterial;
pub(crate) use rules::{Access, Cx, ProviderApi, TokenConfig, json_id};
pub(crate) use verdict::Probe;
pub use verdict::{Exchanged, Verdict, Verified};

pub(crate) use dispatch::documented_rate;
use dispatch::preflight;
use flight::{Flight, FlightKey};
use grant::Grant;
use http::Http;
use verdict::Exchange;

/// The provider layer the controller (and `reconnect-operator check`) calls.
#[derive(Clone)]
pub struct Providers {
    client: reqwest::Client,
    /// In-flight token grants for refresh-token credentials, by credential key and material.
    /// A second caller for the same credential joins the first grant instead of spending the
    /// refresh token again (rotating refresh tokens die on their second use). The material is
    /// part of the key so that validating a new source revision never receives the tokens of
    /// the active one (or the other way round) when both run at once.
    flights: Arc<Mutex<HashMap<FlightKey, Flight>>>,
    /// Refresh-token grants that rotated the token and were answered after every caller had
    /// given up (a caller's timeout is shorter than the grant's, see
    /// [`GRANT_PATIENCE`](flight::GRANT_PATIENCE)): the answer holds the only live refresh
    /// token, so the next grant for the same credential and material takes it up instead of
    /// presenting the spent one.
    landed: Arc<Mutex<HashMap<FlightKey, (std::time::Instant, Grant)>>>,
    /// Authorization-server metadata by issuer (generic oauth2), so refreshes and probes do
    /// not fetch discovery every time.
    discovery: oauth2::DiscoveryCache,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
    /// Each provider host's rate budget, shared by every credential.
    budgets: Arc<budget::Budgets>,
    /// Answers in place of the providers' HTTP APIs: simulations of the controllers over
    /// long stretches of virtual time, where no socket may wait on the wall clock.
    #[cfg(test)]
    script: Option<Arc<dyn Script>>,
}

/// A scripted provider: answers `verify` and `refresh` without any HTTP.
#[cfg(test)]
pub(crate) trait Script: Send + Sync {
    fn verify(&self, req: &VerifyRequest<'_>) -> BoxFuture<'static, Verdict<Verified>>;
    fn refresh(&self, req: &VerifyRequest<'_>) -> BoxFuture<'static, Verdict<Tokens>>;
}

impl Default for Providers {
    fn default() -> Self {
        Self::new()
    }
}

impl Providers {
    /// A provider layer with the default user agent.
    pub fn new() -> Self {
        Self::with_user_agent(concat!("reconnect-operator/", env!("CARGO_PKG_VERSION")))
    }

    /// A provider layer that identifies itself with `user_agent`.
    pub fn with_user_agent(user_agent: &str) -> Self {
        Self {
            client: http::client(user_agent),
            flights: Arc::default(),
            landed: Arc::default(),
            discovery: oauth2::DiscoveryCache::default(),
            clock: Arc::new(SystemClock),
            metrics: None,
            budgets: Arc::new(budget::Budgets::new(None, documented_rate)),
            #[cfg(test)]
            script: None,
        }
    }

    /// Answers every verify and refresh from `script` instead of the providers' APIs.
    #[cfg(test)]
    pub(crate) fn scripted(mut self, script: Arc<dyn Script>) -> Self {
        self.script = Some(script);
        self
    }

    /// Computes token and credential expiries on `clock` (the controllers' clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Records every provider call in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.budgets = Arc::new(budget::Budgets::new(Some(metrics.clone()), documented_rate));
        self.metrics = Some(metrics);
        self
    }

    /// Token exchange plus one cheap identity and permission probe. Succeeds only if every
    /// permission in `req.required` is held. For callers that keep nothing between the two
    /// (`check`); the controller persists a rotated refresh token between [`Self::exchange`]
    /// and [`Self::probe`].
    pub async fn verify(&self, req: &VerifyRequest<'_>) -> Verdict<Verified> {
        match self.exchange(req).await {
            Ok(exchanged) => self.probe(req, exchanged).await,
            Err(e) => Verdict::new(Err(e)),
        }
    }

    /// The first half of [`Self::verify`]: the token grant (none for an API key). When it
    /// rotated the refresh token ([`Exchanged::rotated_refresh_token`]), the spent one may be
    /// dead already: persist the new one before [`Self::probe`] uses the access token.
    #[instrument(skip_all, fields(key = req.key, provider = %req.spec.provider, auth = %req.spec.auth))]
    pub async fn exchange(&self, req: &VerifyRequest<'_>) -> Result<Exchanged, VerifyError> {
        #[cfg(test)]
        if let Some(script) = &self.script {
            return Ok(Exchanged(Exchange::Scripted(script.verify(req).await)));
        }
        let outcome: Result<Exchanged, VerifyError> = async {
            preflight(&self.cx(req))?;
            match req.spec.auth {
                AuthType::ApiKey => Ok(Exchanged(Exchange::Granted(None))),
                AuthType::ClientCredentials | AuthType::RefreshToken => {
                    Ok(Exchanged(Exchange::Granted(Some(self.grant(req).await?))))
                }
            }
        }
        .await;
        if let Err(e) = &outcome {
            tracing::info!(reason = e.reason(), error = %e, "credential not verified");
        }
        outcome
    }

    /// The second half of [`Self::verify`]: one cheap identity and permission probe with the
    /// exchange's access token (or the API key).
    #[instrument(skip_all, fields(key = req.key, provider = %req.spec.provider, auth = %req.spec.auth))]
    pub async fn probe(&self, req: &VerifyRequest<'_>, exchanged: Exchanged) -> Verdict<Verified> {
        #[cfg_attr(
            not(test),
            expect(
                clippy::infallible_destructuring_match,
                reason = "unit tests add a scripted variant"
            )
        )]
        let grant = match exchanged.0 {
            Exchange::Granted(grant) => grant,
            #[cfg(test)]
            Exchange::Scripted(verdict) => return verdict,
        };
        let provider = req.spec.provider;
        let cx = self.cx(req);
        let probed = async {
            // The one place that decides what the probe authenticates with: the exchange
            // granted tokens for the OAuth2 auth types and nothing for ApiKey.
            let access = match &grant {
                Some(grant) => Access::Bearer(grant),
                None => Access::ApiKey(cx.need(Field::ApiKey)?),
            };
            let probe = with_api!(provider, api => api.probe(&cx, access).await)?;
            let missing = missing_permissions(provider, &probe.permissions, req.required);
            if !missing.is_empty() {
                return Err(VerifyError::PermissionDenied {
                    provider,
                    account: Some(probe.account),
                    missing,
                    granted: probe.permissions,
                    call: None,
                    status: None,
                    code: None,
                });
            }
            Ok(probe)
        }
        .await;
        let outcome = match probed {
            Ok(probe) => Verdict::new(Ok(Verified {
                account: probe.account,
                permissions: probe.permissions,
                tokens: grant.map_or_else(Tokens::none, |g| g.tokens),
                credential_expires_at: probe.credential_expires_at,
            })),
            // A failed probe must not lose a refresh token the grant just rotated.
            Err(e) => Verdict {
                result: Err(e),
                rotated: grant
                    .map(|g| g.tokens)
                    .filter(|t| t.refresh_token.is_some()),
            },
        };
        match &outcome.result {
            Ok(v) => tracing::debug!(account = %v.account.id, "credential verified"),
            Err(e) => tracing::info!(reason = e.reason(), error = %e, "credential not verified"),
        }
        outcome
    }

    /// Mints a new access token without probing: the refresh-token grant (returning the new
    /// refresh token when the provider rotated it), or a new client-credentials token.
    /// Overlapping calls (refresh or verify) for the same `req.key` and material share one
    /// grant, so a refresh token is never spent twice.
    #[instrument(skip_all, fields(key = req.key, provider = %req.spec.provider, auth = %req.spec.auth))]
    pub async fn refresh(&self, req: &VerifyRequest<'_>) -> Verdict<Tokens> {
        #[cfg(test)]
        if let Some(script) = &self.script {
            return script.refresh(req).await;
        }
        let outcome = async {
            preflight(&self.cx(req))?;
            if req.spec.auth == AuthType::ApiKey {
                return Err(VerifyError::misconfigured(
                    req.spec.provider,
                    Misconfiguration::Other("an ApiKey credential has no tokens to refresh"),
                ));
            }
            Ok(self.grant(req).await?.tokens)
        }
        .await;
        if let Err(e) = &outcome {
            tracing::info!(reason = e.reason(), error = %e, "token refresh failed");
        }
        // A grant either fails or answers: it never rotates on the way to a failure.
        Verdict::new(outcome)
    }

    /// What no provider call can fix, checked without any call: the auth type, params and
    /// endpoint the spec gives (the first step of every verify and refresh too).
    pub fn check_spec(&self, spec: &ConnectorCredentialSpec) -> Result<(), VerifyError> {
        let material = CredentialMaterial::default();
        let required = BTreeSet::new();
        preflight(&self.cx(&VerifyRequest {
            key: "",
            spec,
            material: &material,
            required: &required,
            timeout: Duration::from_secs(1),
        }))
    }

    fn cx<'a>(&self, req: &VerifyRequest<'a>) -> Cx<'a> {
        Cx::new(
            self.http(req),
            self.discovery.clone(),
            req.spec,
            req.material,
            req.required,
        )
    }

    fn http(&self, req: &VerifyRequest<'_>) -> Http {
        Http::new(
            self.client.clone(),
            req.spec.provider,
            req.timeout,
            self.clock.clone(),
            self.metrics.clone(),
        )
        .with_budgets(self.budgets.clone())
    }
}

/// One credential to check.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// `namespace/name` of the ConnectorCredential: the single-flight key.
    pub key: &'a str,
    /// Provider, auth type, endpoint and params.
    pub spec: &'a ConnectorCredentialSpec,
    /// The secret values.
    pub material: &'a CredentialMaterial,
    /// Permissions that must be held.
    pub required: &'a BTreeSet<String>,
    /// How long one provider call may take.
    pub timeout: Duration,
}

/// Builders for the provider modules' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use super::*;

    /// A spec as a user writes it.
    pub fn spec(
        provider: &str,
        auth: &str,
        endpoint: Option<&str>,
        params: &[(&str, &str)],
    ) -> ConnectorCredentialSpec {
        let mut value = serde_json::json!({
            "provider": provider,
            "auth": auth,
            "secretRef": {"name": "source"},
            "params": params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        });
        if let Some(endpoint) = endpoint {
            value["endpoint"] = endpoint.into();
        }
        serde_json::from_value(value).expect("a valid spec")
    }

    /// Runs `f` with a context for `spec` (no material, nothing required).
    pub fn with_cx<T>(spec: &ConnectorCredentialSpec, f: impl FnOnce(&Cx<'_>) -> T) -> T {
        let material = CredentialMaterial::default();
        let required = BTreeSet::new();
        let http = Http::new(
            http::client("test"),
            spec.provider,
            Duration::from_secs(1),
            Arc::new(SystemClock),
            None,
        );
        f(&Cx::new(
            http,
            oauth2::DiscoveryCache::default(),
            spec,
            &material,
            &required,
        ))
    }
}
