//! The bad-input corpus (issue #12, items 3 and 4): malformed and hostile specs, Secrets and
//! provider answers, each with the answer it must get (a 422 from the CRD's validation, or a
//! status condition naming the problem), all in one run beside good credentials that must
//! come through untouched.
//!
//! Every case is one row of [`cases`]: the source Secret, the spec, what answers the provider
//! calls, an optional change after the credential first connected, and the expected outcome
//! with a budget of provider calls. The run then checks, for all cases at once:
//!
//! - no panic, and no hot loop (reconciles per credential, counted from the controller's
//!   `reconcile` spans, and provider requests per case, counted by the emulators);
//! - nothing unvalidated in any Secret the operator wrote (every version of every Secret is
//!   watched, not just the last);
//! - the good credentials are still Connected, their target and source Secrets unchanged and
//!   a rotated refresh token still alive at its provider;
//! - no canary (every source Secret value, every token the emulators mint) in the captured
//!   logs (text and JSON, every level), events, status, metrics or error text.
//!
//! The whole corpus runs on the stand-in and on a real kube-apiserver alike. A second,
//! stand-in-only run stores objects the CRD refuses under an older, looser schema (as they
//! reach a cluster whose CRD changed, or one that does not run the CEL rules) and expects the
//! operator's own checks to give the same clear answers ([`older_schema_cases`]).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use reconnect_emulators::{
    Account, Fault, ProcoreEmulator, RefreshPolicy, Response, SimproEmulator,
};
use reconnect_operator::api::ConnectorCredential;
use reconnect_operator::clock::Clock;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

type OAuth2Emulator = reconnect_emulators::OAuth2Emulator;

// ---------------------------------------------------------------------------------------------
// Canaries, logs, panics and reconcile counts, captured for the whole test process.

/// A marker unique to this run, part of every canary.
fn nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{:x}{:x}", nanos, std::process::id())
    })
}

fn canaries() -> &'static Mutex<BTreeSet<String>> {
    static CANARIES: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    CANARIES.get_or_init(Default::default)
}

/// A secret value that must never be seen outside a Secret: registered for the final check.
fn canary(owner: &str, what: &str) -> String {
    let value = format!("canary-{owner}-{what}-{}", nonce());
    canaries().lock().unwrap().insert(value.clone());
    value
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Counts the credential controller's `reconcile` spans by credential name.
#[derive(Clone, Default)]
struct Reconciles(Arc<Mutex<HashMap<String, usize>>>);

impl Reconciles {
    fn of(&self, name: &str) -> usize {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

struct NameField(Option<String>);

impl Visit for NameField {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "name" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Reconciles {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = attrs.metadata();
        if meta.name() == "reconcile"
            && meta
                .target()
                .starts_with("reconnect_operator::controller::credential")
        {
            let mut name = NameField(None);
            attrs.record(&mut name);
            if let Some(name) = name.0 {
                *self.0.lock().unwrap().entry(name).or_default() += 1;
            }
        }
    }
}

/// What the operator said while the test ran: its logs as text and as JSON lines (every level
/// of the operator, debug of its HTTP and Kubernetes clients), reconcile counts, panics.
struct Capture {
    text: Buffer,
    json: Buffer,
    reconciles: Reconciles,
    panics: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    /// The process's capture, installed on first use.
    fn get() -> &'static Self {
        static CAPTURE: OnceLock<Capture> = OnceLock::new();
        CAPTURE.get_or_init(Self::install)
    }

    fn install() -> Self {
        let filter = || {
            tracing_subscriber::EnvFilter::new(
                "warn,reconnect_operator=trace,kube=debug,kube_client=debug,kube_runtime=debug,reqwest=trace,oauth2=trace",
            )
        };
        let text = Buffer::default();
        let json = Buffer::default();
        let reconciles = Reconciles::default();
        let (t, j) = (text.clone(), json.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || t.clone())
                    .with_filter(filter()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(move || j.clone())
                    .with_filter(filter()),
            )
            .with(reconciles.clone());
        tracing::subscriber::set_global_default(subscriber).expect("one capture per process");
        let panics = Arc::new(Mutex::new(Vec::new()));
        let seen = panics.clone();
        let previous = std::panic::take_hook();
        // Panics outside the tests' own code (whose failed assertions are reported anyway).
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_none_or(|l| !l.file().starts_with("tests/"))
            {
                seen.lock().unwrap().push(info.to_string());
            }
            previous(info);
        }));
        Self {
            text,
            json,
            reconciles,
            panics,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus.

/// A value in a source Secret.
#[derive(Clone, Copy, Debug)]
enum V {
    /// The case's client id (not a secret).
    Id,
    /// A canary client secret (or API key, or refresh token).
    Secret,
    /// Present but empty.
    Empty,
    /// Bytes that are not UTF-8 (with a canary inside, should anything decode them lossily).
    Binary,
    /// 1,000,000 bytes (a Secret holds at most 1 MiB in all).
    Huge,
}

/// The source Secret's keys.
type Keys = &'static [(&'static str, V)];

const CLIENT: Keys = &[("client_id", V::Id), ("client_secret", V::Secret)];

/// What a case's provider calls reach.
#[derive(Clone, Copy, Debug)]
enum Upstream {
    /// A generic OAuth2 server that works (its tokens are minted by the emulator).
    Working,
    /// The token endpoint always answers this.
    Token(Answer),
    /// The probe (`params.probeUrl`) always answers this.
    Probe(Answer),
    /// The discovery document always answers this.
    Discovery(Answer),
    /// Headers, then one body byte every 250 ms, never finishing.
    SlowBody,
    /// One header line every 250 ms, never finishing the head.
    SlowHead,
    /// A port nothing listens on.
    ClosedPort,
    /// The emulator of the good refresh-token credential.
    GoodOAuth2,
    /// A Procore company whose `/rest/v1.0/me` always answers this (a probe that reads JSON;
    /// the generic provider's `probeUrl` is satisfied by any 2xx, as documented).
    ProcoreMe(Answer),
}

/// A hostile answer.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 200 with an HTML page.
    Html,
    /// 200, JSON content type, truncated JSON.
    Truncated,
    /// 200 with an OAuth2 error body (and a canary in its description).
    ErrorIn200,
    /// 200 with 10 MB of HTML.
    Huge,
    /// 200 with a well-formed token response whose access token is 10 MB.
    HugeToken,
    /// 200 with a well-formed token response whose access token is 2 MB (under the answer
    /// size limit, over the token size limit).
    BigToken,
    /// 200 with a token response whose `expires_in` is this JSON number.
    ExpiresIn(&'static str),
    /// 429 with this `Retry-After` (none when empty).
    RateLimited(&'static str),
    /// 302 to the same path on another host (a trap that counts what reaches it).
    Redirect,
    /// Discovery metadata naming a plain-http token endpoint off loopback.
    OffLoopbackTokenEndpoint,
    /// Discovery metadata naming another issuer.
    OtherIssuer,
}

/// What happens after the credential first connected.
#[derive(Clone, Copy)]
enum Then {
    Nothing,
    /// The source Secret is replaced with these keys.
    Secret(Keys),
    /// The spec is replaced with this one.
    Spec(fn(&Fx) -> Value),
    /// The source Secret is deleted.
    DeleteSource,
}

/// The target Secret at the end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// Never written.
    Absent,
    /// As it was before the bad input arrived (written by the first connect, or someone
    /// else's Secret).
    Unchanged,
}

