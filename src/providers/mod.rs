//! The provider layer: every HTTP call to a SaaS provider lives here and nowhere else.
//!
//! [`Providers::verify`] turns a credential into a [`Verified`] (token exchange plus one cheap
//! identity and permission probe) or a classified [`VerifyError`]; [`Providers::refresh`] mints
//! a fresh access token. Each provider has one module that knows its hosts, probe calls and
//! error codes (`procore.rs`, `microsoft.rs`, ...); the OAuth2 token plumbing (`token.rs`, on
//! the `oauth2` crate), the HTTP client (`http.rs`) and the error vocabulary (`error.rs`) are
//! shared. How each provider maps `spec.endpoint` onto its hosts is documented in
//! docs/providers.md and on each module.

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
mod dropbox;
mod error;
mod google;
mod grant;
mod http;
mod jwt;
mod microsoft;
mod oauth2;
mod procore;
mod retry_after;
mod safetyculture;
mod salesforce;
mod simpro;
mod token;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tracing::instrument;

use crate::api::{Account, AuthType, ConnectorCredentialSpec, Provider, SecretKeys};
use crate::clock::{Clock, SystemClock};
use crate::metrics::Metrics;
use crate::secret::Redacted;

pub use error::{
    Call, DeadCause, KeyProblem, Misconfiguration, MissingKey, TransientKind, VerifyError,
};

use grant::Grant;
use http::Http;

/// The largest credential value (a Secret key, or a token a provider issues) the operator
/// accepts. Real ones are a few KiB at most; the target Secret holds several of them and
/// the API server refuses Secrets over 1 MiB, and every value is sent to the provider on
/// each validation.
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;

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
    /// given up (a caller's timeout is shorter than the grant's, see [`GRANT_PATIENCE`]): the
    /// answer holds the only live refresh token, so the next grant for the same credential
    /// and material takes it up instead of presenting the spent one.
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

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    key: String,
    material: CredentialMaterial,
}

type Flight = Shared<BoxFuture<'static, Result<Grant, VerifyError>>>;

/// How long a refresh-token grant goes on in the background, in multiples of its caller's
/// timeout: a rotating provider that answers late has spent the old token all the same, and
/// its answer holds the new one. Bounded both ways: a provider that hangs holds the
/// credential's grants (which join it rather than present the token a second time) that long.
const GRANT_PATIENCE: u32 = 4;
const GRANT_PATIENCE_MIN: Duration = Duration::from_secs(10);
const GRANT_PATIENCE_MAX: Duration = Duration::from_secs(60);

