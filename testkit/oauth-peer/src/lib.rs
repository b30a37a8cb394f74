//! A real, independent OAuth 2.0 authorization server for tests: the npm package
//! `oidc-provider` (pinned in `node/package-lock.json`) run by node on a free loopback port
//! over plain http, driven through admin hooks.
//!
//! Our emulators follow the providers' documented shapes, but we wrote them and they share our
//! blind spots; this peer is someone else's reading of RFC 6749, 7009, 7662 and 8414.
//!
//! ```no_run
//! # async fn demo() {
//! use reconnect_oauth_peer::OAuthPeer;
//! let peer = OAuthPeer::start().await;
//! let machine = peer.client_credentials_client("sync", &["read", "write"]).await;
//! let app = peer.refresh_token_client("app", &["read"]).await;
//! let refresh_token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
//! peer.set_access_token_ttl(60).await;
//! // spec.endpoint = peer.issuer(); Secret: machine.id / machine.secret() / refresh_token
//! assert_eq!(peer.token_requests(&machine.id).await, 0);
//! # }
//! ```
//!
//! The first start installs the npm dependencies into `{target}/oauth-peer/node` (`npm ci`,
//! under a file lock; `.ci/oauth-peer` does the same). The node process is killed when the
//! [`OAuthPeer`] is dropped, and exits by itself when the test process ends, however it ends.

mod install;
mod process;

use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use process::NodeProcess;

/// A running oidc-provider.
pub struct OAuthPeer {
    issuer: String,
    http: reqwest::Client,
    process: NodeProcess,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClient {
    /// `client_id`.
    pub id: String,
    /// `client_secret`; `None` for public clients.
    pub secret: Option<String>,
}

impl PeerClient {
    /// The client secret of a confidential client.
    pub fn secret(&self) -> &str {
        self.secret.as_deref().expect("a confidential client")
    }
}

/// How a client authenticates at the token, introspection and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic (`client_secret_basic`, oidc-provider's default).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// A client to register with [`OAuthPeer::add_client`].
#[derive(Debug, Clone)]
pub struct NewClient {
    id: String,
    secret: Option<String>,
    grant_types: Vec<&'static str>,
    scopes: Vec<String>,
    auth: AuthMethod,
    public: bool,
    rotate_refresh_tokens: bool,
}

impl NewClient {
    /// A confidential client for the client-credentials grant.
    pub fn client_credentials(id: &str) -> Self {
        Self::new(id, vec!["client_credentials"])
    }

    /// A confidential client for user authorization (authorization code + refresh token),
    /// with rotating refresh tokens.
    pub fn refresh_token(id: &str) -> Self {
        Self::new(id, vec!["authorization_code", "refresh_token"])
    }

    fn new(id: &str, grant_types: Vec<&'static str>) -> Self {
        Self {
            id: id.to_owned(),
            secret: None,
            grant_types,
            scopes: Vec::new(),
            auth: AuthMethod::Basic,
            public: false,
            rotate_refresh_tokens: true,
        }
    }

    /// The API scopes the client may be granted.
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// A chosen secret (default: a random one).
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = Some(secret.to_owned());
        self
    }

    /// The registered client authentication method (default Basic).
    pub fn auth_method(mut self, auth: AuthMethod) -> Self {
        self.auth = auth;
        self
    }

    /// A public client: no secret (`token_endpoint_auth_method: none`).
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Whether each refresh issues a new refresh token and retires the old one (default on).
    pub fn rotate_refresh_tokens(mut self, on: bool) -> Self {
        self.rotate_refresh_tokens = on;
        self
    }
}

/// What the server knows about a refresh token (read without spending it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshTokenState {
    /// Usable; `rotations` refreshes happened in its chain before it was issued.
    Active {
        /// How many times the chain rotated before this token.
        rotations: u32,
    },
    /// Spent by a refresh that rotated it. Presenting it again revokes the whole chain
    /// (oidc-provider's reuse detection).
    Consumed,
    /// Its grant was revoked.
    Revoked,
    /// Past its lifetime.
    Expired,
    /// Never issued, or deleted with its revoked chain.
    Unknown,
}

/// An active access token as the server stores it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessTokenInfo {
    /// `AccessToken` (user grants) or `ClientCredentials`.
    pub kind: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user, for user grants.
    pub account_id: Option<String>,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

impl AccessTokenInfo {
    /// The lifetime the server gave the token.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs((self.exp - self.iat).max(0) as u64)
    }
}

