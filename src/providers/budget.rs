//! The provider rate budget: what each provider host lets us send, shared by every
//! credential that talks to it.
//!
//! - A host that answers 429 (or 503) with `Retry-After`, or reports an exhausted quota
//!   (`X-Rate-Limit-Remaining: 0` with its reset), is paused until then for every credential,
//!   not just the one that was told.
//! - Providers with a documented fixed rate (Simpro: 10 requests per second per base URL)
//!   get a token bucket per host.
//! - Urgent requests (validating a new or changed credential) go first: routine ones
//!   (interval probes, refreshes) leave a reserve of the bucket to them, and when a pause
//!   ends, routine requests wait a little longer.
//!
//! A request waits for the budget up to [`MAX_WAIT`]; a longer pause fails it as a
//! rate-limited transient error carrying the wait, so the reconcile backs off instead of
//! holding a worker.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use super::retry_after::{RateLimitReset, retry_after};
use crate::api::Provider;
use crate::metrics::Metrics;

/// The longest a request waits for the budget before it gives up and backs off.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(5);

/// How long a host is paused after a 429 that says nothing about when to come back.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause a provider's answer can impose (a bogus `Retry-After` of a year must
/// not stop every credential of the host for a year).
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// How much later than urgent ones routine requests resume after a pause.
const ROUTINE_LAG: Duration = Duration::from_millis(500);

/// Who is asking: urgent work goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Validating a new or changed credential (a rotation, a first validation, a restore).
    Urgent,
    /// Keeping an active credential alive (interval probes, refreshes).
    Routine,
}

impl Priority {
    /// A stable lower-case name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::Routine => "routine",
        }
    }
}

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Runs `work` with its provider requests at `priority`.
pub async fn with_priority<F: Future>(priority: Priority, work: F) -> F::Output {
    PRIORITY.scope(priority, work).await
}

/// The priority of the current task's provider requests (urgent unless said otherwise).
fn current() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or(Priority::Urgent)
}

/// A fixed rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug)]
struct Host {
    provider: Provider,
    rate: Option<Rate>,
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
}

impl Host {
    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        }
        self.refilled = now;
    }

    /// How long `priority` must wait before sending, or take a token and return zero.
    fn take(&mut self, priority: Priority, now: Instant) -> Duration {
        if let Some(until) = self.paused_until {
            let until = match priority {
                Priority::Urgent => until,
                Priority::Routine => until + ROUTINE_LAG,
            };
            if until > now {
                return until - now;
            }
            if priority == Priority::Routine {
                self.paused_until = None;
            }
        }
        self.refill(now);
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        // Routine requests leave a fifth of the bucket (at least one request) to urgent ones.
        let reserve = match priority {
            Priority::Urgent => 0.0,
            Priority::Routine => (rate.burst / 5.0).max(1.0),
        };
        let needed = 1.0 + reserve;
        if self.tokens >= needed {
            self.tokens -= 1.0;
            return Duration::ZERO;
        }
        Duration::from_secs_f64((needed - self.tokens) / rate.per_second.max(f64::MIN_POSITIVE))
            .max(Duration::from_millis(1))
    }
}

/// The budgets of every provider host this process talks to.
pub struct Budgets {
    hosts: Mutex<HashMap<String, Host>>,
    metrics: Option<Arc<Metrics>>,
    /// Each provider's documented fixed rate, if it has one.
    rates: fn(Provider) -> Option<Rate>,
}