/// How long a grant answered after its callers gave up is kept for the next attempt.
const LANDED_FOR: Duration = Duration::from_secs(15 * 60);

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
            budgets: Arc::new(budget::Budgets::new(None)),
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
        self.budgets = Arc::new(budget::Budgets::new(Some(metrics.clone())));
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
                None => Access::ApiKey(cx.need("api_key")?),
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

    /// Obtains tokens; refresh-token grants go through the single-flight map.
    async fn grant(&self, req: &VerifyRequest<'_>) -> Result<Grant, VerifyError> {
        if req.spec.auth != AuthType::RefreshToken {
            return token::obtain(&self.cx(req)).await;
        }
        self.single_flight(req).await
    }

    fn single_flight(
        &self,
        req: &VerifyRequest<'_>,
    ) -> impl Future<Output = Result<Grant, VerifyError>> + use<> {
        let flight_key = FlightKey {
            key: req.key.to_owned(),
            material: req.material.clone(),
        };
        let provider = req.spec.provider;
        let timeout = req.timeout;
        // The caller waits for its timeout; the grant itself may go on (GRANT_PATIENCE).
        let within = move |flight: Flight| {
            async move {
                tokio::time::timeout(timeout, flight)
                    .await
                    .unwrap_or_else(|_| {
                        Err(VerifyError::transient(
                            provider,
                            "token grant",
                            TransientKind::Timeout,
                            None,
                            None,
                            None,
                        ))
                    })
            }
            .boxed()
        };
        {
            let mut landed = self.landed.lock().unwrap_or_else(|e| e.into_inner());
            landed.retain(|_, (at, _)| at.elapsed() < LANDED_FOR);
            if let Some((_, grant)) = landed.remove(&flight_key) {
                tracing::debug!("taking up a token grant answered after its caller gave up");
                return futures::future::ready(Ok(grant)).boxed();
            }
        }
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(&flight_key) {
            tracing::debug!("joining an in-flight token grant");
            return within(flight.clone());
        }
        // The grant runs in its own task, so a caller that gives up (timeout, shutdown) does
        // not abort a request that may already have spent the refresh token: whoever still
        // waits receives the new one, and when nobody does, the next grant takes it up.
        let mut http = self.http(req);
        http.timeout = req
            .timeout
            .saturating_mul(GRANT_PATIENCE)
            .clamp(GRANT_PATIENCE_MIN, GRANT_PATIENCE_MAX)
            .max(req.timeout);
        let discovery = self.discovery.clone();
        let spec = req.spec.clone();
        let material = req.material.clone();
        let required = req.required.clone();
        let key = flight_key.clone();
        let map = Arc::clone(&self.flights);
        let landed = Arc::clone(&self.landed);
        let task = tokio::spawn(async move {
            let cx = Cx::new(http, discovery, &spec, &material, &required);
            let result = token::obtain(&cx).await;
            if let Ok(grant) = &result
                && grant.tokens.refresh_token.is_some()
            {
                landed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), (std::time::Instant::now(), grant.clone()));
            }
            map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            result
        });
        let received = Arc::clone(&self.landed);
        let key = flight_key.clone();
        let flight = async move {
            let result = task.await.unwrap_or_else(|_| {
                Err(VerifyError::transient(
                    provider,
                    "token grant",
                    TransientKind::Connection,
                    None,
                    None,
                    None,
                ))
            });
            // A caller receives it: nothing is left for the next grant to take up.
            received
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            result
        }
        .boxed()
        .shared();
        flights.insert(flight_key, flight.clone());
        within(flight)
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
    pub fn key(self) -> &'static str {
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
    match auth {
        AuthType::ClientCredentials => &["client_id", "client_secret"],
        // client_secret is optional: public clients (PKCE apps) have none.
        AuthType::RefreshToken => &["client_id", "refresh_token"],
        AuthType::ApiKey => &["api_key"],
    }
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
                material.client_id = read("client_id", &keys.client_id)?;
                material.client_secret = read("client_secret", &keys.client_secret)?;
                if auth == AuthType::RefreshToken {
                    material.refresh_token = read("refresh_token", &keys.refresh_token)?;
                }
            }
            AuthType::ApiKey => material.api_key = read("api_key", &keys.api_key)?,
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
        field: &'static str,
    ) -> Result<&Redacted, VerifyError> {
        let value = match field {
            "client_id" => self.client_id.as_ref(),
            "client_secret" => self.client_secret.as_ref(),
            "refresh_token" => self.refresh_token.as_ref(),
            _ => self.api_key.as_ref(),
        };
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            VerifyError::misconfigured(
                provider,
                Misconfiguration::MissingKey(MissingKey {
                    field,
                    key: field.to_owned(),
                    auth,
                    problem: KeyProblem::Absent,
                }),
            )
        })
    }
}

/// A credential that passed validation. Only a provider verdict makes one: the fields are
/// private to `providers`, so nothing else can claim a credential passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    account: Account,
    permissions: BTreeSet<String>,
    tokens: Tokens,
    credential_expires_at: Option<jiff::Timestamp>,
}

impl Verified {
    /// Who the credential authenticates as.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Everything the account holds, in the provider's vocabulary.
    pub fn permissions(&self) -> &BTreeSet<String> {
        &self.permissions
    }

    /// Tokens minted on the way (none for API keys).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// When the credential itself stops working unless renewed, when known.
    pub fn credential_expires_at(&self) -> Option<jiff::Timestamp> {
        self.credential_expires_at
    }

    /// A verdict made up by a unit test (a scripted provider).
    #[cfg(test)]
    pub(crate) fn scripted(
        account: Account,
        permissions: BTreeSet<String>,
        tokens: Tokens,
        credential_expires_at: Option<jiff::Timestamp>,
    ) -> Self {
        Self {
            account,
            permissions,
            tokens,
            credential_expires_at,
        }
    }
}

/// Tokens from a token grant. Only a provider's answer makes them (the fields are private to
/// `providers`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    access_token: Option<Redacted>,
    token_type: Option<String>,
    expires_at: Option<jiff::Timestamp>,
    refresh_token: Option<Redacted>,
}

