//! What tests observe and break: a log of every request (so a test can assert "no writes at
//! steady state") and fault injection (fail the next N matching requests with a status,
//! delay matching requests).

use std::time::Duration;

use http::Method;

/// The Kubernetes verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Read one object, or a discovery document.
    Get,
    /// List a collection.
    List,
    /// Open a watch stream.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH (merge, JSON, strategic or server-side apply).
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
    /// Any other method.
    Other,
}

impl Verb {
    /// Whether the verb can change stored state.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Update | Self::Patch | Self::Delete | Self::DeleteCollection
        )
    }
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: Method,
    /// Path and query string, as sent (`/api/v1/namespaces/a/secrets?watch=true`).
    pub path: String,
    /// The Kubernetes verb.
    pub verb: Verb,
    /// The Content-Type header, if any (tells the patch type apart).
    pub content_type: Option<String>,
    /// The Accept header, if any (tells metadata-only requests apart).
    pub accept: Option<String>,
    /// The User-Agent header, if any.
    pub user_agent: Option<String>,
    /// When the request arrived.
    pub timestamp: jiff::Timestamp,
}

#[derive(Clone, Debug)]
enum PathPattern {
    Any,
    Contains(String),
    Regex(regex_lite::Regex),
}

/// Which requests a fault applies to: an optional method and verb, and a pattern over the
/// path and query string.
#[derive(Clone, Debug)]
pub struct RequestMatch {
    method: Option<Method>,
    verb: Option<Verb>,
    path: PathPattern,
}

impl RequestMatch {
    /// Matches every request.
    pub fn any() -> Self {
        Self {
            method: None,
            verb: None,
            path: PathPattern::Any,
        }
    }

    /// Only requests with this HTTP method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Only requests of this Kubernetes verb (e.g. `Verb::Watch`).
    pub fn verb(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    /// Only requests whose path and query contain `needle`.
    pub fn path_contains(mut self, needle: impl Into<String>) -> Self {
        self.path = PathPattern::Contains(needle.into());
        self
    }

    /// Only requests whose path and query match `pattern` (regex-lite syntax).
    ///
    /// # Panics
    /// When the pattern does not compile: a bug in the test that wrote it.
    pub fn path_regex(mut self, pattern: &str) -> Self {
        let re = regex_lite::Regex::new(pattern)
            .unwrap_or_else(|e| panic!("bad path pattern {pattern:?}: {e}"));
        self.path = PathPattern::Regex(re);
        self
    }

    pub(crate) fn matches(&self, method: &Method, verb: Verb, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.verb.is_none_or(|v| v == verb)
            && match &self.path {
                PathPattern::Any => true,
                PathPattern::Contains(needle) => path.contains(needle.as_str()),
                PathPattern::Regex(re) => re.is_match(path),
            }
    }
}

#[derive(Debug)]
struct Failure {
    matcher: RequestMatch,
    /// Matching requests still let through before the rule starts failing them.
    skip: usize,
    remaining: usize,
    status: u16,
}

/// Active faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    failures: Vec<Failure>,
    latencies: Vec<(RequestMatch, Duration)>,
}

impl Faults {
    pub(crate) fn fail_next(&mut self, count: usize, matcher: RequestMatch, status: u16) {
        self.fail_after(0, count, matcher, status);
    }

    pub(crate) fn fail_after(
        &mut self,
        skip: usize,
        count: usize,
        matcher: RequestMatch,
        status: u16,
    ) {
        self.failures.push(Failure {
            matcher,
            skip,
            remaining: count,
            status,
        });
    }

    pub(crate) fn add_latency(&mut self, matcher: RequestMatch, latency: Duration) {
        self.latencies.push((matcher, latency));
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Total delay for a request: every matching latency rule adds up.
    pub(crate) fn latency(&self, method: &Method, verb: Verb, path: &str) -> Duration {
        self.latencies
            .iter()
            .filter(|(m, _)| m.matches(method, verb, path))
            .map(|(_, d)| *d)
            .sum()
    }

    /// Consumes one use of the first matching failure rule and returns its status.
    pub(crate) fn take_failure(&mut self, method: &Method, verb: Verb, path: &str) -> Option<u16> {
        let failure = self
            .failures
            .iter_mut()
            .find(|f| f.remaining > 0 && f.matcher.matches(method, verb, path))?;
        if failure.skip > 0 {
            failure.skip -= 1;
            return None;
        }
        failure.remaining -= 1;
        let status = failure.status;
        self.failures.retain(|f| f.remaining > 0);
        Some(status)
    }
}
