//! Thirty simulated days of both controllers, to prove that nothing loops.
//!
//! The real controllers (kube-runtime scheduler, watches, reconcile, status and Secret
//! writes) run against the in-memory stand-in API, whose watches fire on every write the
//! controllers make, on tokio's paused clock: time moves only when every task waits, so a
//! day passes in moments and no outcome depends on the machine's speed. The providers are a
//! [`Script`] on the same clock: tokens that live from 1 second to 24 hours, rotating refresh
//! tokens with reuse detection, credentials that die, fail, hang or are rate limited.
//!
//! Every hour the test counts, per credential, reconciles (each reads the credential's
//! source Secret), provider calls (token grants among them) and API writes, and checks them
//! against the budget stated in [`budget`].
#![allow(
    clippy::result_large_err,
    reason = "the scripted provider answers in the providers' own error type"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use reconnect_apiserver::{ApiServer, Verb};
use serde_json::json;

use super::Context;
use crate::api::{Account, AuthType, ConnectorCredential, Phase};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::providers::{
    DeadCause, Field, Providers, Script, Tokens, TransientKind, Verdict, Verified, VerifyError,
    VerifyRequest,
};
use crate::secret::Redacted;

const NS: &str = "sim";
const HOUR: Duration = Duration::from_secs(3600);
const DAYS: u64 = 30;

/// Days to simulate: 30, or `RECONNECT_SIM_DAYS` when set (for a quick look).
fn days() -> u64 {
    std::env::var("RECONNECT_SIM_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(DAYS)
}

/// The controllers' clock: tokio's (paused) clock, read as a timestamp.
struct TokioClock {
    base: Timestamp,
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(self.start.elapsed()).unwrap_or_default();
        self.base.saturating_add(elapsed).unwrap_or(self.base)
    }
}

/// How a client behaves at the provider.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// Issues access tokens that live this long.
    Healthy { lifetime: Duration },
    /// Refuses the client (invalid_client).
    Dead,
    /// Answers 503 to everything.
    Failing,
    /// Answers 429 with Retry-After.
    RateLimited { retry_after: Duration },
    /// Never answers: every call runs into the controller's timeout.
    Hanging,
    /// Connects, but without the permission the credential requires.
    Weak,
}

/// One provider call the script answered.
#[derive(Debug, Clone)]
struct Call {
    at: Timestamp,
    key: String,
    /// Whether a token was minted (a grant), as opposed to a call that failed first.
    minted: bool,
}

#[derive(Default)]
struct ScriptState {
    clients: HashMap<String, Behaviour>,
    /// The refresh token each refresh-token client accepts next.
    chains: HashMap<String, String>,
    calls: Vec<Call>,
    /// Refresh tokens presented after they were spent (lost chains).
    reused: Vec<String>,
    issued: u64,
}

/// The provider side of the simulation.
#[derive(Clone)]
struct Sim {
    clock: Arc<TokioClock>,
    state: Arc<Mutex<ScriptState>>,
}

impl Sim {
    fn state(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, client: &str, behaviour: Behaviour) {
        self.state().clients.insert(client.into(), behaviour);
    }

    /// Starts a refresh-token chain for `client`; returns the first refresh token.
    fn chain(&self, client: &str) -> String {
        let token = format!("rt-{client}-0");
        self.state().chains.insert(client.into(), token.clone());
        token
    }

    fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The calls after the first `seen` (cloning them all every hour would cost more than
    /// the simulation itself by day 30).
    fn calls_since(&self, seen: usize) -> Vec<Call> {
        self.state().calls[seen..].to_vec()
    }

    /// Answers one call: the tokens to return, or the failure.
    fn answer(
        &self,
        req: &VerifyRequest<'_>,
    ) -> (Option<Behaviour>, Result<Tokens, VerifyError>, Duration) {
        let provider = req.spec.provider;
        let now = self.clock.now();
        let client = client_of(req);
        let mut state = self.state();
        let behaviour = state.clients.get(&client).copied();
        let transient = |kind, status, retry_after| {
            Err(VerifyError::Transient {
                provider,
                call: "POST token endpoint",
                kind,
                status,
                code: None,
                retry_after,
            })
        };
        let dead = |cause| {
            Err(VerifyError::Dead {
                provider,
                call: "POST token endpoint",
                status: Some(400),
                code: None,
                cause,
            })
        };
        let (result, delay) = match behaviour {
            None | Some(Behaviour::Dead) => (dead(DeadCause::InvalidClient), Duration::ZERO),
            Some(Behaviour::Failing) => (
                transient(TransientKind::Unavailable, Some(503), None),
                Duration::ZERO,
            ),
            Some(Behaviour::RateLimited { retry_after }) => (
                transient(TransientKind::RateLimited, Some(429), Some(retry_after)),
                Duration::ZERO,
            ),
            Some(Behaviour::Hanging) => {
                (transient(TransientKind::Timeout, None, None), req.timeout)
            }
            Some(Behaviour::Healthy { .. }) | Some(Behaviour::Weak) => {
                let lifetime = match behaviour {
                    Some(Behaviour::Healthy { lifetime }) => lifetime,
                    _ => HOUR,
                };
                let mut refresh_token = None;
                let mut refused = false;
                if req.spec.auth == AuthType::RefreshToken {
                    let presented = req
                        .material
                        .get(Field::RefreshToken)
                        .as_ref()
                        .map(|v| v.expose().to_owned())
                        .unwrap_or_default();
                    let head = state.chains.get(&client).cloned().unwrap_or_default();
                    if presented == head {
                        let next = format!("rt-{client}-{}", state.issued);
                        state.chains.insert(client.clone(), next.clone());
                        refresh_token = Some(Redacted::new(next));
                    } else {
                        state.reused.push(presented);
                        refused = true;
                    }
                }
                if refused {
                    (dead(DeadCause::InvalidGrant), Duration::ZERO)
                } else {
                    state.issued += 1;
                    let expires_at = now
                        .saturating_add(SignedDuration::try_from(lifetime).unwrap_or_default())
                        .ok();
                    let tokens = Tokens::scripted(
                        Some(Redacted::new(format!("at-{}", state.issued))),
                        expires_at,
                        refresh_token,
                    );
                    (Ok(tokens), Duration::ZERO)
                }
            }
        };
        state.calls.push(Call {
            at: now,
            key: req.key.to_owned(),
            minted: result.is_ok(),
        });
        (behaviour, result, delay)
    }
}

/// The client a call presents: its client id, or its API key.
fn client_of(req: &VerifyRequest<'_>) -> String {
    req.material
        .get(Field::ClientId)
        .as_ref()
        .or(req.material.get(Field::ApiKey).as_ref())
        .map(|v| v.expose().to_owned())
        .unwrap_or_default()
}

impl Script for Sim {
    fn verify(&self, req: &VerifyRequest<'_>) -> BoxFuture<'static, Verdict<Verified>> {
        let (behaviour, tokens, delay) = self.answer(req);
        let provider = req.spec.provider;
        let client = client_of(req);
        let required: BTreeSet<String> = req.required.clone();
        async move {
            tokio::time::sleep(delay).await;
            let tokens = match tokens {
                Ok(tokens) => tokens,
                Err(e) => return Err(e).into(),
            };
            let account = Account {
                id: client.clone(),
                name: format!("{client}@sim"),
            };
            let permissions: BTreeSet<String> = if behaviour == Some(Behaviour::Weak) {
                BTreeSet::new()
            } else {
                ["company:1".to_owned()].into()
            };
            let missing: Vec<String> = required.difference(&permissions).cloned().collect();
            if !missing.is_empty() {
                let rotated = tokens.refresh_token().is_some().then_some(tokens);
                let refused = VerifyError::PermissionDenied {
                    provider,
                    account: Some(account),
                    missing,
                    granted: permissions,
                    call: None,
                    status: None,
                    code: None,
                };
                return Verdict::scripted(Err(refused), rotated);
            }
            Ok(Verified::scripted(account, permissions, tokens, None)).into()
        }
        .boxed()
    }

    fn refresh(&self, req: &VerifyRequest<'_>) -> BoxFuture<'static, Verdict<Tokens>> {
        let (_, tokens, delay) = self.answer(req);
        async move {
            tokio::time::sleep(delay).await;
            tokens.into()
        }
        .boxed()
    }
}

/// One simulated credential.
struct Case {
    name: &'static str,
    auth: AuthType,
    client: &'static str,
    behaviour: Behaviour,
}

fn cases() -> Vec<Case> {
    use Behaviour::*;
    let secs = Duration::from_secs;
    let healthy = |s| Healthy { lifetime: secs(s) };
    let cc = AuthType::ClientCredentials;
    let rt = AuthType::RefreshToken;
    vec![
        Case {
            name: "tokens-1s",
            auth: cc,
            client: "c-1s",
            behaviour: healthy(1),
        },
        Case {
            name: "tokens-60s",
            auth: cc,
            client: "c-60s",
            behaviour: healthy(60),
        },
        Case {
            name: "tokens-5m",
            auth: rt,
            client: "c-5m",
            behaviour: healthy(300),
        },
        Case {
            name: "tokens-1h",
            auth: rt,
            client: "c-1h",
            behaviour: healthy(3600),
        },
        Case {
            name: "tokens-24h",
            auth: cc,
            client: "c-24h",
            behaviour: healthy(86_400),
        },
        Case {
            name: "rotates",
            auth: rt,
            client: "c-rot-1",
            behaviour: healthy(1800),
        },
        Case {
            name: "dies",
            auth: cc,
            client: "c-dies",
            behaviour: healthy(3600),
        },
        Case {
            name: "dead",
            auth: cc,
            client: "c-dead",
            behaviour: Dead,
        },
        Case {
            name: "failing",
            auth: cc,
            client: "c-failing",
            behaviour: Failing,
        },
        Case {
            name: "rate-limited",
            auth: cc,
            client: "c-limited",
            behaviour: RateLimited {
                retry_after: secs(600),
            },
        },
        Case {
            name: "hanging",
            auth: cc,
            client: "c-hanging",
            behaviour: Hanging,
        },
        Case {
            name: "weak",
            auth: cc,
            client: "c-weak",
            behaviour: Weak,
        },
    ]
}

/// What one credential may do in one hour (after the hour it was created in).
#[derive(Debug, Clone, Copy)]
struct Budget {
    reconciles: usize,
    provider_calls: usize,
    writes: usize,
}

/// The stated budget per credential and hour.
///
/// - Healthy with tokens of lifetime L: at most two token grants per lifetime (refresh at
///   half the lifetime at the earliest) and never two within 30 s, so at most 120 grants an
///   hour whatever L is; tokens that keep coming back shorter than 30 s back off towards the
///   validation interval (15m). Each grant is one reconcile and one target Secret write.
/// - Failing, rate-limited or hanging: the backoff schedule (1 s doubling to 5 min, or
///   Retry-After when longer): at most 12 + 2 attempts in any hour after the first.
/// - Dead or weak from the start: the rejected revision is not tried again until it changes:
///   at most one probe per validation interval.
fn budget(case: &Case, first_hour: bool) -> Budget {
    let per_hour = |n: usize| Budget {
        reconciles: n + 2,
        provider_calls: n,
        // Target Secret and status writes per reconcile at most, plus finalizer/transition.
        writes: 2 * n + 2,
    };
    match case.behaviour {
        Behaviour::Healthy { lifetime } if lifetime < Duration::from_secs(60) => {
            if first_hour {
                per_hour(120)
            } else {
                // 30 s doubling to 15 min: once the backoff reached the interval.
                per_hour(4 + 2)
            }
        }
        Behaviour::Healthy { lifetime } => {
            let grants = (2 * 3600 / lifetime.as_secs().max(1)) as usize;
            // Plus one probe per 15-minute interval (a probe mints a token too).
            per_hour(grants.max(4) + 4 + 2)
        }
        Behaviour::Failing | Behaviour::Hanging | Behaviour::RateLimited { .. } => {
            if first_hour {
                per_hour(9 + 12 + 2)
            } else {
                per_hour(12 + 2)
            }
        }
        Behaviour::Dead | Behaviour::Weak => per_hour(4 + 2),
    }
}

fn credential(case: &Case) -> serde_json::Value {
    json!({
        "apiVersion": "reconnect.dev/v1alpha1",
        "kind": "ConnectorCredential",
        "metadata": {"name": case.name},
        "spec": {
            "provider": "procore",
            "auth": case.auth.to_string(),
            "secretRef": {"name": format!("{}-src", case.name)},
            "endpoint": "http://127.0.0.1:9",
            "params": {"companyId": "1"},
            "requiredPermissions": ["company:1"],
        }
    })
}

async fn apply_source(secrets: &Api<Secret>, name: &str, data: BTreeMap<&str, String>) {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("{name}-src")},
        "stringData": data,
    });
    secrets
        .patch(
            &format!("{name}-src"),
            &PatchParams::apply("sim-user").force(),
            &Patch::Apply(secret),
        )
        .await
        .expect("apply source Secret");
}