impl Tokens {
    /// No tokens (an API key's verdict).
    fn none() -> Self {
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

/// A provider's answer to [`Providers::verify`] or [`Providers::refresh`], with the tokens
/// of a grant that rotated the refresh token before the call failed: the spent refresh token
/// may be dead, so whoever holds the credential must keep the new one. Kept apart from the
/// error, which says why the call failed and nothing else.
#[derive(Debug)]
#[must_use = "a verdict may carry a rotated refresh token that must be kept"]
pub struct Verdict<T> {
    result: Result<T, VerifyError>,
    rotated: Option<Tokens>,
}

impl<T> Verdict<T> {
    fn new(result: Result<T, VerifyError>) -> Self {
        Self {
            result,
            rotated: None,
        }
    }

    /// The answer. Drops rotated tokens: for callers that do not keep the credential.
    pub fn result(self) -> Result<T, VerifyError> {
        self.result
    }

    /// The answer, by reference.
    pub fn as_result(&self) -> Result<&T, &VerifyError> {
        self.result.as_ref()
    }

    /// Tokens of a grant that rotated the refresh token before the call failed (never set on
    /// success: the verified value holds its tokens).
    pub fn rotated(&self) -> Option<&Tokens> {
        self.rotated.as_ref()
    }

    /// The answer and the rotated tokens.
    pub fn into_parts(self) -> (Result<T, VerifyError>, Option<Tokens>) {
        (self.result, self.rotated)
    }

    /// A verdict made up by a unit test (a scripted provider).
    #[cfg(test)]
    pub(crate) fn scripted(result: Result<T, VerifyError>, rotated: Option<Tokens>) -> Self {
        Self { result, rotated }
    }
}

impl<T> From<Result<T, VerifyError>> for Verdict<T> {
    fn from(result: Result<T, VerifyError>) -> Self {
        Self::new(result)
    }
}

/// A token exchange's result, between [`Providers::exchange`] and [`Providers::probe`].
#[derive(Debug)]
pub struct Exchanged(Exchange);

#[derive(Debug)]
enum Exchange {
    /// The grant (none for an API key).
    Granted(Option<Grant>),
    /// A scripted provider's whole verdict, answered by the probe.
    #[cfg(test)]
    Scripted(Verdict<Verified>),
}

impl Exchanged {
    /// The refresh token the provider rotated in this exchange: the one presented is spent.
    pub fn rotated_refresh_token(&self) -> Option<&Redacted> {
        match &self.0 {
            Exchange::Granted(grant) => grant.as_ref()?.tokens.refresh_token(),
            #[cfg(test)]
            Exchange::Scripted(verdict) => match verdict.as_result() {
                Ok(v) => v.tokens().refresh_token(),
                Err(_) => verdict.rotated()?.refresh_token(),
            },
        }
    }

    /// The exchange's tokens: what a persisted refresh token is written with.
    pub fn tokens(&self) -> Option<&Tokens> {
        match &self.0 {
            Exchange::Granted(grant) => grant.as_ref().map(|g| &g.tokens),
            #[cfg(test)]
            Exchange::Scripted(verdict) => match verdict.as_result() {
                Ok(v) => Some(v.tokens()),
                Err(_) => verdict.rotated(),
            },
        }
    }
}

/// What a probe learned.
pub(crate) struct Probe {
    pub account: Account,
    pub permissions: BTreeSet<String>,
    pub credential_expires_at: Option<jiff::Timestamp>,
}

/// What a probe authenticates with. Built in one place ([`Providers::probe`]) from the
/// exchange: the grant for OAuth2 auth types, the API key (or its MissingKey error) for
/// ApiKey. Preflight has already refused auth types a provider does not accept
/// ([`ProviderApi::AUTH`]), so a provider's probe only ever receives what its auth types make.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access<'a> {
    /// A token grant's answer (ClientCredentials, RefreshToken).
    Bearer(&'a Grant),
    /// The API key (ApiKey).
    ApiKey(&'a Redacted),
}

impl<'a> Access<'a> {
    /// The secret the probe presents as a bearer token: the grant's access token (a
    /// malformed token response when it has none), or the API key.
    pub fn token(self, provider: Provider) -> Result<&'a Redacted, VerifyError> {
        match self {
            Access::Bearer(grant) => grant.access_token(provider),
            Access::ApiKey(key) => Ok(key),
        }
    }

    /// The grant, for what its token response said besides the token (Salesforce's
    /// instance URL, the introspection endpoint); none for an API key.
    pub fn grant(self) -> Option<&'a Grant> {
        match self {
            Access::Bearer(grant) => Some(grant),
            Access::ApiKey(_) => None,
        }
    }

    /// The scopes the token response says were granted, when it says (never for an API key).
    pub fn scopes(self) -> Option<&'a BTreeSet<String>> {
        self.grant()?.scopes.as_ref()
    }
}

/// Everything a provider module needs for one verification.
pub(crate) struct Cx<'a> {
    pub http: Http,
    pub discovery: oauth2::DiscoveryCache,
    pub spec: &'a ConnectorCredentialSpec,
    pub material: &'a CredentialMaterial,
    pub required: &'a BTreeSet<String>,
}