/// What status says about the access token's expiry.
#[derive(Clone, Copy, Debug)]
enum Expiry {
    /// It expired when it was issued (and is refreshed on the floor, not in a loop).
    AtOnce,
    /// Not known: no time the operator's clock can represent.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The API server refuses the object; the message says all of these.
    Refused(&'static [&'static str]),
    /// Ready is False with this reason and a message saying all of these; Connected is
    /// `connected`.
    NotReady {
        reason: &'static str,
        says: &'static [&'static str],
        connected: bool,
        target: Target,
        /// The message names a wait ("retry after Ns") of at most this many seconds.
        wait_at_most: Option<u64>,
    },
    /// Ready, the target Secret holds exactly the case's material, and status shows the
    /// access token's expiry so.
    Ready(Expiry),
    /// One of the cases sharing this target owns it and is Ready; the others report
    /// TargetNotOwned.
    SharesTarget,
    /// The object cannot even be read as a ConnectorCredential: a Warning event with this
    /// reason says so, and nothing else happens.
    Event {
        reason: &'static str,
        says: &'static [&'static str],
    },
}

/// What a case's spec is built from.
struct Fx {
    source: String,
    endpoint: String,
    good_oauth2: String,
}

struct Case {
    name: &'static str,
    source: Option<Keys>,
    spec: fn(&Fx) -> Value,
    upstream: Upstream,
    then: Then,
    expect: Expect,
    /// The most provider requests the case may cause in the whole run.
    calls: usize,
}

/// The most reconciles one bad credential may take in the whole run: a first one, a few
/// after watch events and backoffs, two ticks. A hot loop takes hundreds.
const RECONCILE_BUDGET: usize = 20;

const GOOD_PROCORE: &str = "good-procore";
const GOOD_SIMPRO: &str = "good-simpro";
const GOOD_OAUTH2: &str = "good-oauth2";

/// RFC 7386 merge of `patch` into `base`.
fn merge(mut base: Value, patch: Value) -> Value {
    match (base.as_object_mut(), patch) {
        (Some(obj), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    obj.remove(&k);
                } else {
                    let old = obj.remove(&k).unwrap_or(Value::Null);
                    obj.insert(k, merge(old, v));
                }
            }
            base
        }
        (_, patch) => patch,
    }
}

/// A generic OAuth2 client-credentials spec with an explicit token URL; 1 s timeouts and a
/// failure threshold of 1, so a transient failure is reported at once.
fn oauth2(fx: &Fx) -> Value {
    json!({
        "provider": "oauth2",
        "auth": "ClientCredentials",
        "secretRef": {"name": fx.source},
        "endpoint": fx.endpoint,
        "params": {"tokenUrl": format!("{}/token", fx.endpoint)},
        "validation": {"timeout": "1s", "failureThreshold": 1},
    })
}

/// [`oauth2`] with a probe of `/userinfo`.
fn oauth2_probe(fx: &Fx) -> Value {
    merge(
        oauth2(fx),
        json!({"params": {"probeUrl": format!("{}/userinfo", fx.endpoint)}}),
    )
}

/// [`oauth2`] with the token endpoint from discovery.
fn oauth2_discovery(fx: &Fx) -> Value {
    merge(oauth2(fx), json!({"params": null}))
}

/// [`oauth2`] with `patch` merged in.
macro_rules! oauth2_with {
    ($patch:tt) => {
        |fx: &Fx| merge(oauth2(fx), json!($patch))
    };
}

fn refused(name: &'static str, spec: fn(&Fx) -> Value, says: &'static [&'static str]) -> Case {
    Case {
        name,
        source: Some(CLIENT),
        spec,
        upstream: Upstream::Working,
        then: Then::Nothing,
        expect: Expect::Refused(says),
        calls: 0,
    }
}

fn not_ready(
    name: &'static str,
    source: Option<Keys>,
    spec: fn(&Fx) -> Value,
    upstream: Upstream,
    reason: &'static str,
    says: &'static [&'static str],
    calls: usize,
) -> Case {
    Case {
        name,
        source,
        spec,
        upstream,
        then: Then::Nothing,
        expect: Expect::NotReady {
            reason,
            says,
            connected: false,
            target: Target::Absent,
            wait_at_most: None,
        },
        calls,
    }
}

/// A credential that connects first and then gets bad input: the active one keeps working.
fn after_connect(
    name: &'static str,
    then: Then,
    reason: &'static str,
    says: &'static [&'static str],
    calls: usize,
) -> Case {
    Case {
        name,
        source: Some(CLIENT),
        spec: oauth2,
        upstream: Upstream::Working,
        then,
        expect: Expect::NotReady {
            reason,
            says,
            connected: true,
            target: Target::Unchanged,
            wait_at_most: None,
        },
        calls,
    }
}