fn source_data(sim: &Sim, auth: AuthType, client: &str) -> BTreeMap<&'static str, String> {
    let mut data = BTreeMap::from([("client_id", client.to_owned())]);
    data.insert("client_secret", format!("secret-{client}"));
    if auth == AuthType::RefreshToken {
        data.insert("refresh_token", sim.chain(client));
    }
    data
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start(client: &kube::Client, sim: &Sim) -> Running {
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Providers::new()
            .with_clock(sim.clock.clone())
            .scripted(Arc::new(sim.clone())),
        sim.clock.clone(),
        metrics,
        Some("sim".into()),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = stopped.shared();
    let credentials = super::credential::run(
        ctx.clone(),
        Some(NS.into()),
        futures::stream::pending(),
        stopped.clone().map(|_| ()),
    );
    let integrations = super::integration::run(
        ctx,
        Some(NS.into()),
        futures::stream::pending(),
        stopped.map(|_| ()),
    );
    let task = tokio::spawn(async move {
        futures::join!(credentials, integrations);
    });
    Running { stop, task }
}

/// Per-credential counts of one hour.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    reconciles: usize,
    provider_calls: usize,
    writes: usize,
}

fn name_in_path<'a>(path: &'a str, collection: &str) -> Option<&'a str> {
    let path = path.split('?').next()?;
    let rest = path.split(&format!("/{collection}/")).nth(1)?;
    rest.split('/').next()
}