impl<'a> Cx<'a> {
    fn new(
        http: Http,
        discovery: oauth2::DiscoveryCache,
        spec: &'a ConnectorCredentialSpec,
        material: &'a CredentialMaterial,
        required: &'a BTreeSet<String>,
    ) -> Self {
        Self {
            http,
            discovery,
            spec,
            material,
            required,
        }
    }

    pub fn provider(&self) -> Provider {
        self.spec.provider
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.spec
            .params
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn need(&self, field: &'static str) -> Result<&Redacted, VerifyError> {
        self.material.need(self.provider(), self.spec.auth, field)
    }

    pub fn misconfigured(&self, problem: Misconfiguration) -> VerifyError {
        VerifyError::misconfigured(self.provider(), problem)
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

/// Where and how to ask for tokens.
pub(crate) struct TokenConfig {
    pub url: reqwest::Url,
    pub client_auth: ClientAuth,
    /// Scopes to request (client credentials needs them on some providers; refresh may narrow).
    pub scopes: Vec<String>,
    /// RFC 7662 introspection endpoint, when configured (generic oauth2).
    pub introspection_url: Option<reqwest::Url>,
}

/// One provider's knowledge: the auth types and params it accepts, its token endpoint, its
/// probe, and how its permissions compare.
pub(crate) trait ProviderApi {
    /// The auth types this provider accepts (the CRD's CEL rules in `api` say the same;
    /// tests/crd_schema.rs keeps the two in agreement).
    const AUTH: &'static [AuthType];

    /// Whether spending one of this provider's refresh tokens may invalidate it: a rotated
    /// token dies once used (Procore always, Salesforce when the app enables rotation, OAuth2
    /// servers may). Microsoft issues a new one but keeps the old valid; Dropbox and Google do
    /// not rotate.
    const MAY_ROTATE_REFRESH_TOKENS: bool;

    /// `params` keys this provider understands.
    const PARAMS: &'static [&'static str];

    /// Checks params, endpoint and required permissions without any call.
    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError>;

    /// Where to ask for tokens (may discover, for the generic provider).
    fn token_config(
        &self,
        cx: &Cx<'_>,
    ) -> impl Future<Output = Result<TokenConfig, VerifyError>> + Send;

    /// The identity and permission probe, with what [`Providers::probe`] decided it
    /// authenticates with: the tokens just minted, or the API key.
    fn probe(
        &self,
        cx: &Cx<'_>,
        access: Access<'_>,
    ) -> impl Future<Output = Result<Probe, VerifyError>> + Send;

    /// A token request failed with `error`. A provider that caches endpoint metadata forgets
    /// it when the failure suggests the endpoints moved, and answers whether to try once more
    /// with fresh metadata (only when the server said the endpoint is not there, so nothing
    /// was spent).
    fn endpoints_moved(&self, _cx: &Cx<'_>, _error: &VerifyError) -> bool {
        false
    }

    /// Whether `granted` satisfies the `required` permission other than by holding it
    /// exactly (the caller checks that first): a provider whose vocabulary ranks or folds
    /// permissions says so here. By default only equality satisfies.
    fn satisfies(&self, _granted: &BTreeSet<String>, _required: &str) -> bool {
        false
    }

    /// This provider's own token-endpoint error codes, which decide the class before the
    /// RFC 6749 codes do (Microsoft's AADSTS numbers, Salesforce's inactive user or org):
    /// the class, and the code to report.
    fn token_error_class(
        &self,
        _body: &classify::OAuthErrorBody,
    ) -> Option<(classify::Class, String)> {
        None
    }
}

/// An id from provider JSON, which may be a number or a string.
pub(crate) fn json_id(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rejects, before any call (and so before a refresh token is spent), what no call can fix:
/// unsupported auth types, unknown or invalid params, unusable endpoints.
fn preflight(cx: &Cx<'_>) -> Result<(), VerifyError> {
    let spec = cx.spec;
    let provider = spec.provider;
    let supported = supported_auth(provider);
    if !supported.contains(&spec.auth) {
        return Err(VerifyError::misconfigured(
            provider,
            Misconfiguration::UnsupportedAuth {
                auth: spec.auth,
                supported: supported
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        ));
    }
    let known = with_api!(provider, api => known_params(&api));
    if let Some(name) = spec.params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(VerifyError::misconfigured(
            provider,
            Misconfiguration::UnknownParam {
                name: name.clone(),
                known: known.join(", "),
            },
        ));
    }
    with_api!(provider, api => api.validate(cx))
}

fn known_params<P: ProviderApi>(_: &P) -> &'static [&'static str] {
    P::PARAMS
}

fn auth_of<P: ProviderApi>(_: &P) -> &'static [AuthType] {
    P::AUTH
}

fn rotation_of<P: ProviderApi>(_: &P) -> bool {
    P::MAY_ROTATE_REFRESH_TOKENS
}

/// The auth types `provider` accepts ([`ProviderApi::AUTH`]).
pub fn supported_auth(provider: Provider) -> &'static [AuthType] {
    with_api!(provider, api => auth_of(&api))
}