impl Budgets {
    pub(crate) fn new(metrics: Option<Arc<Metrics>>, rates: fn(Provider) -> Option<Rate>) -> Self {
        Self {
            hosts: Mutex::default(),
            metrics,
            rates,
        }
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Host>> {
        // A poisoned lock only means a panic elsewhere mid-update: the budgets stay usable.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_paused(&self, provider: Provider, hosts: &HashMap<String, Host>, now: Instant) {
        if let Some(metrics) = &self.metrics {
            let paused = hosts
                .values()
                .filter(|h| h.provider == provider && h.paused_until.is_some_and(|u| u > now))
                .count();
            metrics.budget_paused(provider, paused);
        }
    }

    /// Waits for the budget of `host`. Fails with the remaining wait when that is longer
    /// than [`MAX_WAIT`].
    pub(crate) async fn acquire(&self, provider: Provider, host: &str) -> Result<(), Duration> {
        let priority = current();
        let started = Instant::now();
        loop {
            let now = Instant::now();
            let wait = {
                let mut hosts = self.hosts();
                let rate = (self.rates)(provider);
                let entry = hosts.entry(host.to_owned()).or_insert_with(|| Host {
                    provider,
                    rate,
                    tokens: rate.map_or(0.0, |r| r.burst),
                    refilled: now,
                    paused_until: None,
                });
                let wait = entry.take(priority, now);
                self.publish_paused(provider, &hosts, now);
                wait
            };
            if wait.is_zero() {
                let waited = now.saturating_duration_since(started);
                if let Some(metrics) = &self.metrics {
                    metrics.budget_waited(provider, priority.as_str(), waited);
                }
                return Ok(());
            }
            let waited = now.saturating_duration_since(started);
            if waited + wait > MAX_WAIT {
                return Err(wait);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Learns from an answer of `host`: a 429 or 503 with `Retry-After`, or an exhausted
    /// quota, pauses the host.
    pub(crate) fn observe(
        &self,
        provider: Provider,
        host: &str,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        let Some(pause) = pause_for(status, headers) else {
            return;
        };
        let now = Instant::now();
        let mut hosts = self.hosts();
        if let Some(entry) = hosts.get_mut(host) {
            let until = now + pause.min(MAX_PAUSE);
            entry.paused_until = Some(entry.paused_until.map_or(until, |u| u.max(until)));
            tracing::debug!(provider = %provider, pause = ?pause, "provider host paused");
        }
        self.publish_paused(provider, &hosts, now);
    }
}

/// How long an answer asks the host to be left alone, if at all.
fn pause_for(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let rate_limited = status == StatusCode::TOO_MANY_REQUESTS;
    if rate_limited || status == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(wait) = retry_after(headers, reset_header(headers)) {
            return Some(wait.max(Duration::from_millis(100)));
        }
        return rate_limited.then_some(DEFAULT_PAUSE);
    }
    // A quota spent to the last request: wait for its window to reset.
    let exhausted = ["x-rate-limit-remaining", "x-ratelimit-remaining"]
        .iter()
        .any(|name| header(name) == Some("0"));
    if exhausted {
        let reset = reset_header(headers)?;
        let mut only_reset = headers.clone();
        only_reset.remove(reqwest::header::RETRY_AFTER);
        return retry_after(&only_reset, Some(reset)).filter(|d| !d.is_zero());
    }
    None
}

/// The reset header a provider sent: Procore's `X-Rate-Limit-Reset` (Unix seconds) or
/// SafetyCulture's `x-ratelimit-reset` (seconds from now).
fn reset_header(headers: &HeaderMap) -> Option<RateLimitReset> {
    if headers.contains_key("x-rate-limit-reset") {
        Some(RateLimitReset::UnixSeconds("x-rate-limit-reset"))
    } else if headers.contains_key("x-ratelimit-reset") {
        Some(RateLimitReset::DeltaSeconds("x-ratelimit-reset"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn pauses_follow_retry_after_and_exhausted_quotas() {
        let secs = Duration::from_secs;
        assert_eq!(
            pause_for(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", "7")])
            ),
            Some(secs(7))
        );
        assert_eq!(
            pause_for(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()),
            Some(DEFAULT_PAUSE)
        );
        assert_eq!(
            pause_for(
                StatusCode::SERVICE_UNAVAILABLE,
                &headers(&[("retry-after", "3")])
            ),
            Some(secs(3))
        );
        assert_eq!(
            pause_for(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
            None
        );
        assert_eq!(
            pause_for(
                StatusCode::OK,
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")])
            ),
            Some(secs(30))
        );
        assert_eq!(
            pause_for(
                StatusCode::OK,
                &headers(&[("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "30")])
            ),
            None
        );
        assert_eq!(pause_for(StatusCode::OK, &HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_host_holds_every_request_and_urgent_ones_resume_first() {
        let budgets = Budgets::new(None, crate::providers::documented_rate);
        budgets.acquire(Provider::Procore, "h").await.unwrap();
        budgets.observe(
            Provider::Procore,
            "h",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "2")]),
        );
        let start = Instant::now();
        budgets.acquire(Provider::Procore, "h").await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        budgets.observe(
            Provider::Procore,
            "h",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "2")]),
        );
        let start = Instant::now();
        with_priority(Priority::Routine, budgets.acquire(Provider::Procore, "h"))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(2) + ROUTINE_LAG);
        // Another host is not held by this one's pause.
        let start = Instant::now();
        budgets.acquire(Provider::Procore, "other").await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A pause longer than the longest wait fails at once with the wait.
        budgets.observe(
            Provider::Procore,
            "h",
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "60")]),
        );
        let err = budgets.acquire(Provider::Procore, "h").await.unwrap_err();
        assert_eq!(err, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_rate_is_kept_and_routine_requests_leave_a_reserve() {
        let budgets = Budgets::new(None, crate::providers::documented_rate);
        let start = Instant::now();
        // Simpro: 10 per second. 30 routine requests: 8 at once (2 left in reserve), then
        // one per 100 ms.
        for _ in 0..30 {
            with_priority(Priority::Routine, budgets.acquire(Provider::Simpro, "s"))
                .await
                .unwrap();
        }
        let routine = start.elapsed();
        assert!(
            routine >= Duration::from_millis(2200) && routine <= Duration::from_millis(2400),
            "{routine:?}"
        );
        // An urgent request right after finds the reserve and goes at once (or within one
        // refill).
        let start = Instant::now();
        budgets.acquire(Provider::Simpro, "s").await.unwrap();
        assert!(
            start.elapsed() <= Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        // Providers without a documented rate are not held.
        let start = Instant::now();
        for _ in 0..1000 {
            budgets.acquire(Provider::Procore, "p").await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
