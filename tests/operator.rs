//! The operator process end to end: HTTP endpoints (/healthz, /readyz, /metrics scraped and
//! named as documented) and leader election with two and three replicas against one
//! Kubernetes API (the stand-in, or a real cluster with RECONNECT_TEST_KUBECONFIG).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use reconnect_apiserver::{TestCluster, test_cluster};
use reconnect_emulators::{Account, ProcoreEmulator};
use reconnect_operator::api::{ConnectorCredential, Phase};
use reconnect_operator::operator::{Options, run_on};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

/// One operator replica: its HTTP address, a way to stop it gracefully, and its task.
struct Replica {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn replica(cluster: &TestCluster, identity: &str, leader_election: bool) -> Replica {
    replica_with(cluster, cluster.client.clone(), identity, leader_election).await
}

async fn replica_with(
    cluster: &TestCluster,
    client: kube::Client,
    identity: &str,
    leader_election: bool,
) -> Replica {
    replica_limited(
        cluster,
        client,
        identity,
        leader_election,
        reconnect_operator::controller::DEFAULT_CONCURRENCY,
    )
    .await
}

async fn replica_limited(
    cluster: &TestCluster,
    client: kube::Client,
    identity: &str,
    leader_election: bool,
    max_concurrent_reconciles: u16,
) -> Replica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = Options {
        namespaces: vec![cluster.namespace.clone()],
        metrics_addr: addr,
        leader_election,
        lease_name: "reconnect-operator-test".into(),
        lease_namespace: Some(cluster.namespace.clone()),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        restart_debounce: Duration::from_secs(10),
        max_concurrent_reconciles,
        max_concurrent_rollouts:
            reconnect_operator::controller::integration::DEFAULT_MAX_CONCURRENT_ROLLOUTS,
        rollout_hold: reconnect_operator::controller::integration::DEFAULT_ROLLOUT_HOLD,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_on(client, options, listener, async move {
            let _ = stopped.await;
        })
        .await
        .expect("operator runs");
    });
    Replica {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A plain HTTP/1.1 GET; returns the status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reconcile runs a replica has made, from its own /metrics.
async fn reconciles(r: &Replica) -> u64 {
    let (_, body) = get(r.addr, "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix("reconnect_reconcile_total{controller=\"connectorcredential\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn setup(cluster: &TestCluster) -> ProcoreEmulator {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(Account::new("4567", "svc-sync@acme.com").with_permissions(["company:1234"]));
    emu.add_client("dmsa-1", "secret-1", Some("4567"));
    emu.add_client("dmsa-2", "secret-2", Some("4567"));
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "procore-src"},
        "stringData": {"client_id": "dmsa-1", "client_secret": "secret-1"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster.client.clone(), &cluster.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    emu
}

async fn apply_credential(cluster: &TestCluster, name: &str, emu: &ProcoreEmulator) {
    let obj = json!({
        "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
        "metadata": {"name": name},
        "spec": {"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "procore-src"},
                 "endpoint": emu.base_url(), "params": {"companyId": "1234"}},
    });
    Api::<ConnectorCredential>::namespaced(cluster.client.clone(), &cluster.namespace)
        .patch(name, &PatchParams::apply("test"), &Patch::Apply(&obj))
        .await
        .unwrap();
}

async fn wait_connected(cluster: &TestCluster, name: &str) {
    let api = Api::<ConnectorCredential>::namespaced(cluster.client.clone(), &cluster.namespace);
    let cond = |c: Option<&ConnectorCredential>| {
        c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase) == Some(Phase::Connected)
    };
    tokio::time::timeout(WAIT, kube::runtime::wait::await_condition(api, name, cond))
        .await
        .unwrap_or_else(|_| panic!("{name} never Connected"))
        .unwrap();
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_and_metrics_endpoints_serve_the_documented_names() {
    let cluster = test_cluster().await;
    let emu = setup(&cluster).await;
    let r = replica(&cluster, "solo", false).await;
    apply_credential(&cluster, "procore-sync", &emu).await;
    wait_connected(&cluster, "procore-sync").await;

    assert_eq!(get(r.addr, "/healthz").await.0, 200);
    // The caches synced before the credential could connect; readiness follows within a
    // poll period and must not stay 503.
    eventually("/readyz turns 200 once the caches have synced", || async {
        get(r.addr, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(get(r.addr, "/nope").await.0, 404);
    let (status, body) = get(r.addr, "/metrics").await;
    assert_eq!(status, 200);
    let ns = &cluster.namespace;
    for needle in [
        "reconnect_reconcile_total{controller=\"connectorcredential\"}".to_owned(),
        "reconnect_reconcile_duration_seconds_count{controller=\"connectorcredential\"}".to_owned(),
        "reconnect_credentials{provider=\"procore\",phase=\"Connected\"} 1".to_owned(),
        "reconnect_provider_requests_total{provider=\"procore\",call=\"GET /rest/v1.0/me\",outcome=\"ok\"}".to_owned(),
        "reconnect_provider_request_duration_seconds_count{provider=\"procore\"".to_owned(),
        "reconnect_rotations_total{provider=\"procore\",result=\"accepted\"} 1".to_owned(),
    ] {
        assert!(body.contains(&needle), "missing {needle} in\n{body}");
    }
    // A healthy credential without a known expiry has no series of its own.
    assert!(
        !body.contains(&format!("namespace=\"{ns}\",name=\"procore-sync\"")),
        "a Connected credential is exported by name:\n{body}"
    );
    // No label carries credential material.
    for canary in ["secret-1", "dmsa-1"] {
        assert!(!body.contains(canary), "{canary} leaked into /metrics");
    }
    let _ = r.stop.map(|s| s.send(()));
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
    cluster.cleanup().await;
}

#[tokio::test]
async fn exactly_one_replica_reconciles_and_a_standby_takes_over() {
    let cluster = test_cluster().await;
    let emu = setup(&cluster).await;
    let mut a = replica(&cluster, "replica-a", true).await;
    // Let A take the lease first, so the roles are known.
    eventually("replica-a leads", || async {
        get(a.addr, "/readyz").await.0 == 200
    })
    .await;
    apply_credential(&cluster, "first", &emu).await;
    wait_connected(&cluster, "first").await;
    let b = replica(&cluster, "replica-b", true).await;
    eventually("replica-b is a ready standby", || async {
        get(b.addr, "/readyz").await.0 == 200
    })
    .await;
    apply_credential(&cluster, "second", &emu).await;
    wait_connected(&cluster, "second").await;
    let (ra, rb) = (reconciles(&a).await, reconciles(&b).await);
    assert!(
        ra > 0 && rb == 0,
        "exactly one replica reconciles: a={ra} b={rb}"
    );

    // A stops gracefully and releases the lease: B takes over and reconciles new work.
    let _ = a.stop.take().map(|s| s.send(()));
    tokio::time::timeout(WAIT, a.task).await.unwrap().unwrap();
    apply_credential(&cluster, "third", &emu).await;
    wait_connected(&cluster, "third").await;
    assert!(reconciles(&b).await > 0, "the standby took over");

    // B dies without releasing: C takes over once the lease expires.
    let c = replica(&cluster, "replica-c", true).await;
    b.task.abort();
    let _ = b.task.await;
    apply_credential(&cluster, "fourth", &emu).await;
    wait_connected(&cluster, "fourth").await;
    assert!(
        reconciles(&c).await > 0,
        "a standby took over from a crashed leader"
    );
    let _ = c.stop.map(|s| s.send(()));
    tokio::time::timeout(WAIT, c.task).await.unwrap().unwrap();
    cluster.cleanup().await;
}

#[tokio::test]
async fn the_binary_runs_against_a_kubeconfig_and_stops_cleanly_on_sigterm() {
    // A real process, configured like a user would: a kubeconfig, flags, a signal to stop.
    let cluster = test_cluster().await;
    let served;
    let kubeconfig = match (&cluster.standin, cluster.kubeconfig()) {
        (_, Some(path)) => path.to_path_buf(),
        (Some(standin), None) => {
            served = standin.serve().await.unwrap();
            served.kubeconfig().to_path_buf()
        }
        (None, None) => unreachable!("a real cluster has a kubeconfig"),
    };
    let emu = setup(&cluster).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
        .args([
            "run",
            "--watch-namespaces",
            &cluster.namespace,
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained as it comes: a full pipe would block the operator's logging.
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    apply_credential(&cluster, "procore-sync", &emu).await;
    wait_connected(&cluster, "procore-sync").await;

    let Some(status) = terminate(&mut child, WAIT).await else {
        panic!(
            "the operator did not stop on SIGTERM; logs:\n{}",
            logs.join().unwrap()
        );
    };
    let logs = logs.join().unwrap();
    assert!(status.success(), "exit {status:?}; logs:\n{logs}");
    // JSON logs, one object per line, and no credential material in them.
    let first = logs.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{first}"
    );
    assert!(logs.contains("shutting down"));
    assert!(
        !logs.contains("did not finish within the shutdown grace period"),
        "the controllers did not stop by themselves:\n{logs}"
    );
    assert!(
        !logs.contains("secret-1"),
        "the client secret leaked into the logs"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn a_leader_cut_off_from_its_lease_stops_reconciling_before_the_standby_takes_over() {
    let cluster = test_cluster().await;
    let Some(standin) =
        cluster.standin_or_skip("a_leader_cut_off_from_its_lease_stops_reconciling")
    else {
        return;
    };
    // Replica A talks through a link that can drop its Lease requests (a partition between A
    // and the API server for leader election only; everything else still gets through, so
    // a leader that kept going would visibly keep reconciling).
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let link = {
        let standin = standin.clone();
        let cut = cut.clone();
        tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let standin = standin.clone();
            let cut = cut.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if cut && req.uri().path().contains("/leases") {
                    return Err::<_, tower::BoxError>("lease requests are cut off".into());
                }
                let response = tower::ServiceExt::oneshot(standin, req).await?;
                Ok(response)
            }
        })
    };
    let a_client = kube::Client::new(link, cluster.namespace.clone());
    let emu = setup(&cluster).await;
    let a = replica_with(&cluster, a_client, "replica-a", true).await;
    apply_credential(&cluster, "first", &emu).await;
    wait_connected(&cluster, "first").await;
    let b = replica(&cluster, "replica-b", true).await;
    eventually("replica-b is a ready standby", || async {
        get(b.addr, "/readyz").await.0 == 200
    })
    .await;
    assert!(reconciles(&a).await > 0 && reconciles(&b).await == 0);

    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    // B takes over once A's Lease expires; A must have stopped by then.
    eventually("replica-b leads", || async { reconciles(&b).await > 0 }).await;
    let a_before = reconciles(&a).await;
    apply_credential(&cluster, "second", &emu).await;
    wait_connected(&cluster, "second").await;
    assert!(reconciles(&b).await > 0);
    assert_eq!(
        reconciles(&a).await,
        a_before,
        "the cut-off leader kept reconciling"
    );
    for r in [a, b] {
        let _ = r.stop.map(|s| s.send(()));
        r.task.abort();
    }
    cluster.cleanup().await;
}

#[tokio::test]
async fn no_more_reconciles_run_at_once_than_the_limit() {
    let cluster = test_cluster().await;
    let emu = setup(&cluster).await;
    // A slow provider: without a limit, all eight verifications would be in flight together.
    emu.fail_next(
        usize::MAX,
        reconnect_emulators::Fault::Latency(Duration::from_millis(100)),
    );
    for i in 0..8 {
        apply_credential(&cluster, &format!("c{i}"), &emu).await;
    }
    let mut r = replica_limited(&cluster, cluster.client.clone(), "limited", false, 2).await;
    for i in 0..8 {
        wait_connected(&cluster, &format!("c{i}")).await;
    }
    let most = emu.max_in_flight();
    assert!(
        (1..=2).contains(&most),
        "{most} provider requests in flight at once with --max-concurrent-reconciles 2"
    );
    let _ = r.stop.take().map(|s| s.send(()));
    tokio::time::timeout(WAIT, r.task).await.unwrap().unwrap();
    cluster.cleanup().await;
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; `None` (and the child
/// killed) if it does not.
async fn terminate(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Asleep, not blocking: the emulators a test serves run on this runtime.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_while_the_api_server_does_not_answer_stops_at_once() {
    // The controllers wait for their first list; with leader election, the lease setup waits.
    stops_at_once_against_a_silent_api_server(&[], "shutting down").await;
    stops_at_once_against_a_silent_api_server(
        &["--leader-election"],
        "stopped before the lease was set up",
    )
    .await;
}

/// Starts the binary with `flags` against an API server that never answers, sends SIGTERM
/// once it serves, and expects a clean exit well inside the shutdown grace period, having
/// logged `says`.
async fn stops_at_once_against_a_silent_api_server(flags: &[&str], says: &str) {
    // An API server that accepts connections and never answers: the lease is never set up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for conn in silent.incoming().take(64) {
            conns.push(conn);
        }
    });
    let kubeconfig = reconnect_apiserver::scratch_dir()
        .unwrap()
        .join(format!("silent-{port}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: silent, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: silent, user: u, namespace: default}}}}]\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(flags)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // Running: the HTTP endpoints are up, the lease setup hangs on the silent server.
    let mut logs = Vec::new();
    while !logs.iter().any(|l: &String| l.contains("serving /metrics")) {
        logs.push(lines.recv_timeout(WAIT).expect("the operator starts"));
    }
    // Well inside the 20 s grace period a hung reconcile would get.
    let Some(status) = terminate(&mut child, Duration::from_secs(10)).await else {
        logs.extend(lines.try_iter());
        panic!(
            "{flags:?}: the operator did not stop on SIGTERM within 10 s; logs:\n{}",
            logs.join("\n")
        );
    };
    logs.extend(lines.try_iter());
    let logs = logs.join("\n");
    assert!(
        status.success(),
        "{flags:?}: exit {status:?}; logs:\n{logs}"
    );
    assert!(logs.contains(says), "{flags:?}: {logs}");
    assert!(
        !logs.contains("grace period"),
        "{flags:?}: the stop waited for the grace period:\n{logs}"
    );
    drop(held);
}