/// Whether spending a refresh token of `provider` may invalidate it
/// ([`ProviderApi::MAY_ROTATE_REFRESH_TOKENS`]).
pub fn may_rotate_refresh_tokens(provider: Provider) -> bool {
    with_api!(provider, api => rotation_of(&api))
}

// The provider rule stays reachable as a method of `api::Provider` (tests and users call
// `provider.supported_auth()`), defined here so that `api` never imports `providers`.
impl Provider {
    /// The auth types this provider accepts; the CRD's CEL rules say the same.
    pub fn supported_auth(self) -> &'static [AuthType] {
        supported_auth(self)
    }
}

/// Required permissions that `granted` does not satisfy, sorted, in each provider's
/// vocabulary ([`ProviderApi::satisfies`]):
/// - procore: `<tool>:<level>` is satisfied by the same tool at that level or higher
///   (none < read_only < standard < admin); `company:<id>` and `project:<id>` by equality.
/// - microsoft: permission names compare case-insensitively (Entra treats them so);
///   `site:<id>` by equality.
/// - salesforce: `permission:<field>` compares case-insensitively (SOQL field names are
///   case-insensitive); scopes by equality.
/// - everything else: plain set difference.
pub fn missing_permissions(
    provider: Provider,
    granted: &BTreeSet<String>,
    required: &BTreeSet<String>,
) -> Vec<String> {
    with_api!(provider, api => required
        .iter()
        .filter(|r| !granted.contains(r.as_str()) && !api.satisfies(granted, r))
        .cloned()
        .collect())
}

/// Builders for the provider modules' unit tests.
#[cfg(test)]
pub(crate) mod testing {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn procore_higher_tool_level_satisfies_lower() {
        let granted = set(&["documents:admin", "budget:read_only", "company:1"]);
        let required = set(&["documents:standard", "documents:read_only", "company:1"]);
        assert!(missing_permissions(Provider::Procore, &granted, &required).is_empty());
    }

    #[test]
    fn procore_lower_tool_level_does_not_satisfy_higher() {
        let granted = set(&["budget:read_only", "documents:standard"]);
        let required = set(&["budget:standard", "documents:admin", "rfi:none"]);
        assert_eq!(
            missing_permissions(Provider::Procore, &granted, &required),
            vec!["budget:standard", "documents:admin"]
        );
    }

    #[test]
    fn procore_companies_and_projects_compare_by_equality() {
        let granted = set(&["company:1", "project:7"]);
        let required = set(&["company:2", "project:7", "project:8"]);
        assert_eq!(
            missing_permissions(Provider::Procore, &granted, &required),
            vec!["company:2", "project:8"]
        );
    }

    #[test]
    fn microsoft_permission_names_compare_case_insensitively() {
        let granted = set(&["Sites.ReadWrite.All", "site:root"]);
        let required = set(&["sites.readwrite.all", "site:root", "Files.Read.All"]);
        assert_eq!(
            missing_permissions(Provider::Microsoft, &granted, &required),
            vec!["Files.Read.All"]
        );
    }

    #[test]
    fn salesforce_permission_fields_compare_case_insensitively_scopes_exactly() {
        let granted = set(&["api", "permission:PermissionsApiEnabled"]);
        let required = set(&["permission:permissionsapienabled", "API", "refresh_token"]);
        assert_eq!(
            missing_permissions(Provider::Salesforce, &granted, &required),
            vec!["API", "refresh_token"]
        );
    }

    #[test]
    fn scope_providers_use_plain_set_difference() {
        let granted = set(&["files.read", "account_info.read"]);
        let required = set(&["files.read", "files.write"]);
        for provider in [Provider::Dropbox, Provider::Google, Provider::OAuth2] {
            assert_eq!(
                missing_permissions(provider, &granted, &required),
                vec!["files.write"]
            );
        }
        assert!(missing_permissions(Provider::Simpro, &granted, &BTreeSet::new()).is_empty());
    }

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