#[tokio::test(start_paused = true)]
async fn thirty_days_of_every_kind_of_provider_stay_within_budget() {
    let standin = ApiServer::new();
    standin
        .register_crds_from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/crds"))
        .expect("CRDs");
    // As a real API server does, about once a minute (the stand-in's test default is 1 s).
    standin.set_bookmark_interval(Duration::from_secs(60));
    let client = standin.client();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .expect("namespace");
    let sim = Sim {
        clock: Arc::new(TokioClock {
            base: Timestamp::now(),
            start: tokio::time::Instant::now(),
        }),
        state: Arc::default(),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let creds: Api<ConnectorCredential> = Api::namespaced(client.clone(), NS);
    let cases = cases();
    for case in &cases {
        sim.set(case.client, case.behaviour);
        apply_source(
            &secrets,
            case.name,
            source_data(&sim, case.auth, case.client),
        )
        .await;
        creds
            .create(
                &PostParams::default(),
                &serde_json::from_value(credential(case)).unwrap(),
            )
            .await
            .expect("create credential");
    }
    // One Integration over several of them, with a restart target, so its controller runs
    // beside (its own writes must not wake it either).
    let integrations: Api<crate::api::Integration> = Api::namespaced(client.clone(), NS);
    integrations
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "reconnect.dev/v1alpha1",
                "kind": "Integration",
                "metadata": {"name": "sync"},
                "spec": {"connectors": [
                    {"name": "a", "credentialRef": {"name": "tokens-1h"}},
                    {"name": "b", "credentialRef": {"name": "rotates"}},
                    {"name": "c", "credentialRef": {"name": "dies"}},
                ]},
            }))
            .unwrap(),
        )
        .await
        .expect("create Integration");

    let mut running = start(&client, &sim);
    let mut hours: Vec<BTreeMap<String, Counts>> = Vec::new();
    let mut integration_reconciles = Vec::new();
    let mut event_writes = Vec::new();
    let mut seen_calls = 0;
    let wall = std::time::Instant::now();
    for hour in 0..days() * 24 {
        match hour {
            // Day 2: the service account behind `dies` is deactivated.
            48 => sim.set("c-dies", Behaviour::Dead),
            // Day 3..5: `rotates` is rotated to a weak, then a dead, then a good client.
            72 => {
                sim.set("c-rot-weak", Behaviour::Weak);
                let data = source_data(&sim, AuthType::RefreshToken, "c-rot-weak");
                apply_source(&secrets, "rotates", data).await;
            }
            96 => {
                sim.set("c-rot-dead", Behaviour::Dead);
                let data = source_data(&sim, AuthType::RefreshToken, "c-rot-dead");
                apply_source(&secrets, "rotates", data).await;
            }
            120 => {
                let lifetime = Duration::from_secs(1800);
                sim.set("c-rot-2", Behaviour::Healthy { lifetime });
                let data = source_data(&sim, AuthType::RefreshToken, "c-rot-2");
                apply_source(&secrets, "rotates", data).await;
            }
            // Day 6: someone edits the Secret the workloads mount.
            144 => {
                let patch = json!({"stringData": {"client_secret": "typed-by-hand"}});
                secrets
                    .patch(
                        "tokens-24h-active",
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .expect("hand edit");
            }
            // Day 15: the operator is killed and starts again with no memory.
            360 => {
                running.task.abort();
                let _ = (&mut running.task).await;
                running = start(&client, &sim);
            }
            _ => {}
        }
        standin.clear_requests();
        tokio::time::sleep(HOUR).await;

        let requests = standin.requests();
        let calls = sim.calls_since(seen_calls);
        let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
        for r in &requests {
            if let Some(name) = name_in_path(&r.path, "connectorcredentials") {
                if r.verb.is_write() {
                    counts.entry(name.to_owned()).or_default().writes += 1;
                }
            } else if let Some(secret) = name_in_path(&r.path, "secrets")
                && let Some(name) = secret.strip_suffix("-src")
                && r.verb == Verb::Get
            {
                // Every reconcile reads its source Secret (the Integration controller reads
                // the credentials it aggregates, so their GETs do not count reconciles).
                counts.entry(name.to_owned()).or_default().reconciles += 1;
            } else if let Some(secret) = name_in_path(&r.path, "secrets")
                && let Some(name) = secret.strip_suffix("-active")
                && r.verb.is_write()
            {
                counts.entry(name.to_owned()).or_default().writes += 1;
            }
        }
        for call in &calls {
            let name = call.key.rsplit('/').next().unwrap_or_default();
            counts.entry(name.to_owned()).or_default().provider_calls += 1;
        }
        seen_calls += calls.len();
        integration_reconciles.push(
            requests
                .iter()
                .filter(|r| {
                    r.verb == Verb::Get
                        && name_in_path(&r.path, "integrations").is_some_and(|n| n == "sync")
                })
                .count(),
        );
        event_writes.push(
            requests
                .iter()
                .filter(|r| r.verb.is_write() && r.path.contains("/events"))
                .count(),
        );
        if std::env::var_os("RECONNECT_SIM_TRACE").is_some() {
            eprintln!(
                "hour {hour}: {} requests, {} provider calls, wall {:?}",
                requests.len(),
                calls.len(),
                wall.elapsed()
            );
        }
        if std::env::var("RECONNECT_SIM_DUMP").ok() == Some(hour.to_string()) {
            for r in &requests {
                eprintln!("{} {} {:?}", r.method, r.path, r.verb);
            }
        }
        hours.push(counts);
    }
    let _ = running.stop.send(());
    let _ = running.task.await;

    // The figures, for the record (cargo test -- --nocapture).
    println!(
        "per credential: max per hour (reconciles/provider calls/writes), total over {} days",
        days()
    );
    for case in &cases {
        let series = |f: fn(&Counts) -> usize| -> (usize, usize) {
            let values: Vec<usize> = hours
                .iter()
                .map(|h| h.get(case.name).map(f).unwrap_or(0))
                .collect();
            (
                values.iter().copied().max().unwrap_or(0),
                values.iter().sum(),
            )
        };
        let (r_max, r_sum) = series(|c| c.reconciles);
        let (p_max, p_sum) = series(|c| c.provider_calls);
        let (w_max, w_sum) = series(|c| c.writes);
        println!(
            "  {:<14} max/h {r_max:>4} {p_max:>4} {w_max:>4}   total {r_sum:>6} {p_sum:>6} {w_sum:>6}",
            case.name
        );
    }
    println!(
        "  integration    max/h {:>4} reconciles; events written max/h {}",
        integration_reconciles.iter().max().unwrap_or(&0),
        event_writes.iter().max().unwrap_or(&0)
    );

    // Budgets, hour by hour. Hours with a scripted change (and the hour after, as a change
    // lands inside it) may spend one more swap's worth.
    let eventful = [48, 72, 96, 120, 144, 360];
    for case in &cases {
        for (hour, counts) in hours.iter().enumerate() {
            let c = counts.get(case.name).copied().unwrap_or_default();
            let mut b = budget(case, hour == 0);
            if eventful.contains(&hour) || hour == 360 + 1 {
                b = Budget {
                    reconciles: b.reconciles + 10,
                    provider_calls: b.provider_calls + 4,
                    writes: b.writes + 10,
                };
                if hour == 360 && case.behaviour != Behaviour::Dead {
                    // A restart starts the failing ones' backoff again from 1 s.
                    b.reconciles += 12;
                    b.provider_calls += 12;
                    b.writes += 12;
                }
            }
            assert!(
                c.reconciles <= b.reconciles
                    && c.provider_calls <= b.provider_calls
                    && c.writes <= b.writes,
                "{} in hour {hour}: {c:?} exceeds {b:?}",
                case.name
            );
        }
    }
    // The Integration: its resync every 5 minutes (12 an hour), plus a wake per change its
    // credentials show (more while they connect, and around the scripted changes); never
    // their token refreshes.
    for (hour, n) in integration_reconciles.iter().enumerate() {
        let budget = if hour == 0 {
            24
        } else if eventful.contains(&hour) || eventful.contains(&(hour.saturating_sub(1))) {
            20
        } else {
            14
        };
        assert!(
            *n <= budget,
            "Integration reconciled {n} times in hour {hour} (budget {budget})"
        );
    }
    for (hour, n) in event_writes.iter().enumerate() {
        assert!(*n <= 3 * cases.len(), "{n} event writes in hour {hour}");
    }

    // At most two token refreshes per token lifetime, for every healthy credential, besides
    // the probes on the validation interval.
    let calls = sim.calls();
    for case in &cases {
        let Behaviour::Healthy { lifetime } = case.behaviour else {
            continue;
        };
        if case.name == "rotates" || case.name == "dies" {
            continue;
        }
        let key = format!("/{}", case.name);
        let minted: Vec<Timestamp> = calls
            .iter()
            .filter(|c| c.minted && c.key.ends_with(&key))
            .map(|c| c.at)
            .collect();
        let window = SignedDuration::try_from(lifetime.max(Duration::from_secs(30))).unwrap();
        for (i, at) in minted.iter().enumerate() {
            let inside = minted[i..]
                .iter()
                .take_while(|t| t.duration_since(*at) < window)
                .count();
            // Two refreshes per lifetime, plus the probes of the validation interval that fit
            // in it (a probe of a client-credentials credential mints a token; a refresh
            // does not check the account, so it does not replace a probe).
            let mut allowed = 2 + (lifetime.as_secs() / (15 * 60)) as usize;
            // A scripted change inside the window may add one grant: the first connect, the
            // restart (a fresh process probes once, knowing nothing) or the hand edit
            // (restored after validating the source again).
            let end = at.saturating_add(window).unwrap_or(*at);
            if std::iter::once(&0).chain(&eventful).any(|h| {
                let t = sim
                    .clock
                    .base
                    .saturating_add(SignedDuration::from_hours(*h as i64))
                    .unwrap_or(sim.clock.base);
                *at <= t.saturating_add(SignedDuration::from_hours(1)).unwrap_or(t) && t <= end
            }) {
                allowed += 1;
            }
            assert!(
                inside <= allowed,
                "{}: {inside} grants within {lifetime:?} from {at}",
                case.name
            );
        }
    }

    // Nothing lost: no refresh token was presented after it was spent.
    let reused = sim.state().reused.clone();
    assert!(reused.is_empty(), "refresh tokens used twice: {reused:?}");

    // Where everything ended up, once every scripted change has happened (a shorter span,
    // for a quick look, checks the budgets only).
    if days() < 16 {
        println!("final states not checked: the scripted changes run until day 16");
        return;
    }
    let expect = [
        ("tokens-1s", Phase::Connected),
        ("tokens-60s", Phase::Connected),
        ("tokens-5m", Phase::Connected),
        ("tokens-1h", Phase::Connected),
        ("tokens-24h", Phase::Connected),
        ("rotates", Phase::Connected),
        ("dies", Phase::ConnectionLost),
        ("weak", Phase::PermissionMismatch),
    ];
    for (name, phase) in expect {
        let cred = creds.get(name).await.expect("credential");
        let status = cred.status.unwrap_or_default();
        assert_eq!(status.phase, Some(phase), "{name}: {:?}", status.conditions);
    }
    let rotated = creds.get("rotates").await.unwrap().status.unwrap();
    assert_eq!(rotated.account.map(|a| a.id).as_deref(), Some("c-rot-2"));
    let restored = secrets.get("tokens-24h-active").await.unwrap();
    let secret = restored.data.unwrap_or_default();
    assert_eq!(
        secret.get("client_secret").map(|v| v.0.as_slice()),
        Some(b"secret-c-24h".as_slice()),
        "the hand-edited target Secret holds the validated material again"
    );
}