/// Request counters since start or the last [`OAuthPeer::reset_counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Counters {
    /// Token requests oidc-provider handled, by client id and grant type (requests a fault
    /// answered are counted under their path only).
    pub token: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// Every request by path (admin calls excluded).
    pub paths: std::collections::BTreeMap<String, u64>,
    /// Requests for either discovery document (RFC 8414 and OpenID).
    pub discovery: u64,
    /// Introspection requests.
    pub introspection: u64,
    /// Revocation requests.
    pub revocation: u64,
}

/// What access tokens look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenFormat {
    /// Random strings the server stores (default); introspection knows them.
    Opaque,
    /// RFC 9068 JWTs signed by the server. oidc-provider does not store them, so its
    /// introspection answers `{"active": false}` for them.
    Jwt,
}

/// A scripted failure, answered instead of oidc-provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` when given.
    RateLimited {
        /// Seconds for `Retry-After`.
        retry_after_secs: Option<u64>,
    },
    /// 503 with `Retry-After` when given.
    Unavailable {
        /// Seconds for `Retry-After`.
        retry_after_secs: Option<u64>,
    },
    /// The connection is closed without an answer.
    DropConnection,
    /// oidc-provider answers, after this delay.
    Slow(Duration),
}

/// The installed modules, shared by every peer of this process.
fn modules() -> &'static Result<std::path::PathBuf, String> {
    static MODULES: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    MODULES.get_or_init(install::ensure_installed)
}

