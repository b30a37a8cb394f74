//! What tests observe and break: a log of every request (so a test can assert "no writes at
//! steady state"), fault injection (fail the next N matching requests with a status, delay
//! matching requests), and a seeded probabilistic fault plan ([`Chaos`]) for chaos runs.

use std::collections::{BTreeMap, HashMap};
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
    user_agent: Option<String>,
}

impl RequestMatch {
    /// Matches every request.
    pub fn any() -> Self {
        Self {
            method: None,
            verb: None,
            path: PathPattern::Any,
            user_agent: None,
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

    /// Only requests whose User-Agent header contains `needle` (one client among several,
    /// e.g. the operator's and not the test's own).
    pub fn user_agent_contains(mut self, needle: impl Into<String>) -> Self {
        self.user_agent = Some(needle.into());
        self
    }

    pub(crate) fn matches(&self, request: &Incoming<'_>) -> bool {
        let Incoming {
            method,
            verb,
            path,
            user_agent,
        } = *request;
        self.method.as_ref().is_none_or(|m| m == method)
            && self.verb.is_none_or(|v| v == verb)
            && self
                .user_agent
                .as_deref()
                .is_none_or(|needle| user_agent.is_some_and(|agent| agent.contains(needle)))
            && match &self.path {
                PathPattern::Any => true,
                PathPattern::Contains(needle) => path.contains(needle.as_str()),
                PathPattern::Regex(re) => re.is_match(path),
            }
    }
}

/// What the fault rules look at in a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Incoming<'a> {
    pub method: &'a Method,
    pub verb: Verb,
    /// Path and query.
    pub path: &'a str,
    pub user_agent: Option<&'a str>,
}

/// A seeded probabilistic fault plan: about `per_mille` of every thousand matching requests
/// fail. Whether a request fails depends only on the seed, the request's verb and path
/// (without the query) and how many such requests came before it, so one object's requests
/// meet the same faults whatever the interleaving with other objects' requests.
///
/// The faults follow kube-apiserver's: reads answer 429 (with `Retry-After`), 500 or 504;
/// writes also 409, and a 504 on a write may come after the write was stored (the server
/// timed out answering, not storing); watch requests that resume from a resourceVersion
/// answer 410 Expired (the client must list again), others 500 or 429.
#[derive(Clone, Debug)]
pub struct Chaos {
    /// The seed.
    pub seed: u64,
    /// Failures per thousand matching requests.
    pub per_mille: u64,
    /// Which requests the plan applies to.
    pub matcher: RequestMatch,
}

/// What a chaos decision does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Answer with this status instead of serving.
    Refuse(u16),
    /// Serve the request (a write is stored), then answer with this status.
    AfterServing(u16),
}

#[derive(Debug)]
struct ChaosState {
    plan: Chaos,
    seen: HashMap<String, u64>,
    injected: BTreeMap<u16, usize>,
}

/// SplitMix64: a small, well-mixed step for seeded decisions.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ChaosState {
    fn decide(&mut self, request: &Incoming<'_>) -> Option<Injected> {
        if !self.plan.matcher.matches(request) {
            return None;
        }
        let (path, query) = request.path.split_once('?').unwrap_or((request.path, ""));
        let key = format!("{:?} {path}", request.verb);
        let seen = self.seen.entry(key.clone()).or_default();
        let nth = *seen;
        *seen += 1;
        let roll = mix(self.plan.seed ^ mix(fnv(&key) ^ mix(nth)));
        if roll % 1000 >= self.plan.per_mille {
            return None;
        }
        let pick = |choices: &[u16]| choices[((roll >> 20) % choices.len() as u64) as usize];
        let resumes = query.split('&').any(|kv| {
            kv.strip_prefix("resourceVersion=")
                .is_some_and(|rv| !rv.is_empty() && rv != "0")
        });
        let injected = match request.verb {
            Verb::Watch if resumes => Injected::Refuse(410),
            Verb::Watch | Verb::Get | Verb::List | Verb::Other => {
                Injected::Refuse(pick(&[429, 500, 504]))
            }
            _ => match pick(&[409, 429, 500, 504, 504]) {
                504 if (roll >> 40).is_multiple_of(2) => Injected::AfterServing(504),
                code => Injected::Refuse(code),
            },
        };
        let code = match injected {
            Injected::Refuse(code) | Injected::AfterServing(code) => code,
        };
        *self.injected.entry(code).or_default() += 1;
        Some(injected)
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
    chaos: Option<ChaosState>,
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

    pub(crate) fn set_chaos(&mut self, plan: Option<Chaos>) {
        self.chaos = plan.map(|plan| ChaosState {
            plan,
            seen: HashMap::new(),
            injected: BTreeMap::new(),
        });
    }

    /// Faults the chaos plan injected so far, by status code.
    pub(crate) fn chaos_injected(&self) -> BTreeMap<u16, usize> {
        self.chaos
            .as_ref()
            .map(|c| c.injected.clone())
            .unwrap_or_default()
    }

    /// The chaos plan's decision for one request.
    pub(crate) fn take_chaos(&mut self, request: &Incoming<'_>) -> Option<Injected> {
        self.chaos.as_mut()?.decide(request)
    }

    /// Total delay for a request: every matching latency rule adds up.
    pub(crate) fn latency(&self, request: &Incoming<'_>) -> Duration {
        self.latencies
            .iter()
            .filter(|(m, _)| m.matches(request))
            .map(|(_, d)| *d)
            .sum()
    }

    /// Consumes one use of the first matching failure rule and returns its status.
    pub(crate) fn take_failure(&mut self, request: &Incoming<'_>) -> Option<u16> {
        let failure = self
            .failures
            .iter_mut()
            .find(|f| f.remaining > 0 && f.matcher.matches(request))?;
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
