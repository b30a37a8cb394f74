//! The reliability suite (issue #12, items 1, 2 and the canary check of item 4): many
//! credentials over several providers rotated among good, weak, dead and short-token
//! material, Integrations that roll Deployments, and then the promises checked by
//! [`world::World::check`]: no target Secret ever held unvalidated material, no refresh
//! token was lost, nothing is stuck, every swap rolled its workloads once, nothing was
//! validated again after its swap, and no secret value shows in logs, events, status or
//! metrics.
//!
//! - `chaos_run_*`: the operator (the library's `run_on`, as the binary runs it, with a
//!   kubeconfig client) while seeded fault plans fail about 10% of its Kubernetes API calls
//!   (stand-in only) and 10% of provider calls; then faults off and convergence.
//! - `crash_anywhere_*`: the `reconnect-operator` binary, SIGKILLed at seeded moments during
//!   rotations and refreshes and started again, on both backends.
//!
//! A share of the credentials (two flavours in seven) use the OAuth peer, a real and
//! independent OAuth server (oidc-provider), through an observing and faulting proxy
//! (`chaos/peer.rs`): rotating refresh tokens with reuse detection, and client credentials.
//!
//! Sizes: `RECONNECT_CHAOS_N` credentials (50), `RECONNECT_CHAOS_R` rotations (300),
//! `RECONNECT_CHAOS_KILLS` (50), seed `RECONNECT_CHAOS_SEED` (printed on failure), and
//! `RECONNECT_CHAOS_CONVERGE` seconds to wait for convergence (90); `RECONNECT_CHAOS_LOG=path`
//! writes the operator's log (every life's, in the crash run) there.

#[path = "chaos/peer.rs"]
mod peer;
#[path = "chaos/world.rs"]
mod world;

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reconnect_apiserver::{Chaos, RequestMatch, test_cluster};
use reconnect_operator::operator::{Options, run_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use world::{Findings, Kill, Rng, World, env_or, seed};

/// The User-Agent of the in-process operator's client: the API fault plan matches it, so
/// the test's own requests are never faulted.
const OPERATOR_AGENT: &str = "reconnect-operator-chaos";

/// A kubeconfig for processes and kubeconfig clients: the real cluster's, or the stand-in
/// served over HTTP (kept alive by the returned guard).
async fn kubeconfig(
    cluster: &reconnect_apiserver::TestCluster,
) -> (
    std::path::PathBuf,
    Option<reconnect_apiserver::ServedApiServer>,
) {
    match (&cluster.standin, cluster.kubeconfig()) {
        (_, Some(path)) => (path.to_path_buf(), None),
        (Some(standin), None) => {
            let served = standin.serve().await.expect("serve the stand-in");
            (served.kubeconfig().to_path_buf(), Some(served))
        }
        (None, None) => unreachable!("a real cluster has a kubeconfig"),
    }
}

/// A client configured the way the binary's is (kube's defaults, retries included), with
/// its own User-Agent.
async fn operator_client(path: &std::path::Path, namespace: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    config.default_namespace = namespace.to_owned();
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(OPERATOR_AGENT),
    ));
    kube::Client::try_from(config).expect("client")
}

/// A shared in-memory log sink.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Sink {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this process's logs, as text and as JSON, at debug level for the operator.
fn capture_logs() -> (Sink, Sink) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (text, json) = (Sink::default(), Sink::default());
    let (t, j) = (text.clone(), json.clone());
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "info,reconnect_operator=debug,kube=warn",
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || t.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || j.clone()),
        )
        .try_init();
    (text, json)
}

/// A plain HTTP/1.1 GET of the operator's /metrics.
async fn metrics(addr: std::net::SocketAddr) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let _ = stream.write_all(request.as_bytes()).await;
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw).await;
    raw
}

