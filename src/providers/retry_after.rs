//! How long a provider asks us to wait: `Retry-After` (seconds or an HTTP date), or the
//! provider's own rate-limit reset header, capped at [`MAX_RETRY_AFTER`]. Read by the
//! error classification and by the per-host budget.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How a provider reports when its rate-limit window resets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RateLimitReset {
    /// Header value is a Unix timestamp in seconds (Procore `X-Rate-Limit-Reset`).
    UnixSeconds(&'static str),
    /// Header value is seconds from now (SafetyCulture `x-ratelimit-reset`; UNCONFIRMED
    /// whether it is relative or absolute: values larger than a day are read as Unix time).
    DeltaSeconds(&'static str),
}

/// The longest wait a provider's answer can impose. A `Retry-After` of years (a
/// misconfigured proxy, a garbled header) would otherwise stall the credential, its probes
/// and its token refreshes for as long as the controller's scheduler allows (months).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

pub(crate) fn retry_after(headers: &HeaderMap, reset: Option<RateLimitReset>) -> Option<Duration> {
    asked_wait(headers, reset).map(|wait| wait.min(MAX_RETRY_AFTER))
}

fn asked_wait(headers: &HeaderMap, reset: Option<RateLimitReset>) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header(RETRY_AFTER.as_str()) {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = jiff::fmt::rfc2822::parse(value) {
            return Some(until(at.timestamp()));
        }
    }
    let (name, absolute) = match reset? {
        RateLimitReset::UnixSeconds(name) => (name, true),
        RateLimitReset::DeltaSeconds(name) => (name, false),
    };
    let secs = header(name)?.parse::<i64>().ok()?;
    if absolute || secs > 86_400 {
        Some(until(jiff::Timestamp::from_second(secs).ok()?))
    } else {
        Some(Duration::from_secs(secs.max(0) as u64))
    }
}

fn until(at: jiff::Timestamp) -> Duration {
    let secs = at.as_second() - jiff::Timestamp::now().as_second();
    Duration::from_secs(secs.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_dates_and_reset_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "12".parse().unwrap());
        assert_eq!(retry_after(&headers, None), Some(Duration::from_secs(12)));
        headers.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&headers, None),
            Some(Duration::ZERO),
            "a date in the past"
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", "30".parse().unwrap());
        assert_eq!(
            retry_after(
                &headers,
                Some(RateLimitReset::DeltaSeconds("x-ratelimit-reset"))
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_after(&headers, None), None);
    }

    #[test]
    fn retry_after_is_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "18446744073709551615".parse().unwrap());
        assert_eq!(retry_after(&headers, None), Some(MAX_RETRY_AFTER));
        headers.insert(
            RETRY_AFTER,
            "Wed, 01 Jan 3000 00:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, None), Some(MAX_RETRY_AFTER));
    }
}