/// A target Secret someone else owns: reported, and left as it is.
fn not_owned(name: &'static str, spec: fn(&Fx) -> Value, says: &'static [&'static str]) -> Case {
    Case {
        name,
        source: Some(CLIENT),
        spec,
        upstream: Upstream::Working,
        then: Then::Nothing,
        expect: Expect::NotReady {
            reason: "TargetNotOwned",
            says,
            connected: false,
            target: Target::Unchanged,
            wait_at_most: None,
        },
        calls: 0,
    }
}

/// A 429 whose `Retry-After` asks for an absurd wait: reported with a wait of at most an
/// hour, and not retried within the run.
fn asks_to_wait(name: &'static str, retry_after: &'static str) -> Case {
    Case {
        name,
        source: Some(CLIENT),
        spec: oauth2,
        upstream: Upstream::Token(Answer::RateLimited(retry_after)),
        then: Then::Nothing,
        expect: Expect::NotReady {
            reason: "ProviderUnreachable",
            says: &["rate_limited"],
            connected: false,
            target: Target::Absent,
            wait_at_most: Some(3600),
        },
        // The first attempt, and at most the test's two reconcile-everything ticks.
        calls: 3,
    }
}

/// Transient provider trouble: reported at once (failureThreshold 1), retried with backoff.
const TRANSIENT_CALLS: usize = 12;

fn cases() -> Vec<Case> {
    use Answer::*;
    use Upstream::*;
    const PROVIDER_UNREACHABLE: &str = "ProviderUnreachable";
    const MISCONFIGURED: &str = "Misconfigured";
    const MISSING_KEY: &str = "MissingKey";
    vec![
        // --- Refused by the API server (the CRD's schema and CEL rules). ---
        refused(
            "unknown-provider",
            |fx| merge(oauth2(fx), json!({"provider": "box"})),
            &["spec.provider", "Unsupported value"],
        ),
        refused(
            "unknown-auth",
            |fx| merge(oauth2(fx), json!({"auth": "Password"})),
            &["spec.auth", "Unsupported value"],
        ),
        refused(
            "auth-the-provider-does-not-take",
            |fx| merge(oauth2(fx), json!({"provider": "simpro"})),
            &["providers simpro and safetyculture accept only auth ApiKey"],
        ),
        refused(
            "microsoft-without-tenant",
            |fx| merge(oauth2(fx), json!({"provider": "microsoft", "params": null})),
            &["provider microsoft needs params.tenantId"],
        ),
        refused(
            "http-endpoint-off-loopback",
            oauth2_with!({"endpoint": "http://procore.example.com"}),
            &["endpoint must be an https:// URL"],
        ),
        refused(
            "http-endpoint-posing-as-loopback",
            oauth2_with!({"endpoint": "http://127.0.0.1.evil.example.com/"}),
            &["endpoint must be an https:// URL"],
        ),
        refused(
            "endpoint-with-userinfo",
            oauth2_with!({"endpoint": "https://user:pass@procore.example.com"}),
            &["endpoint must not carry user info, a query or a fragment"],
        ),
        refused(
            "endpoint-with-fragment",
            oauth2_with!({"endpoint": "https://procore.example.com/#token"}),
            &["endpoint must not carry user info, a query or a fragment"],
        ),
        refused(
            "endpoint-with-query",
            oauth2_with!({"endpoint": "https://procore.example.com/?next=evil"}),
            &["endpoint must not carry user info, a query or a fragment"],
        ),
        refused(
            "interval-zero",
            oauth2_with!({"validation": {"interval": "0s"}}),
            &["validation.interval must be between 1m and 24h"],
        ),
        refused(
            "interval-a-century",
            oauth2_with!({"validation": {"interval": "876000h"}}),
            &["validation.interval must be between 1m and 24h"],
        ),
        refused(
            "interval-beyond-any-clock",
            oauth2_with!({"validation": {"interval": "99999999999999999999h"}}),
            &["spec.validation.interval"],
        ),
        refused(
            "interval-negative",
            oauth2_with!({"validation": {"interval": "-5m"}}),
            &["spec.validation.interval", "should match"],
        ),
        refused(
            "interval-in-days",
            oauth2_with!({"validation": {"interval": "1d"}}),
            &["spec.validation.interval", "should match"],
        ),
        refused(
            "timeout-zero",
            oauth2_with!({"validation": {"timeout": "0s"}}),
            &["validation.timeout must be between 1s and 5m"],
        ),
        refused(
            "refresh-before-a-year",
            oauth2_with!({"refreshBefore": "8760h"}),
            &["refreshBefore must be at most 24h"],
        ),
        refused(
            "expiry-warning-a-millisecond",
            oauth2_with!({"expiryWarning": "1ms"}),
            &["expiryWarning must be between 1h and 8760h"],
        ),
        refused(
            "failure-threshold-zero",
            oauth2_with!({"validation": {"failureThreshold": 0}}),
            &["spec.validation.failureThreshold"],
        ),
        refused(
            "target-is-its-own-source",
            |fx| merge(oauth2(fx), json!({"target": {"name": fx.source}})),
            &["target.name must differ from secretRef.name"],
        ),
        refused(
            "target-name-not-a-dns-name",
            oauth2_with!({"target": {"name": "Not_A_Name"}}),
            &["spec.target.name", "should match"],
        ),
        refused(
            "secret-key-with-a-slash",
            oauth2_with!({"secretRef": {"keys": {"clientSecret": "../secret"}}}),
            &["spec.secretRef.keys.clientSecret", "should match"],
        ),
        refused(
            "company-id-negative",
            |fx| {
                merge(
                    oauth2(fx),
                    json!({"provider": "procore", "params": {"companyId": "-1"}}),
                )
            },
            &["params.companyId must be a non-negative whole number"],
        ),
        // --- The source Secret. ---
        not_ready(
            "source-secret-missing",
            None,
            oauth2,
            Working,
            "SecretNotFound",
            &["the source Secret does not exist"],
            0,
        ),
        not_ready(
            "source-key-missing",
            Some(&[("client_id", V::Id)]),
            oauth2,
            Working,
            MISSING_KEY,
            &["\"client_secret\"", "is missing"],
            0,
        ),
        not_ready(
            "source-value-empty",
            Some(&[("client_id", V::Id), ("client_secret", V::Empty)]),
            oauth2,
            Working,
            MISSING_KEY,
            &["\"client_secret\"", "is empty"],
            0,
        ),
        not_ready(
            "source-value-binary",
            Some(&[("client_id", V::Id), ("client_secret", V::Binary)]),
            oauth2,
            Working,
            MISSING_KEY,
            &["\"client_secret\"", "not valid UTF-8"],
            0,
        ),
        not_ready(
            "source-value-1mib",
            Some(&[("client_id", V::Id), ("client_secret", V::Huge)]),
            oauth2,
            Working,
            MISSING_KEY,
            &["\"client_secret\"", "too large"],
            0,
        ),
        not_ready(
            "source-key-renamed-to-a-missing-key",
            Some(CLIENT),
            oauth2_with!({"secretRef": {"keys": {"clientSecret": "secret"}}}),
            Working,
            MISSING_KEY,
            &["\"secret\"", "is missing"],
            0,
        ),
        not_ready(
            "source-is-another-credentials-target",
            None,
            |fx| {
                json!({
                    "provider": "oauth2", "auth": "RefreshToken",
                    "secretRef": {"name": format!("{GOOD_OAUTH2}-active")},
                    "endpoint": fx.good_oauth2,
                    "validation": {"timeout": "1s", "failureThreshold": 1},
                })
            },
            GoodOAuth2,
            MISCONFIGURED,
            &[
                "good-oauth2-active",
                "target Secret of ConnectorCredential good-oauth2",
            ],
            0,
        ),
        after_connect(
            "rotated-to-a-binary-value",
            Then::Secret(&[("client_id", V::Id), ("client_secret", V::Binary)]),
            MISSING_KEY,
            &["not valid UTF-8", "stays active"],
            1,
        ),
        after_connect(
            "rotated-to-a-missing-key",
            Then::Secret(&[("client_id", V::Id)]),
            MISSING_KEY,
            &["\"client_secret\"", "is missing", "stays active"],
            1,
        ),
        after_connect(
            "renamed-to-a-missing-key-after-connect",
            Then::Spec(oauth2_with!({"secretRef": {"keys": {"clientSecret": "secret"}}})),
            MISSING_KEY,
            &["\"secret\"", "stays active"],
            // The spec change re-validates the active credential once.
            2,
        ),
        after_connect(
            "source-deleted-after-connect",
            Then::DeleteSource,
            "SecretNotFound",
            &["the source Secret does not exist", "stays active"],
            1,
        ),
        // --- Spec values the CRD cannot judge. ---
        not_ready(
            "unknown-param",
            Some(CLIENT),
            oauth2_with!({"params": {"bogus": "1"}}),
            Working,
            MISCONFIGURED,
            &["params.bogus is not a parameter of this provider"],
            0,
        ),
        not_ready(
            "token-url-plain-http-off-loopback",
            Some(CLIENT),
            oauth2_with!({"params": {"tokenUrl": "http://tokens.example.com/token"}}),
            Working,
            MISCONFIGURED,
            &["params.tokenUrl is not a usable URL", "https"],
            0,
        ),
        not_ready(
            "token-url-with-userinfo",
            Some(CLIENT),
            oauth2_with!({"params": {"tokenUrl": "https://user:pw@tokens.example.com/token"}}),
            Working,
            MISCONFIGURED,
            &["params.tokenUrl is not a usable URL", "user info"],
            0,
        ),
        not_ready(
            "probe-url-with-fragment",
            Some(CLIENT),
            oauth2_with!({"params": {"probeUrl": "https://api.example.com/me#frag"}}),
            Working,
            MISCONFIGURED,
            &["params.probeUrl is not a usable URL", "fragment"],
            0,
        ),
        not_ready(
            "procore-dmsa-without-company",
            Some(CLIENT),
            |fx| merge(oauth2(fx), json!({"provider": "procore", "params": null})),
            Working,
            MISCONFIGURED,
            &["params.companyId is required"],
            0,
        ),
        // --- Target Secrets. ---
        not_owned(
            "target-exists-and-is-not-ours",
            oauth2,
            &["target-exists-and-is-not-ours-active", "not owned"],
        ),
        not_owned(
            "target-is-another-credentials-source",
            oauth2_with!({"target": {"name": "good-procore-src"}}),
            &["good-procore-src", "not owned"],
        ),
        not_owned(
            "target-is-another-credentials-target",
            oauth2_with!({"target": {"name": "good-simpro-active"}}),
            &["good-simpro-active", "not owned"],
        ),
        Case {
            name: "shared-target-one",
            source: Some(CLIENT),
            spec: oauth2_with!({"target": {"name": "shared-target"}}),
            upstream: Working,
            then: Then::Nothing,
            expect: Expect::SharesTarget,
            calls: 2,
        },
        Case {
            name: "shared-target-two",
            source: Some(CLIENT),
            spec: oauth2_with!({"target": {"name": "shared-target"}}),
            upstream: Working,
            then: Then::Nothing,
            expect: Expect::SharesTarget,
            calls: 2,
        },
        // --- Provider answers. ---
        not_ready(
            "token-answer-is-html",
            Some(CLIENT),
            oauth2,
            Token(Html),
            PROVIDER_UNREACHABLE,
            &["malformed_response"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-answer-is-truncated-json",
            Some(CLIENT),
            oauth2,
            Token(Truncated),
            PROVIDER_UNREACHABLE,
            &["malformed_response"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-answer-is-200-with-an-error",
            Some(CLIENT),
            oauth2,
            Token(ErrorIn200),
            PROVIDER_UNREACHABLE,
            &["malformed_response", "HTTP 200"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-answer-is-10mb-of-html",
            Some(CLIENT),
            oauth2,
            Token(Huge),
            PROVIDER_UNREACHABLE,
            &["malformed_response"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-answer-holds-a-10mb-token",
            Some(CLIENT),
            oauth2,
            Token(HugeToken),
            PROVIDER_UNREACHABLE,
            &["malformed_response"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-answer-holds-a-2mb-token",
            Some(CLIENT),
            oauth2,
            Token(BigToken),
            PROVIDER_UNREACHABLE,
            &["malformed_response"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-endpoint-drips-its-body",
            Some(CLIENT),
            oauth2,
            SlowBody,
            PROVIDER_UNREACHABLE,
            &["timeout"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-endpoint-drips-its-headers",
            Some(CLIENT),
            oauth2,
            SlowHead,
            PROVIDER_UNREACHABLE,
            &["timeout"],
            TRANSIENT_CALLS,
        ),
        not_ready(
            "token-endpoint-rate-limits-without-retry-after",
            Some(CLIENT),
            oauth2,
            Token(RateLimited("")),
            PROVIDER_UNREACHABLE,
            &["rate_limited", "HTTP 429"],
            TRANSIENT_CALLS,
        ),
        asks_to_wait(
            "token-endpoint-asks-to-retry-in-584-billion-years",
            "18446744073709551615",
        ),
        asks_to_wait(
            "token-endpoint-asks-to-retry-in-the-year-3000",
            "Wed, 01 Jan 3000 00:00:00 GMT",
        ),
        not_ready(
            "token-endpoint-refuses-connections",
            Some(CLIENT),
            oauth2,
            ClosedPort,
            PROVIDER_UNREACHABLE,
            &["connection"],
            0,
        ),
        not_ready(
            "token-endpoint-redirects-to-another-host",
            Some(CLIENT),
            oauth2,
            Token(Redirect),
            MISCONFIGURED,
            &["HTTP 302"],
            2,
        ),
        not_ready(
            "probe-redirects-to-another-host",
            Some(CLIENT),
            oauth2_probe,
            Probe(Redirect),
            MISCONFIGURED,
            &["HTTP 302"],
            2,
        ),
        not_ready(
            "probe-answer-is-html",
            Some(CLIENT),
            |fx| {
                json!({
                    "provider": "procore", "auth": "ClientCredentials",
                    "secretRef": {"name": fx.source}, "endpoint": fx.endpoint,
                    "params": {"companyId": "1234"},
                    "validation": {"timeout": "1s", "failureThreshold": 1},
                })
            },
            ProcoreMe(Html),
            PROVIDER_UNREACHABLE,
            &["malformed_response", "GET /rest/v1.0/me"],
            2 * TRANSIENT_CALLS,
        ),
        not_ready(
            "discovery-names-a-plain-http-token-endpoint",
            Some(CLIENT),
            oauth2_discovery,
            Discovery(OffLoopbackTokenEndpoint),
            MISCONFIGURED,
            &["token_endpoint in the metadata is not a usable URL"],
            2,
        ),
        not_ready(
            "discovery-names-another-issuer",
            Some(CLIENT),
            oauth2_discovery,
            Discovery(OtherIssuer),
            MISCONFIGURED,
            &["different issuer"],
            2,
        ),
        not_ready(
            "token-expires-in-negative",
            Some(CLIENT),
            oauth2,
            Token(ExpiresIn("-3600")),
            PROVIDER_UNREACHABLE,
            &["malformed_response"],
            TRANSIENT_CALLS,
        ),
        Case {
            name: "token-expires-in-zero",
            source: Some(CLIENT),
            spec: oauth2,
            upstream: Token(ExpiresIn("0")),
            then: Then::Nothing,
            expect: Expect::Ready(Expiry::AtOnce),
            // The first grant, and at most one refresh after the clock moves 2 minutes:
            // the refresh floor, not the token's zero lifetime, sets the pace.
            calls: 3,
        },
        Case {
            name: "token-expires-in-a-million-years",
            source: Some(CLIENT),
            spec: oauth2,
            upstream: Token(ExpiresIn("31557600000000")),
            then: Then::Nothing,
            expect: Expect::Ready(Expiry::Unknown),
            calls: 1,
        },
        Case {
            name: "token-expires-in-u64-max",
            source: Some(CLIENT),
            spec: oauth2,
            upstream: Token(ExpiresIn("18446744073709551615")),
            then: Then::Nothing,
            expect: Expect::Ready(Expiry::Unknown),
            calls: 1,
        },
    ]
}

/// A case for [`older_schema_cases`]: a working upstream, and Ready False with `reason`.
fn stored(
    name: &'static str,
    spec: fn(&Fx) -> Value,
    reason: &'static str,
    says: &'static [&'static str],
) -> Case {
    not_ready(name, Some(CLIENT), spec, Upstream::Working, reason, says, 0)
}

/// Objects the CRD refuses today, stored under an older, looser schema: the operator's own
/// checks must give the same clear answers.
fn older_schema_cases() -> Vec<Case> {
    const MISCONFIGURED: &str = "Misconfigured";
    vec![
        stored(
            "old-interval-half-a-second",
            oauth2_with!({"validation": {"interval": "500ms"}}),
            MISCONFIGURED,
            &["validation.interval"],
        ),
        stored(
            "old-interval-in-days",
            oauth2_with!({"validation": {"interval": "1d"}}),
            MISCONFIGURED,
            &["invalid duration \"1d\""],
        ),
        stored(
            "old-timeout-zero",
            oauth2_with!({"validation": {"timeout": "0s"}}),
            MISCONFIGURED,
            &["validation.timeout"],
        ),
        stored(
            "old-refresh-before-a-year",
            oauth2_with!({"refreshBefore": "8760h"}),
            MISCONFIGURED,
            &["refreshBefore"],
        ),
        stored(
            "old-endpoint-plain-http-off-loopback",
            oauth2_with!({"endpoint": "http://issuer.example.com"}),
            MISCONFIGURED,
            &["spec.endpoint is not a usable URL", "https"],
        ),
        stored(
            "old-endpoint-with-userinfo",
            oauth2_with!({"endpoint": "https://user:pw@issuer.example.com"}),
            MISCONFIGURED,
            &["spec.endpoint is not a usable URL", "user info"],
        ),
        stored(
            "old-auth-the-provider-does-not-take",
            oauth2_with!({"provider": "simpro"}),
            MISCONFIGURED,
            &["auth ClientCredentials is not supported"],
        ),
        stored(
            "old-microsoft-without-tenant",
            oauth2_with!({"provider": "microsoft", "params": null}),
            MISCONFIGURED,
            &["params.tenantId"],
        ),
        not_owned(
            "old-target-is-its-own-source",
            |fx| merge(oauth2(fx), json!({"target": {"name": fx.source}})),
            &["old-target-is-its-own-source-src", "not owned"],
        ),
        Case {
            name: "old-unknown-provider",
            source: Some(CLIENT),
            spec: oauth2_with!({"provider": "box"}),
            upstream: Upstream::Working,
            then: Then::Nothing,
            expect: Expect::Event {
                reason: MISCONFIGURED,
                says: &["schema"],
            },
            calls: 0,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Upstreams.

/// A server that answers the first bytes of a response and then drips, never finishing.
/// Counts connections.
async fn dripping(head: bool) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let (start, drip): (&[u8], &[u8]) = if head {
                    (b"HTTP/1.1 200 OK\r\n", b"x-drip: 1\r\n")
                } else {
                    (
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
                        b" ",
                    )
                };
                if stream.write_all(start).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if stream.write_all(drip).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, connections)
}

/// 10 MB of something.
fn ten_mb(unit: &str) -> String {
    unit.repeat(10 * 1024 * 1024 / unit.len())
}

fn hostile(case: &str, answer: Answer, trap: &str, path: &str, base: &str) -> Response {
    let token = |expires_in: &str, access: &str| {
        Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!(
            r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":{expires_in},"scope":"read"}}"#
        )
        .into_bytes(),
    }
    };
    match answer {
        Answer::Html => Response {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"<html><body><h1>Welcome</h1><p>Please sign in</p></body></html>".to_vec(),
        },
        Answer::Truncated => Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: format!(r#"{{"access_token": "{}"#, canary(case, "access-token")).into_bytes(),
        },
        Answer::ErrorIn200 => Response::json(
            200,
            json!({"error": "invalid_client", "error_description": canary(case, "description")}),
        ),
        Answer::Huge => Response {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            body: ten_mb("<p>lorem ipsum</p>").into_bytes(),
        },
        Answer::HugeToken => {
            let access = canary(case, "access-token");
            token("3600", &ten_mb(&format!("{access}.")))
        }
        Answer::BigToken => {
            let unit = format!("{}.", canary(case, "access-token"));
            token("3600", &unit.repeat(2 * 1024 * 1024 / unit.len()))
        }
        Answer::ExpiresIn(n) => token(n, &canary(case, "access-token")),
        Answer::RateLimited(after) => {
            let answer = Response::json(429, json!({"error": "rate_limit_exceeded"}));
            if after.is_empty() {
                answer
            } else {
                answer.header("retry-after", after)
            }
        }
        Answer::Redirect => Response {
            status: 302,
            headers: vec![("location".into(), format!("{trap}{path}"))],
            body: Vec::new(),
        },
        Answer::OffLoopbackTokenEndpoint => Response::json(
            200,
            json!({"issuer": base, "token_endpoint": "http://tokens.example.com/token"}),
        ),
        Answer::OtherIssuer => Response::json(
            200,
            json!({"issuer": "https://issuer.example.com", "token_endpoint": format!("{base}/token")}),
        ),
    }
}

/// How many requests an upstream received.
enum Counter {
    Emulator(Arc<OAuth2Emulator>, usize),
    Procore(Arc<ProcoreEmulator>),
    Connections(Arc<AtomicUsize>),
    None,
}

impl Counter {
    fn get(&self) -> usize {
        match self {
            Counter::Emulator(e, baseline) => e.total_requests() - baseline,
            Counter::Procore(e) => e.total_requests(),
            Counter::Connections(c) => c.load(Ordering::SeqCst),
            Counter::None => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// A case set up in the cluster.
struct Running {
    case: Case,
    fx: Fx,
    target: String,
    counter: Counter,
    /// Kept running for the test's length; also asked for the tokens it minted.
    emulator: Option<Arc<OAuth2Emulator>>,
    /// Where redirects point: must see nothing.
    trap: Option<OAuth2Emulator>,
    procore: Option<Arc<ProcoreEmulator>>,
    /// The case's own client secret, the only one its target may ever hold.
    secret: String,
    /// The target Secret just before the bad input arrived, and the Secret log's length then.
    before: Option<(Option<Secret>, usize)>,
}

/// Every version of every Secret in the namespace, as a watch delivered them.
#[derive(Clone, Default)]
struct SecretLog(Arc<Mutex<Vec<Secret>>>);

impl SecretLog {
    fn start(env: &Env) -> Self {
        let log = Self::default();
        let sink = log.clone();
        let stream = watcher(env.secrets(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(secret) = event {
                    sink.0.lock().unwrap().push(secret);
                }
            }
        });
        log
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Versions of Secret `name` logged from index `from` on.
    fn versions(&self, name: &str, from: usize) -> Vec<Secret> {
        self.0.lock().unwrap()[from..]
            .iter()
            .filter(|s| s.metadata.name.as_deref() == Some(name))
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Secret> {
        self.0.lock().unwrap().clone()
    }
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

fn managed(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == "reconnect-operator")
}

/// An operator-owned staging Secret (the write-ahead of rotated refresh tokens).
fn staging(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("reconnect.dev/role"))
        .is_some_and(|v| v == "staging")
}

async fn put_secret(env: &Env, name: &str, data: BTreeMap<String, Vec<u8>>) {
    let data: BTreeMap<String, ByteString> =
        data.into_iter().map(|(k, v)| (k, ByteString(v))).collect();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name}, "type": "Opaque",
    }))
    .unwrap();
    let secret = Secret {
        data: Some(data),
        ..secret
    };
    env.secrets()
        .patch(
            name,
            &PatchParams::apply("bad-input-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("writing Secret {name}: {e}"));
}

/// The bytes of a source Secret's keys for case `name` whose client secret is `secret`.
fn material(name: &str, keys: Keys, secret: &str) -> BTreeMap<String, Vec<u8>> {
    keys.iter()
        .map(|(k, v)| {
            let bytes = match v {
                V::Id => format!("{name}-client").into_bytes(),
                V::Secret => secret.as_bytes().to_vec(),
                V::Empty => Vec::new(),
                V::Binary => {
                    let mut b = vec![0xff, 0xfe, 0x00];
                    b.extend_from_slice(canary(name, "binary").as_bytes());
                    b
                }
                V::Huge => {
                    let unit = format!("{}.", canary(name, "huge"));
                    unit.repeat(1_000_000 / unit.len()).into_bytes()
                }
            };
            (k.to_string(), bytes)
        })
        .collect()
}

fn target_name(spec: &Value, name: &str) -> String {
    spec["target"]["name"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{name}-active"))
}

/// The good credentials: Procore client credentials, a Simpro API key, and a generic OAuth2
/// refresh token that rotates on use.
struct Good {
    procore: ProcoreEmulator,
    simpro: SimproEmulator,
    oauth2: Arc<OAuth2Emulator>,
    /// Target Secrets (and the Procore source) once connected.
    secrets: Vec<Secret>,
}

impl Good {
    async fn connect(env: &Env) -> Self {
        let procore = ProcoreEmulator::start().await;
        procore.add_account(
            Account::new("4567", "svc-sync@acme.com").with_permissions(["company:1234"]),
        );
        let procore_secret = canary(GOOD_PROCORE, "secret");
        procore.add_client("good-procore-client", &procore_secret, Some("4567"));
        env.apply_secret(
            "good-procore-src",
            &[
                ("client_id", "good-procore-client"),
                ("client_secret", &procore_secret),
            ],
        )
        .await;
        env.apply_credential(
            GOOD_PROCORE,
            json!({
                "provider": "procore", "auth": "ClientCredentials",
                "secretRef": {"name": "good-procore-src"}, "endpoint": procore.base_url(),
                "params": {"companyId": "1234"}, "requiredPermissions": ["company:1234"],
            }),
        )
        .await;

        let simpro = SimproEmulator::start().await;
        simpro.add_account(Account::new("7", "ops@acme.com").with_permissions(["company:0"]));
        let key = canary(GOOD_SIMPRO, "api-key");
        simpro.add_api_key(&key, "7");
        env.apply_secret("good-simpro-src", &[("api_key", &key)])
            .await;
        env.apply_credential(
            GOOD_SIMPRO,
            json!({
                "provider": "simpro", "auth": "ApiKey",
                "secretRef": {"name": "good-simpro-src"}, "endpoint": simpro.base_url(),
            }),
        )
        .await;

        let oauth2 = Arc::new(OAuth2Emulator::start().await);
        oauth2.set_refresh_policy(RefreshPolicy::Rotate);
        oauth2.add_account(Account::new("u-1", "sync@acme.com").with_scopes(["read"]));
        let oauth2_secret = canary(GOOD_OAUTH2, "secret");
        let refresh = canary(GOOD_OAUTH2, "refresh-token");
        oauth2.add_client("good-oauth2-client", &oauth2_secret, None);
        oauth2.add_refresh_token(&refresh, "good-oauth2-client", "u-1");
        env.apply_secret(
            "good-oauth2-src",
            &[
                ("client_id", "good-oauth2-client"),
                ("client_secret", &oauth2_secret),
                ("refresh_token", &refresh),
            ],
        )
        .await;
        env.apply_credential(
            GOOD_OAUTH2,
            json!({
                "provider": "oauth2", "auth": "RefreshToken",
                "secretRef": {"name": "good-oauth2-src"}, "endpoint": oauth2.base_url(),
            }),
        )
        .await;

        for name in [GOOD_PROCORE, GOOD_SIMPRO, GOOD_OAUTH2] {
            env.wait_cred(name, "Ready", |c| is_true(c, "Ready")).await;
        }
        let mut secrets = Vec::new();
        for name in [
            "good-procore-active",
            "good-simpro-active",
            "good-oauth2-active",
            "good-procore-src",
        ] {
            secrets.push(env.secret(name).await.expect("written"));
        }
        Self {
            procore,
            simpro,
            oauth2,
            secrets,
        }
    }

    async fn check(&self, env: &Env, failures: &mut Vec<String>) {
        for name in [GOOD_PROCORE, GOOD_SIMPRO, GOOD_OAUTH2] {
            let cred = env.cred(name).await;
            if !is_true(&cred, "Ready") || !is_true(&cred, "Connected") {
                failures.push(format!(
                    "good credential {name} is no longer Ready: {:?}",
                    condition(&cred, "Ready")
                ));
            }
        }
        for before in &self.secrets {
            let name = before.metadata.name.clone().unwrap();
            let now = env.secret(&name).await;
            let same = now.as_ref().is_some_and(|s| {
                s.data == before.data
                    && s.metadata.resource_version == before.metadata.resource_version
            });
            if !same {
                failures.push(format!("good Secret {name} changed"));
            }
        }
        let target = env.secret("good-oauth2-active").await.unwrap();
        let refresh = value(&target, "refresh_token").unwrap_or_default();
        if !self.oauth2.refresh_token_valid(&refresh) {
            failures.push(
                "the refresh token in good-oauth2-active was spent by someone else".to_owned(),
            );
        }
    }

    fn minted(&self) -> Vec<String> {
        let mut out = minted(&self.oauth2);
        out.extend(self.procore.with_state(|s| {
            s.access_tokens
                .keys()
                .chain(s.refresh_tokens.keys())
                .cloned()
                .collect::<Vec<_>>()
        }));
        out.extend(
            self.simpro
                .with_state(|s| s.api_keys.keys().cloned().collect::<Vec<_>>()),
        );
        out
    }
}

fn minted(emulator: &OAuth2Emulator) -> Vec<String> {
    emulator.with_state(|s| {
        s.access_tokens
            .keys()
            .chain(s.refresh_tokens.keys())
            .cloned()
            .collect()
    })
}

/// Sets up one case: its upstream, source Secret, a foreign target when the case needs one,
/// and (for a case that connects first) the credential itself.
async fn prepare(env: &Env, good: &Good, case: Case) -> Running {
    let name = case.name;
    let secret = canary(name, "secret");
    let mut emulator = None;
    let mut trap = None;
    let mut procore = None;
    let (endpoint, counter) = match case.upstream {
        Upstream::SlowBody | Upstream::SlowHead => {
            let (url, connections) = dripping(matches!(case.upstream, Upstream::SlowHead)).await;
            (url, Counter::Connections(connections))
        }
        Upstream::ClosedPort => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            drop(listener);
            (url, Counter::None)
        }
        Upstream::ProcoreMe(answer) => {
            let emu = Arc::new(ProcoreEmulator::start().await);
            let account = format!("{name}-account");
            emu.add_account(Account::new(&account, name).with_permissions(["company:1234"]));
            emu.add_client(&format!("{name}-client"), &secret, Some(&account));
            let base = emu.base_url();
            let me = "/rest/v1.0/me";
            let response = hostile(name, answer, "", me, &base);
            emu.fail_next_on(me, 1_000_000, Fault::Respond(response));
            procore = Some(emu.clone());
            (base, Counter::Procore(emu))
        }
        Upstream::GoodOAuth2 => (
            good.oauth2.base_url(),
            Counter::Emulator(good.oauth2.clone(), good.oauth2.total_requests()),
        ),
        Upstream::Working | Upstream::Token(_) | Upstream::Probe(_) | Upstream::Discovery(_) => {
            let emu = Arc::new(OAuth2Emulator::start().await);
            let account = format!("{name}-account");
            emu.add_account(Account::new(&account, name).with_scopes(["read"]));
            emu.add_client(&format!("{name}-client"), &secret, Some(&account));
            let base = emu.base_url();
            // Redirects point at another host ("localhost", not 127.0.0.1) that counts.
            let trap_url = match case.upstream {
                Upstream::Token(Answer::Redirect) | Upstream::Probe(Answer::Redirect) => {
                    let t = OAuth2Emulator::start().await;
                    let url = t.base_url().replace("127.0.0.1", "localhost");
                    trap = Some(t);
                    url
                }
                _ => String::new(),
            };
            let hostile_on = match case.upstream {
                Upstream::Token(answer) => Some(("/token", answer)),
                Upstream::Probe(answer) => Some(("/userinfo", answer)),
                Upstream::Discovery(answer) => {
                    Some(("/.well-known/oauth-authorization-server", answer))
                }
                _ => None,
            };
            if let Some((path, answer)) = hostile_on {
                let response = hostile(name, answer, &trap_url, path, &base);
                emu.fail_next_on(path, 1_000_000, Fault::Respond(response));
            }
            emulator = Some(emu.clone());
            (base, Counter::Emulator(emu, 0))
        }
    };
    let fx = Fx {
        source: format!("{name}-src"),
        endpoint,
        good_oauth2: good.oauth2.base_url(),
    };
    let spec = (case.spec)(&fx);
    let target = target_name(&spec, name);
    if let Some(keys) = case.source {
        put_secret(env, &fx.source, material(name, keys, &secret)).await;
    }
    if name == "target-exists-and-is-not-ours" {
        put_secret(
            env,
            &target,
            [("password".to_owned(), canary(name, "password").into_bytes())].into(),
        )
        .await;
    }
    Running {
        case,
        fx,
        target,
        counter,
        emulator,
        trap,
        procore,
        secret,
        before: None,
    }
}

/// The wait a message names ("retry after 3598s"), in seconds.
fn asked_wait(message: &str) -> Option<u64> {
    let (_, rest) = message.split_once("retry after ")?;
    rest.split_once('s')?.0.parse().ok()
}

/// What is wrong with `cred` for its case, or `None` when it is as expected.
fn mismatch(
    run: &Running,
    cred: Option<&ConnectorCredential>,
    now: jiff::Timestamp,
) -> Option<String> {
    let Some(cred) = cred else {
        return Some("not found".into());
    };
    let observed = cred.status.as_ref().and_then(|s| s.observed_generation);
    if observed != cred.metadata.generation {
        return Some(format!(
            "generation {:?} not observed yet",
            cred.metadata.generation
        ));
    }
    let ready = condition(cred, "Ready");
    let show = |c: &Option<_>| format!("{c:?}");
    match run.case.expect {
        Expect::NotReady {
            reason,
            says,
            connected,
            wait_at_most,
            ..
        } => {
            let Some(r) = &ready else {
                return Some(format!("no Ready condition in {:?}", cred.status));
            };
            let ok = r.status == "False"
                && r.reason == reason
                && says.iter().all(|s| r.message.contains(s))
                && wait_at_most
                    .is_none_or(|most| asked_wait(&r.message).is_some_and(|wait| wait <= most))
                && is_true(cred, "Connected") == connected;
            (!ok).then(|| {
                format!(
                    "want Ready False/{reason} saying {says:?}, Connected {connected}; got {} / Connected {:?}",
                    show(&ready),
                    condition(cred, "Connected").map(|c| (c.status, c.reason, c.message))
                )
            })
        }
        Expect::Ready(expiry) => {
            let expires = cred
                .status
                .as_ref()
                .and_then(|s| s.access_token_expires_at.clone());
            let ok = is_true(cred, "Ready")
                && match expiry {
                    Expiry::AtOnce => expires.as_ref().is_some_and(|t| t.0 <= now),
                    Expiry::Unknown => expires.is_none(),
                };
            (!ok).then(|| {
                format!(
                    "want Ready with token expiry {expiry:?}; got {} expiring {expires:?}",
                    show(&ready)
                )
            })
        }
        Expect::SharesTarget => {
            let owner = is_true(cred, "Ready");
            let not_owned = ready.as_ref().is_some_and(|r| r.reason == "TargetNotOwned");
            (!owner && !not_owned)
                .then(|| format!("want Ready or TargetNotOwned; got {}", show(&ready)))
        }
        Expect::Refused(_) | Expect::Event { .. } => None,
    }
}

/// Waits until every case is as expected; fails with every case that is not.
async fn settle(env: &Env, runs: &[Running]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let creds: HashMap<String, ConnectorCredential> = guarded(env)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.0.ok())
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let wrong: Vec<String> = runs
            .iter()
            .filter(|r| !matches!(r.case.expect, Expect::Refused(_) | Expect::Event { .. }))
            .filter_map(|r| {
                mismatch(r, creds.get(r.case.name), env.clock.now())
                    .map(|m| format!("{}: {m}", r.case.name))
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let panics = Capture::get().panics.lock().unwrap().clone();
            panic!(
                "cases not as expected:\n  {}\npanics: {panics:?}",
                wrong.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every ConnectorCredential, including those that do not match the schema.
fn guarded(env: &Env) -> kube::Api<kube::core::DeserializeGuard<ConnectorCredential>> {
    kube::Api::namespaced(env.cluster.client.clone(), env.ns())
}

/// Every ConnectorCredential as stored.
fn dynamic(env: &Env) -> kube::Api<kube::api::DynamicObject> {
    let resource = kube::api::ApiResource::erase::<ConnectorCredential>(&());
    kube::Api::namespaced_with(env.cluster.client.clone(), env.ns(), &resource)
}

async fn apply(env: &Env, name: &str, spec: Value) -> Result<ConnectorCredential, kube::Error> {
    let obj = json!({
        "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
        "metadata": {"name": name}, "spec": spec,
    });
    env.creds()
        .patch(
            name,
            &PatchParams::apply("bad-input-test").force(),
            &Patch::Apply(&obj),
        )
        .await
}

/// How the cases' objects reach the cluster.
#[derive(Clone, Copy)]
enum Arrival<'a> {
    /// Applied as users apply them: the CRD's schema and rules judge them first.
    Applied,
    /// Stored under an older, looser schema, as malformed objects reach a real cluster: only
    /// the operator judges them (stand-in only).
    Stored(&'a reconnect_apiserver::ApiServer),
}

/// Runs `cases` beside the good credentials and checks everything the module promises.
async fn run_corpus(env: &Env, cases: Vec<Case>, arrival: Arrival<'_>) {
    let started = std::time::Instant::now();
    let capture = Capture::get();
    let log = SecretLog::start(env);
    let good = Good::connect(env).await;

    let mut failures = Vec::new();
    let mut runs = Vec::new();
    for case in cases {
        runs.push(prepare(env, &good, case).await);
    }

    // Refused cases: the API server answers 422 with the rule's message.
    for run in runs
        .iter()
        .filter(|r| matches!(r.case.expect, Expect::Refused(_)))
    {
        let Expect::Refused(says) = run.case.expect else {
            unreachable!()
        };
        match apply(env, run.case.name, (run.case.spec)(&run.fx)).await {
            Err(kube::Error::Api(e))
                if e.code == 422 && says.iter().all(|s| e.message.contains(s)) => {}
            Err(kube::Error::Api(e)) => failures.push(format!(
                "{}: want 422 saying {says:?}; got {} {}",
                run.case.name, e.code, e.message
            )),
            other => failures.push(format!(
                "{}: want 422 saying {says:?}; got {:?}",
                run.case.name,
                other.map(|c| c.spec)
            )),
        }
    }

    // Cases that connect first, then get their bad input.
    for run in runs
        .iter()
        .filter(|r| !matches!(r.case.then, Then::Nothing))
    {
        apply(env, run.case.name, (run.case.spec)(&run.fx))
            .await
            .unwrap();
    }
    for run in runs
        .iter_mut()
        .filter(|r| !matches!(r.case.then, Then::Nothing))
    {
        env.wait_cred(run.case.name, "Ready before the bad input", |c| {
            is_true(c, "Ready")
        })
        .await;
        run.before = Some((env.secret(&run.target).await, log.len()));
        match run.case.then {
            Then::Secret(keys) => {
                put_secret(
                    env,
                    &run.fx.source,
                    material(run.case.name, keys, &run.secret),
                )
                .await
            }
            Then::Spec(spec) => {
                apply(env, run.case.name, spec(&run.fx)).await.unwrap();
            }
            Then::DeleteSource => {
                env.secrets()
                    .delete(&run.fx.source, &Default::default())
                    .await
                    .unwrap();
            }
            Then::Nothing => {}
        }
    }
    // Everything else arrives at once.
    for run in runs.iter_mut().filter(|r| {
        matches!(r.case.then, Then::Nothing) && !matches!(r.case.expect, Expect::Refused(_))
    }) {
        run.before = Some((env.secret(&run.target).await, log.len()));
        let spec = (run.case.spec)(&run.fx);
        match arrival {
            Arrival::Applied => {
                apply(env, run.case.name, spec)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", run.case.name));
            }
            Arrival::Stored(standin) => {
                let object = json!({
                    "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
                    "metadata": {"name": run.case.name}, "spec": spec,
                });
                store_malformed::<ConnectorCredential>(env, standin, object).await;
            }
        }
    }
    settle(env, &runs).await;

    // Time passes: nothing refused is retried early, short tokens are refreshed on their
    // floor, and every credential is reconciled once more.
    let total = runs.len() as u64;
    env.advance(Duration::from_secs(120)).await;
    env.tick(total).await;
    settle(env, &runs).await;
    good.check(env, &mut failures).await;
    for run in &runs {
        if let Expect::Event { reason, says } = run.case.expect {
            let note = env.wait_event(run.case.name, reason).await.note;
            let note = note.unwrap_or_default();
            if !says.iter().all(|s| note.contains(s)) {
                failures.push(format!(
                    "{}: want a {reason} event saying {says:?}; got {note:?}",
                    run.case.name
                ));
            }
        }
    }

    // Targets, and every version of every Secret the operator wrote.
    let mut allowed: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut owners: HashMap<String, Vec<&Running>> = HashMap::new();
    for run in &runs {
        let name = run.case.name;
        match run.case.expect {
            Expect::Refused(_) => {}
            Expect::Event { .. } => {
                if env.secret(&run.target).await.is_some() {
                    failures.push(format!("{name}: target {} was written", run.target));
                }
            }
            Expect::NotReady { target, .. } => {
                let (before, from) = run.before.clone().unwrap();
                let now = env.secret(&run.target).await;
                match target {
                    Target::Absent if now.is_some() => {
                        failures.push(format!("{name}: target {} was written", run.target))
                    }
                    Target::Unchanged => {
                        let same = |s: &Secret| before.as_ref().is_some_and(|b| b.data == s.data);
                        if now.as_ref().is_none_or(|s| !same(s))
                            || !log.versions(&run.target, from).iter().all(same)
                        {
                            failures.push(format!("{name}: target {} changed", run.target));
                        }
                    }
                    Target::Absent => {}
                }
                if !matches!(run.case.then, Then::Nothing) {
                    allowed
                        .entry(run.target.clone())
                        .or_default()
                        .insert(run.secret.clone());
                }
            }
            Expect::Ready(_) => {
                let target = env.secret(&run.target).await;
                if target
                    .as_ref()
                    .and_then(|t| value(t, "client_secret"))
                    .as_deref()
                    != Some(run.secret.as_str())
                {
                    failures.push(format!("{name}: target does not hold the validated secret"));
                }
                allowed
                    .entry(run.target.clone())
                    .or_default()
                    .insert(run.secret.clone());
            }
            Expect::SharesTarget => owners.entry(run.target.clone()).or_default().push(run),
        }
        let calls = run.counter.get();
        if calls > run.case.calls {
            failures.push(format!(
                "{name}: {calls} provider requests, at most {} expected",
                run.case.calls
            ));
        }
        if let Some(trap) = &run.trap
            && trap.total_requests() > 0
        {
            failures.push(format!("{name}: a redirect was followed to another host"));
        }
        let reconciles = capture.reconciles.of(name);
        if reconciles > RECONCILE_BUDGET {
            failures.push(format!(
                "{name}: {reconciles} reconciles, at most {RECONCILE_BUDGET} expected"
            ));
        }
    }
    for (target, sharing) in &owners {
        let mut winners = Vec::new();
        for run in sharing {
            if is_true(&env.cred(run.case.name).await, "Ready") {
                winners.push(run);
            }
        }
        match winners.as_slice() {
            [winner] => {
                allowed
                    .entry(target.clone())
                    .or_default()
                    .insert(winner.secret.clone());
            }
            _ => failures.push(format!(
                "{target}: {} owners among {} credentials sharing it",
                winners.len(),
                sharing.len()
            )),
        }
    }
    for (target, owner, what) in [
        ("good-procore-active", GOOD_PROCORE, "secret"),
        ("good-oauth2-active", GOOD_OAUTH2, "secret"),
        ("good-simpro-active", GOOD_SIMPRO, "api-key"),
    ] {
        allowed
            .entry(target.into())
            .or_default()
            .insert(format!("canary-{owner}-{what}-{}", nonce()));
    }
    for version in log.all().iter().filter(|s| managed(s)) {
        let name = version.metadata.name.clone().unwrap_or_default();
        if staging(version) {
            // The write-ahead of a rotated refresh token: that token and nothing else.
            let keys: Vec<&String> = version.data.iter().flatten().map(|(k, _)| k).collect();
            if keys.iter().any(|k| *k != "refresh_token") {
                failures.push(format!(
                    "the operator's staging Secret {name} holds more than a refresh token: {keys:?}"
                ));
            }
            continue;
        }
        let held = value(version, "client_secret").or_else(|| value(version, "api_key"));
        let ok = allowed
            .get(&name)
            .is_some_and(|allowed| held.is_some_and(|h| allowed.contains(&h)));
        if !ok {
            failures.push(format!(
                "the operator wrote Secret {name} with material that was not validated for it"
            ));
        }
    }

    // Item 4: no canary anywhere a person or a log pipeline can see.
    let mut secrets: Vec<String> = canaries().lock().unwrap().iter().cloned().collect();
    secrets.extend(good.minted());
    for run in &runs {
        if let Some(emu) = &run.emulator {
            secrets.extend(minted(emu));
        }
        if let Some(emu) = &run.procore {
            secrets.extend(emu.with_state(|s| s.access_tokens.keys().cloned().collect::<Vec<_>>()));
        }
    }
    let events = serde_json::to_string(&env.events().await).unwrap();
    let creds =
        serde_json::to_string(&dynamic(env).list(&Default::default()).await.unwrap()).unwrap();
    let metrics = env.ctx.metrics().encode();
    let text = capture.text.text();
    let json_logs = capture.json.text();
    assert!(
        text.contains("decided") && json_logs.contains("\"decided\""),
        "the reconciles were logged, as text and as JSON"
    );
    for secret in &secrets {
        for (place, seen) in [
            ("the text logs", &text),
            ("the JSON logs", &json_logs),
            ("an event", &events),
            ("a status", &creds),
            ("the metrics", &metrics),
        ] {
            if seen.contains(secret.as_str()) {
                let shown: String = secret.chars().take(60).collect();
                failures.push(format!("secret {shown:?} appears in {place}"));
            }
        }
    }
    let panics = capture.panics.lock().unwrap().clone();
    if !panics.is_empty() {
        failures.push(format!("panics: {panics:?}"));
    }

    println!(
        "{} cases ({} refused by the API server), {} canaries, {} Secret versions watched, {:?}",
        runs.len(),
        runs.iter()
            .filter(|r| matches!(r.case.expect, Expect::Refused(_)))
            .count(),
        secrets.len(),
        log.len(),
        started.elapsed()
    );
    for run in &runs {
        println!(
            "  {:48} reconciles {:2}  provider requests {:2}",
            run.case.name,
            capture.reconciles.of(run.case.name),
            run.counter.get()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_clear_answer_and_good_credentials_stay_untouched() {
    let env = Env::start().await;
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    run_corpus(&env, cases, Arrival::Applied).await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_older_schema_let_in_gets_the_operators_own_answer() {
    let env = Env::start().await;
    let test = "what_an_older_schema_let_in_gets_the_operators_own_answer";
    let Some(standin) = env.cluster.standin_or_skip(test).cloned() else {
        return;
    };
    run_corpus(&env, older_schema_cases(), Arrival::Stored(&standin)).await;
    env.shutdown().await;
}