fn print_figures(test: &str, seed: u64, lines: &[(&str, String)], findings: &Findings) {
    let mut out = format!("{test} (seed {seed:#x}):\n");
    for (what, value) in lines {
        out.push_str(&format!("  {what}: {value}\n"));
    }
    out.push_str(&format!(
        "  validated swaps: {}\n  rejected rotations: {}\n  rotations overwritten before the operator saw them: {}\n  refreshes: {}\n  revisions validated again after a kill: {}\n  refresh-token chains a kill cut in the unavoidable window (provider answer to the first durable write): {} (longest grant-to-kill gap {:?})\n  spent refresh tokens presented again: {} (after a kill inside the window: {})\n  workload rolls: {}\n  unvalidated swaps: {}\n  lost refresh tokens: {}\n  validated again after a swap: {}\n  bad rolls: {}\n  leaks: {}\n",
        findings.validated_swaps,
        findings.rejected_rotations,
        findings.overwritten_unseen,
        findings.refreshes,
        findings.validated_again_after_kill,
        findings.cut_in_window,
        findings.cut_in_window_max_gap,
        findings.spent_presented.len(),
        findings.spent_presented_in_window,
        findings.rolls,
        findings.unvalidated.len(),
        findings.lost_tokens.len(),
        findings.revalidated.len(),
        findings.bad_rolls.len(),
        findings.leaks.len(),
    ));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

fn assert_findings(seed: u64, unsettled: &[String], findings: &Findings) {
    let mut problems = Vec::new();
    problems.extend(unsettled.iter().map(|s| format!("stuck: {s}")));
    problems.extend(
        findings
            .unvalidated
            .iter()
            .map(|s| format!("unvalidated: {s}")),
    );
    problems.extend(
        findings
            .lost_tokens
            .iter()
            .map(|s| format!("lost token: {s}")),
    );
    problems.extend(
        findings
            .revalidated
            .iter()
            .map(|s| format!("validated again: {s}")),
    );
    problems.extend(
        findings
            .spent_presented
            .iter()
            .map(|s| format!("spent token presented: {s}")),
    );
    problems.extend(findings.bad_rolls.iter().map(|s| format!("roll: {s}")));
    problems.extend(findings.leaks.iter().map(|s| format!("leak: {s}")));
    assert!(
        problems.is_empty(),
        "seed {seed:#x} (RECONNECT_CHAOS_SEED={seed}): {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_keeps_every_promise_under_api_and_provider_faults() {
    let (log_text, log_json) = capture_logs();
    let n = env_or("RECONNECT_CHAOS_N", 50) as usize;
    let r = env_or("RECONNECT_CHAOS_R", 300) as usize;
    let seed = seed();
    let cluster = test_cluster().await;
    let standin = cluster.standin.clone();
    if standin.is_none() {
        println!(
            "chaos run on the {} backend: without Kubernetes API faults (they need the stand-in); provider faults still apply",
            cluster.backend()
        );
    }
    let (path, _served) = kubeconfig(&cluster).await;
    let client = operator_client(&path, &cluster.namespace).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Options {
        namespaces: vec![cluster.namespace.clone()],
        metrics_addr: addr,
        leader_election: false,
        lease_name: "reconnect-operator".into(),
        lease_namespace: None,
        identity: "chaos".into(),
        lease_duration: Duration::from_secs(15),
        restart_debounce: Duration::from_secs(1),
        max_concurrent_reconciles: reconnect_operator::controller::DEFAULT_CONCURRENCY,
        max_concurrent_rollouts:
            reconnect_operator::controller::integration::DEFAULT_MAX_CONCURRENT_ROLLOUTS,
        rollout_hold: reconnect_operator::controller::integration::DEFAULT_ROLLOUT_HOLD,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(async move {
        run_on(client, options, listener, async move {
            let _ = stopped.await;
        })
        .await
        .expect("operator runs");
    });
    let mut world = World::new(cluster, seed).await;
    let started = Instant::now();
    world.populate(n).await;
    let unsettled = world.converge(world::converge_within(), false).await;
    assert!(unsettled.is_empty(), "setup did not settle: {unsettled:#?}");
    let setup = started.elapsed();
    let setup_done = Instant::now();
    world.record();

    // Faults on.
    if let Some(standin) = &standin {
        standin.set_chaos(Some(Chaos {
            seed,
            per_mille: 100,
            matcher: RequestMatch::any().user_agent_contains(OPERATOR_AGENT),
        }));
    }
    world.provider_chaos(Some(100));
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closer = standin.clone().map(|standin| {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ 0xc105e);
            loop {
                tokio::time::sleep(Duration::from_millis(500 + rng.below(2000))).await;
                standin.close_watches();
                closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    });
    let chaos_started = Instant::now();
    let batch = (n / 5).clamp(1, r.max(1));
    let mut rotated = 0;
    let mut rng = Rng::new(seed ^ 0xba7c4);
    while rotated < r {
        let k = batch.min(r - rotated);
        world.rotate(k).await;
        rotated += k;
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
    }
    // Keep the faults on until the steady credentials' short tokens have been refreshed
    // (30 s after issue at the earliest), and the last batch met the faults too.
    let refreshed_by = setup_done + Duration::from_secs(35);
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        refreshed_by.max(Instant::now() + Duration::from_secs(2)),
    ))
    .await;
    let chaos_time = chaos_started.elapsed();

    // Faults off; count what was injected.
    let api_faults = standin
        .as_ref()
        .map(|s| s.chaos_injected())
        .unwrap_or_default();
    if let Some(task) = closer {
        task.abort();
    }
    let closed_watches = closed.load(std::sync::atomic::Ordering::SeqCst);
    if let Some(standin) = &standin {
        standin.set_chaos(None);
    }
    let provider_faults = world.provider_faults();
    world.provider_chaos(None);
    let calm = Instant::now();
    let unsettled = world.converge(world::converge_within(), false).await;
    let converged = calm.elapsed();
    world.stop_recording().await;

    let metrics_text = metrics(addr).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
    let published = world.published().await;
    let (text, json) = (log_text.text(), log_json.text());
    if let Ok(path) = std::env::var("RECONNECT_CHAOS_LOG") {
        std::fs::write(&path, &text).expect("write the operator log");
    }
    let findings = world
        .check(
            &[
                ("text log", &text),
                ("JSON log", &json),
                ("events and status", &published),
                ("metrics", &metrics_text),
            ],
            None,
        )
        .await;
    let api_total: usize = api_faults.values().sum();
    print_figures(
        "chaos run",
        seed,
        &[
            ("backend", world.cluster.backend().to_string()),
            (
                "credentials / Integrations / rotations",
                format!("{n} / {} / {r}", world.integrations.len()),
            ),
            ("setup", format!("{setup:.1?}")),
            ("rotating under faults", format!("{chaos_time:.1?}")),
            (
                "API faults injected",
                format!("{api_total} {api_faults:?} + {closed_watches} closed watch rounds"),
            ),
            ("provider faults injected", provider_faults.to_string()),
            ("provider requests", world.served().len().to_string()),
            ("of them to the OAuth peer", world.peer_figures()),
            (
                "time to converge after faults off",
                format!("{converged:.1?}"),
            ),
            ("stuck", unsettled.len().to_string()),
            ("log bytes checked", (text.len() + json.len()).to_string()),
        ],
        &findings,
    );
    assert_findings(seed, &unsettled, &findings);
    world.cleanup().await;
}

/// One life of the operator binary, its log drained as it comes.
struct Life {
    child: std::process::Child,
    log: std::thread::JoinHandle<String>,
}

fn spawn_operator(
    kubeconfig: &std::path::Path,
    namespace: &str,
    metrics: &str,
    json: bool,
) -> Life {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
        .args([
            "run",
            "--watch-namespaces",
            namespace,
            "--metrics-addr",
            metrics,
            "--restart-debounce",
            "1s",
            "--log-format",
            if json { "json" } else { "text" },
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,reconnect_operator=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the operator");
    let mut stderr = child.stderr.take().expect("piped");
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    Life { child, log }
}

impl Life {
    /// SIGKILL, and the log it wrote.
    fn kill(mut self) -> (Kill, String) {
        let sent = Instant::now();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dead = Instant::now();
        (Kill { sent, dead }, self.log.join().unwrap_or_default())
    }
}

/// A free loopback port for the binary's HTTP endpoints.
fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_anywhere_keeps_every_promise_across_sigkills() {
    let n = env_or("RECONNECT_CHAOS_N", 50) as usize;
    let r = env_or("RECONNECT_CHAOS_R", 300) as usize;
    let kills = env_or("RECONNECT_CHAOS_KILLS", 50) as usize;
    let seed = seed();
    let cluster = test_cluster().await;
    let (path, _served) = kubeconfig(&cluster).await;
    let namespace = cluster.namespace.clone();
    let mut world = World::new(cluster, seed).await;
    let mut logs = Vec::new();
    let mut life = spawn_operator(&path, &namespace, &free_port(), true);
    let started = Instant::now();
    world.populate(n).await;
    let unsettled = world.converge(world::converge_within(), false).await;
    assert!(unsettled.is_empty(), "setup did not settle: {unsettled:#?}");
    let setup = started.elapsed();
    world.record();

    let mut rng = Rng::new(seed ^ 0x4111);
    let crashing = Instant::now();
    let mut rotated = 0;
    let mut kill_times = Vec::new();
    for k in 0..kills {
        let due = r * (k + 1) / kills.max(1) - rotated;
        let before = world.served().len();
        world.rotate(due).await;
        rotated += due;
        // A seeded moment in the work this life has to do: after a seeded number of
        // provider requests (about three per rotation), then a seeded few milliseconds.
        let progress = rng.below(3 * due as u64 + 2) as usize;
        let deadline = Instant::now() + Duration::from_secs(3);
        while world.served().len() < before + progress && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        let (kill, log) = life.kill();
        kill_times.push(kill);
        logs.push(log);
        life = spawn_operator(&path, &namespace, &free_port(), k % 2 == 1);
    }
    if rotated < r {
        world.rotate(r - rotated).await;
    }
    let crash_time = crashing.elapsed();
    let calm = Instant::now();
    let unsettled = world.converge(world::converge_within(), true).await;
    let converged = calm.elapsed();
    world.stop_recording().await;
    // The last life's metrics, then its log.
    let port = free_port();
    let (kill, log) = life.kill();
    kill_times.push(kill);
    logs.push(log);
    let last = spawn_operator(&path, &namespace, &port, false);
    let addr: std::net::SocketAddr = port.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics_text = String::new();
    while Instant::now() < deadline {
        metrics_text = metrics(addr).await;
        if metrics_text.contains("reconnect_reconcile_total{controller=\"connectorcredential\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This life works too (a steady credential's refresh may be due), and its kill may cut
    // a grant like any other.
    let (kill, log) = last.kill();
    kill_times.push(kill);
    logs.push(log);
    let published = world.published().await;
    let all_logs = logs.join("\n");
    if let Ok(path) = std::env::var("RECONNECT_CHAOS_LOG") {
        std::fs::write(&path, &all_logs).expect("write the operator logs");
    }
    // Kills that landed while the operator was talking to a provider: a request within the
    // 200 ms before.
    let served = world.served();
    let busy_kills = kill_times
        .iter()
        .filter(|k| {
            served
                .iter()
                .any(|s| s.at <= k.sent && k.sent.duration_since(s.at) < Duration::from_millis(200))
        })
        .count();
    let findings = world
        .check(
            &[
                ("operator log", &all_logs),
                ("events and status", &published),
                ("metrics", &metrics_text),
            ],
            Some(&kill_times),
        )
        .await;
    print_figures(
        "crash run",
        seed,
        &[
            ("backend", world.cluster.backend().to_string()),
            (
                "credentials / Integrations / rotations",
                format!("{n} / {} / {r}", world.integrations.len()),
            ),
            ("setup", format!("{setup:.1?}")),
            (
                "kills (within 200 ms of a provider call)",
                format!("{kills} ({busy_kills})"),
            ),
            ("rotating while killing", format!("{crash_time:.1?}")),
            ("provider requests", world.served().len().to_string()),
            ("of them to the OAuth peer", world.peer_figures()),
            (
                "time to converge after the last kill",
                format!("{converged:.1?}"),
            ),
            ("stuck", unsettled.len().to_string()),
            ("log bytes checked", all_logs.len().to_string()),
        ],
        &findings,
    );
    assert_findings(seed, &unsettled, &findings);
    world.cleanup().await;
}
