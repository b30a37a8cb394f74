//! The HTTP client every provider call goes through: endpoint rules (https, or http on
//! loopback only), per-call timeouts, and the mapping of transport failures and rate-limit
//! headers onto [`VerifyError`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use super::budget::Budgets;
use super::error::{Call, Misconfiguration, TransientKind, VerifyError};
use super::retry_after::{RateLimitReset, retry_after};
use crate::api::Provider;
use crate::clock::Clock;
use crate::metrics::Metrics;

/// Idle provider connections kept per host.
const POOL_IDLE_PER_HOST: usize = 8;

/// Builds the shared reqwest client. TLS is rustls with the ring provider (kube already builds
/// ring; aws-lc-rs would need cmake), and provider redirects are not followed: a token or probe
/// endpoint that redirects is misconfigured, and following it could carry a bearer token to
/// another host.
pub(crate) fn client(user_agent: &str) -> reqwest::Client {
    // Installing fails only when a provider is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(false) // loopback http is allowed; `parse_endpoint` enforces the rule
        // A burst of first validations opens up to one connection per reconcile worker; a
        // few stay open per host for the spread-out probes that follow.
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .build()
        .expect("a reqwest client with rustls and the ring provider always builds")
}

/// Parses a URL from the spec, params, a token response or discovery metadata, and enforces
/// the endpoint rule: https, or plain http only to loopback (localhost, 127.0.0.0/8, [::1]),
/// which is how tests and demos reach the emulators. No user info, query or fragment.
pub(crate) fn parse_endpoint(
    provider: Provider,
    what: &'static str,
    raw: &str,
) -> Result<Url, VerifyError> {
    let bad = |hint| {
        VerifyError::misconfigured(provider, Misconfiguration::InvalidEndpoint { what, hint })
    };
    let url = Url::parse(raw.trim()).map_err(|_| bad("not an absolute URL"))?;
    let loopback = match url.host() {
        Some(::oauth2::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(::oauth2::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(::oauth2::url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(bad(
                "must be https (plain http is allowed only for loopback hosts)",
            ));
        }
        _ => return Err(bad("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain user info"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not contain a query or fragment"));
    }
    Ok(url)
}

/// `base` with `path` appended to its path (`base` may carry a path prefix of its own).
pub(crate) fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
}

/// The host of a URL, lower-cased, for host-based endpoint mappings.
pub(crate) fn host(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_ascii_lowercase()
}

/// One provider's view of the shared client.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pub provider: Provider,
    pub timeout: Duration,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
    budgets: Option<Arc<Budgets>>,
}

/// An HTTP answer, read in full.
pub(crate) struct Reply {
    pub call: Call,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Http {
    pub fn new(
        client: reqwest::Client,
        provider: Provider,
        timeout: Duration,
        clock: Arc<dyn Clock>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            client,
            provider,
            timeout,
            clock,
            metrics,
            budgets: None,
        }
    }

    /// Sends every request within the providers' rate budgets.
    pub fn with_budgets(mut self, budgets: Arc<Budgets>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// The current time on the operator's clock (token and credential expiries are computed
    /// from it, so they agree with the controller's decisions).
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }

    fn observe(&self, call: Call, outcome: &'static str, started: std::time::Instant) {
        if let Some(metrics) = &self.metrics {
            metrics.provider_call(self.provider, call, outcome, started.elapsed());
        }
    }

    pub fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.client.request(method, url).timeout(self.timeout)
    }

    /// A request carrying `token` as its Bearer credential: the one place a provider token
    /// is put into a request.
    pub fn bearer(
        &self,
        method: reqwest::Method,
        url: Url,
        token: &crate::secret::Redacted,
    ) -> reqwest::RequestBuilder {
        self.request(method, url).bearer_auth(token.expose())
    }

    /// Sends a request and reads the whole answer. Only transport failures are errors here;
    /// statuses are for the caller to classify.
    pub async fn send(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, VerifyError> {
        let request = match request.build() {
            Ok(r) => r,
            Err(e) => return Err(self.transport(call, &e)),
        };
        // A budget per base URL: host and port.
        let host = format!(
            "{}:{}",
            host(request.url()),
            request.url().port_or_known_default().unwrap_or_default()
        );
        if let Some(budgets) = &self.budgets
            && let Err(wait) = budgets.acquire(self.provider, &host).await
        {
            self.observe(call, "budget_exhausted", std::time::Instant::now());
            return Err(VerifyError::transient(
                self.provider,
                call,
                TransientKind::RateLimited,
                None,
                None,
                Some(wait),
            ));
        }
        let started = std::time::Instant::now();
        let mut response = match self.client.execute(request).await {
            Ok(r) => r,
            Err(e) => {
                self.observe(call, transport_outcome(&e), started);
                return Err(self.transport(call, &e));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(budgets) = &self.budgets {
            budgets.observe(self.provider, &host, status, &headers);
        }
        let body = match read_capped(&mut response).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Read no further: a provider (or whatever answers in its place) that sends
                // more than any document we ask for is not answering our question.
                self.observe(call, status_outcome(status), started);
                tracing::debug!(call, status = status.as_u16(), "provider answer too large");
                return Err(VerifyError::transient(
                    self.provider,
                    call,
                    TransientKind::Malformed,
                    Some(status.as_u16()),
                    None,
                    None,
                ));
            }
            Err(e) => {
                self.observe(call, transport_outcome(&e), started);
                return Err(self.transport(call, &e));
            }
        };
        self.observe(call, status_outcome(status), started);
        tracing::debug!(call, status = status.as_u16(), "provider answered");
        Ok(Reply {
            call,
            status,
            headers,
            body,
        })
    }

    /// A transport failure as a transient error. reqwest errors are inspected, never
    /// formatted: their text can contain the URL.
    pub fn transport(&self, call: Call, e: &reqwest::Error) -> VerifyError {
        let kind = if e.is_timeout() {
            TransientKind::Timeout
        } else if e.is_decode() {
            TransientKind::Malformed
        } else {
            TransientKind::Connection
        };
        tracing::debug!(call, kind = kind.as_str(), "provider call failed");
        VerifyError::transient(self.provider, call, kind, None, None, None)
    }
}

/// The largest answer read from a provider. Token responses, discovery documents and probe
/// answers are a few KiB; the largest (a Procore company's project list) stays well below.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The whole body, or `None` as soon as it is known to exceed [`MAX_BODY_BYTES`].
async fn read_capped(response: &mut reqwest::Response) -> Result<Option<Bytes>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// The metric outcome of an answered call, from its status code alone (what the status
/// means for the credential is decided by each provider's classification).
fn status_outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        429 => "rate_limited",
        401 => "unauthorized",
        403 => "forbidden",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

fn transport_outcome(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else {
        "connection_error"
    }
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as JSON, or a transient "malformed response".
    pub fn json<T: DeserializeOwned>(&self, provider: Provider) -> Result<T, VerifyError> {
        serde_json::from_slice(&self.body).map_err(|_| self.malformed(provider))
    }

    pub fn malformed(&self, provider: Provider) -> VerifyError {
        VerifyError::transient(
            provider,
            self.call,
            TransientKind::Malformed,
            Some(self.status.as_u16()),
            None,
            None,
        )
    }

    /// How long to wait, from `Retry-After` (seconds or an HTTP date) or, failing that, the
    /// rate-limit reset header named by the provider.
    pub fn retry_after(&self, reset: Option<RateLimitReset>) -> Option<Duration> {
        retry_after(&self.headers, reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        let ok = |u: &str| parse_endpoint(Provider::OAuth2, "spec.endpoint", u).is_ok();
        assert!(ok("https://as.example.com/issuer"));
        assert!(ok("http://127.0.0.1:8080"));
        assert!(ok("http://127.9.9.9"));
        assert!(ok("http://localhost:1"));
        assert!(ok("http://[::1]:8443/x"));
        assert!(!ok("http://as.example.com"));
        assert!(!ok("http://128.0.0.1"));
        assert!(!ok("ftp://127.0.0.1"));
        assert!(!ok("https://user:pw@as.example.com"));
        assert!(!ok("https://as.example.com/?q=1"));
        assert!(!ok("not a url"));
    }

    #[test]
    fn join_keeps_the_base_path() {
        let base = Url::parse("http://127.0.0.1:1/prefix/").unwrap();
        assert_eq!(
            join(&base, "/oauth/token").as_str(),
            "http://127.0.0.1:1/prefix/oauth/token"
        );
    }
}