impl OAuthPeer {
    /// Installs the npm packages if needed, starts oidc-provider and waits until it answers.
    /// Panics (with the server's output) when it cannot.
    pub async fn start() -> Self {
        match Self::try_start().await {
            Ok(peer) => peer,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`OAuthPeer::start`], returning what went wrong instead of panicking.
    pub async fn try_start() -> Result<Self, String> {
        let (process, ready) = tokio::task::spawn_blocking(|| {
            let modules = modules().as_ref().map_err(Clone::clone)?;
            NodeProcess::start(modules)
        })
        .await
        .map_err(|e| format!("the OAuth peer's start-up task failed: {e}"))??;
        // Fails only when a provider is installed already, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let peer = Self {
            issuer: ready.issuer,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("cannot build an HTTP client: {e}"))?,
            process,
        };
        let health: Value = peer.try_admin(reqwest::Method::GET, "health", None).await?;
        if health["issuer"] != peer.issuer.as_str() {
            return Err(format!("the OAuth peer answered as {}", health["issuer"]));
        }
        Ok(peer)
    }

    /// The issuer (`spec.endpoint` for the generic oauth2 provider): `http://127.0.0.1:{port}`.
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// The RFC 7662 introspection endpoint.
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// The RFC 7009 revocation endpoint.
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/token/revocation", self.issuer)
    }

    /// The resource indicator (RFC 8707) of the API all scopes belong to: the audience of
    /// every access token.
    pub fn api(&self) -> String {
        format!("{}/api", self.issuer)
    }

    /// The node process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    // --- clients -------------------------------------------------------------------------

    /// Registers a client-credentials client that may be granted `scopes`.
    pub async fn client_credentials_client(&self, id: &str, scopes: &[&str]) -> PeerClient {
        self.add_client(NewClient::client_credentials(id).scopes(scopes))
            .await
    }

    /// Registers a confidential user-authorization client (rotating refresh tokens) that may
    /// be granted `scopes`.
    pub async fn refresh_token_client(&self, id: &str, scopes: &[&str]) -> PeerClient {
        self.add_client(NewClient::refresh_token(id).scopes(scopes))
            .await
    }

    /// Registers (or replaces) a client.
    pub async fn add_client(&self, client: NewClient) -> PeerClient {
        #[derive(Deserialize)]
        struct Created {
            client_id: String,
            client_secret: Option<String>,
        }
        let created: Created = self
            .admin_post(
                "clients",
                json!({
                    "client_id": client.id,
                    "client_secret": client.secret,
                    "grant_types": client.grant_types,
                    "scope": client.scopes,
                    "public": client.public,
                    "token_endpoint_auth_method": match client.auth {
                        AuthMethod::Basic => "client_secret_basic",
                        AuthMethod::Post => "client_secret_post",
                    },
                    "rotate_refresh_tokens": client.rotate_refresh_tokens,
                }),
            )
            .await;
        PeerClient {
            id: created.client_id,
            secret: created.client_secret,
        }
    }

    /// Takes a client out of service: its credentials get `invalid_client` until
    /// [`OAuthPeer::enable_client`].
    pub async fn disable_client(&self, id: &str) {
        self.admin_post::<Value>(&format!("clients/{}/disable", path(id)), json!({}))
            .await;
    }

    /// Puts a disabled client back.
    pub async fn enable_client(&self, id: &str) {
        self.admin_post::<Value>(&format!("clients/{}/enable", path(id)), json!({}))
            .await;
    }

    /// Deletes a client for good.
    pub async fn delete_client(&self, id: &str) {
        self.admin::<Value>(
            reqwest::Method::DELETE,
            &format!("clients/{}", path(id)),
            None,
        )
        .await;
    }

    /// Changes the API scopes a client may be granted (tokens minted later get at most these,
    /// refreshed ones too).
    pub async fn set_client_scopes(&self, id: &str, scopes: &[&str]) {
        self.patch_client(id, json!({ "scope": scopes })).await;
    }

    /// Changes a client's secret; the old one gets `invalid_client` from now on.
    pub async fn set_client_secret(&self, id: &str, secret: &str) {
        self.patch_client(id, json!({ "client_secret": secret }))
            .await;
    }

    /// Turns refresh-token rotation on or off for a client.
    pub async fn set_refresh_token_rotation(&self, id: &str, on: bool) {
        self.patch_client(id, json!({ "rotate_refresh_tokens": on }))
            .await;
    }

    async fn patch_client(&self, id: &str, body: Value) {
        self.admin::<Value>(
            reqwest::Method::PATCH,
            &format!("clients/{}", path(id)),
            Some(body),
        )
        .await;
    }

    // --- accounts and tokens ---------------------------------------------------------------

    /// A refresh token for `account` and `client`, as if the user had authorized the client
    /// for `scopes` (plus `offline_access`): a Grant and a RefreshToken made through
    /// oidc-provider's models, no browser.
    pub async fn refresh_token_for(
        &self,
        client: &PeerClient,
        account: &str,
        scopes: &[&str],
    ) -> String {
        #[derive(Deserialize)]
        struct Minted {
            refresh_token: String,
        }
        let minted: Minted = self
            .admin_post(
                "refresh-tokens",
                json!({ "client_id": client.id, "account_id": account, "scope": scopes }),
            )
            .await;
        minted.refresh_token
    }

    /// Deactivates a user: refreshing their tokens fails with `invalid_grant`.
    pub async fn disable_account(&self, account: &str) {
        self.admin_post::<Value>(&format!("accounts/{}/disable", path(account)), json!({}))
            .await;
    }

    /// Reactivates a user.
    pub async fn enable_account(&self, account: &str) {
        self.admin_post::<Value>(&format!("accounts/{}/enable", path(account)), json!({}))
            .await;
    }

    /// The state of a refresh token, read without spending it.
    pub async fn refresh_token_state(&self, refresh_token: &str) -> RefreshTokenState {
        let answer: Value = self
            .admin_post(
                "refresh-tokens/state",
                json!({ "refresh_token": refresh_token }),
            )
            .await;
        match answer["state"].as_str() {
            Some("active") => RefreshTokenState::Active {
                rotations: answer["rotations"].as_u64().unwrap_or(0) as u32,
            },
            Some("consumed") => RefreshTokenState::Consumed,
            Some("revoked") => RefreshTokenState::Revoked,
            Some("expired") => RefreshTokenState::Expired,
            _ => RefreshTokenState::Unknown,
        }
    }

    /// Revokes a refresh token's whole chain (its grant, with every token issued under it).
    pub async fn revoke_refresh_token_chain(&self, refresh_token: &str) {
        self.admin_post::<Value>(
            "refresh-tokens/revoke",
            json!({ "refresh_token": refresh_token }),
        )
        .await;
    }

    /// Revokes a token at the RFC 7009 revocation endpoint, authenticated as `client` (HTTP
    /// Basic), as an application would. Revoking a refresh token revokes its grant.
    pub async fn revoke(&self, client: &PeerClient, token: &str) {
        let response = self
            .http
            .post(self.revocation_endpoint())
            .basic_auth(&client.id, client.secret.as_deref())
            .form(&[("token", token)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("revocation request failed: {e}"));
        assert!(
            response.status().is_success(),
            "revocation answered {}",
            response.status()
        );
    }

    /// An active access token as the server stores it, or `None` (unknown, expired, revoked).
    pub async fn access_token_info(&self, access_token: &str) -> Option<AccessTokenInfo> {
        let answer: Value = self
            .admin_post(
                "access-tokens/info",
                json!({ "access_token": access_token }),
            )
            .await;
        (answer["active"] == true)
            .then(|| serde_json::from_value(answer).expect("access token info"))
    }

    /// The access-token lifetime for every client without its own (default 3600 s).
    pub async fn set_access_token_ttl(&self, secs: u64) {
        self.admin::<Value>(
            reqwest::Method::PUT,
            "ttl",
            Some(json!({ "access_token_ttl": secs })),
        )
        .await;
    }

    /// The access-token lifetime for one client.
    pub async fn set_client_access_token_ttl(&self, id: &str, secs: u64) {
        self.admin::<Value>(
            reqwest::Method::PUT,
            "ttl",
            Some(json!({ "access_token_ttl": secs, "client_id": id })),
        )
        .await;
    }

    /// The format of access tokens issued from now on (default opaque).
    pub async fn set_access_token_format(&self, format: AccessTokenFormat) {
        let format = match format {
            AccessTokenFormat::Opaque => "opaque",
            AccessTokenFormat::Jwt => "jwt",
        };
        self.admin::<Value>(
            reqwest::Method::PUT,
            "access-token-format",
            Some(json!({ "format": format })),
        )
        .await;
    }

    // --- counters, faults, discovery ---------------------------------------------------

    /// Every counter.
    pub async fn counters(&self) -> Counters {
        self.admin(reqwest::Method::GET, "counters", None).await
    }

    /// Token requests by `client` (any grant type).
    pub async fn token_requests(&self, client: &str) -> u64 {
        self.counters()
            .await
            .token
            .get(client)
            .map(|by_grant| by_grant.values().sum())
            .unwrap_or(0)
    }

    /// Token requests by `client` with `grant_type`.
    pub async fn token_requests_with(&self, client: &str, grant_type: &str) -> u64 {
        self.counters()
            .await
            .token
            .get(client)
            .and_then(|by_grant| by_grant.get(grant_type).copied())
            .unwrap_or(0)
    }

    /// Requests for either discovery document.
    pub async fn discovery_requests(&self) -> u64 {
        self.counters().await.discovery
    }

    /// Introspection requests.
    pub async fn introspection_requests(&self) -> u64 {
        self.counters().await.introspection
    }

    /// Requests for one path.
    pub async fn requests(&self, path: &str) -> u64 {
        self.counters().await.paths.get(path).copied().unwrap_or(0)
    }

    /// Sets every counter to zero.
    pub async fn reset_counters(&self) {
        self.admin_post::<Value>("counters/reset", json!({})).await;
    }

    /// The next `count` requests (to any path) get `fault`.
    pub async fn fail_next(&self, count: u32, fault: Fault) {
        self.script_fault(None, count, fault).await;
    }

    /// The next `count` requests to `path` (e.g. `/token`) get `fault`.
    pub async fn fail_next_on(&self, path: &str, count: u32, fault: Fault) {
        self.script_fault(Some(path), count, fault).await;
    }

    async fn script_fault(&self, path: Option<&str>, count: u32, fault: Fault) {
        let (mode, retry_after, delay_ms) = match fault {
            Fault::RateLimited { retry_after_secs } => ("rate_limit", retry_after_secs, None),
            Fault::Unavailable { retry_after_secs } => ("unavailable", retry_after_secs, None),
            Fault::DropConnection => ("drop", None, None),
            Fault::Slow(delay) => ("slow", None, Some(delay.as_millis() as u64)),
        };
        self.admin_post::<Value>(
            "faults",
            json!({
                "path": path, "mode": mode, "count": count,
                "retry_after": retry_after, "delay_ms": delay_ms,
            }),
        )
        .await;
    }

    /// Drops every scripted fault not yet used.
    pub async fn clear_faults(&self) {
        self.admin::<Value>(reqwest::Method::DELETE, "faults", None)
            .await;
    }

    /// A `Cache-Control` header on the discovery document (oidc-provider sends none).
    pub async fn set_discovery_cache_control(&self, value: Option<&str>) {
        self.admin::<Value>(
            reqwest::Method::PUT,
            "discovery",
            Some(json!({ "cache_control": value })),
        )
        .await;
    }

    /// Moves the token, introspection and revocation endpoints under `prefix` (e.g. `/v2`):
    /// discovery names the new URLs and the old ones answer 404. `""` moves them back.
    pub async fn move_endpoints(&self, prefix: &str) {
        self.admin::<Value>(
            reqwest::Method::PUT,
            "discovery",
            Some(json!({ "endpoint_prefix": prefix })),
        )
        .await;
    }

    // --- admin transport ---------------------------------------------------------------

    async fn admin_post<T: DeserializeOwned>(&self, route: &str, body: Value) -> T {
        self.admin(reqwest::Method::POST, route, Some(body)).await
    }

    async fn admin<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        route: &str,
        body: Option<Value>,
    ) -> T {
        self.try_admin(method, route, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_admin<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        route: &str,
        body: Option<Value>,
    ) -> Result<T, String> {
        let what = format!("OAuth peer admin {method} /admin/{route}");
        let mut request = self
            .http
            .request(method, format!("{}/admin/{route}", self.issuer));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{what} failed: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{what} failed: {e}"))?;
        if !status.is_success() {
            return Err(format!("{what} answered {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{what} answered {e}: {text}"))
    }
}

/// A path segment for an id.
fn path(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
