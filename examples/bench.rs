//! The scale benchmark: the operator (the same code the binary runs, in a process of its own)
//! against a Kubernetes API and an instant provider (the Procore emulator on loopback).
//!
//!     cargo run --release --example bench -- [--credentials N] [--unrelated-secrets M]
//!         [--unrelated-kib K] [--rotations R] [--provider-latency-ms L] [--steady-s S]
//!
//! The API is the in-memory stand-in served over HTTP, or the real control plane when
//! `KUBEBUILDER_ASSETS` is set (started as the test suite starts it; `RECONNECT_TEST_KUBECONFIG`
//! names any other cluster). It measures, in this order:
//!
//! - cold start: N ConnectorCredentials and their source Secrets exist before the operator
//!   starts; the time until all are Connected;
//! - memory: the operator's RSS at steady state, then again after M unrelated Secrets of K KiB
//!   appeared (the operator must not cache their data);
//! - rotation latency under load: R rotations one after another, each from the source
//!   Secret's update to the target Secret carrying the new revision; the floor is the same
//!   API calls one swap needs (read credential, read source, read target, write target, patch
//!   status) made directly by a plain client against the same API in the same run;
//! - steady state: API writes to the bench's objects and provider token requests over S
//!   seconds (one validation interval: the credentials' interval is S) with nothing changing.
//!
//! It prints a table, then one summary line:
//! `bench: credentials=N cold_start_per_s=X rotation_p50_ms=X rotation_p99_ms=X floor_p50_ms=X
//! floor_p99_ms=X rss_mib=X unrelated_secrets_rss_delta_mib=X steady_api_writes=N
//! probes_per_interval=N`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reconnect_apiserver::test_cluster;
use reconnect_emulators::{Account, Fault, ProcoreEmulator};
use reconnect_operator::api::{ConnectorCredential, Phase};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const REVISION_ANNOTATION: &str = "reconnect.dev/revision";
/// Requests the bench keeps in flight while it creates objects.
const CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
struct Options {
    credentials: usize,
    unrelated_secrets: usize,
    unrelated_kib: usize,
    rotations: usize,
    provider_latency: Duration,
    steady: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options {
            credentials: 1_000,
            unrelated_secrets: 1_000,
            unrelated_kib: 64,
            rotations: 100,
            provider_latency: Duration::ZERO,
            steady: Duration::from_secs(60),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number: u64 = value
                .parse()
                .map_err(|_| format!("{flag}: not a whole number: {value}"))?;
            let n = usize::try_from(number)?;
            match flag.as_str() {
                "--credentials" => o.credentials = n.max(1),
                "--unrelated-secrets" => o.unrelated_secrets = n,
                "--unrelated-kib" => o.unrelated_kib = n,
                "--rotations" => o.rotations = n.max(1),
                "--provider-latency-ms" => o.provider_latency = Duration::from_millis(number),
                "--steady-s" => o.steady = Duration::from_secs(number.max(60)),
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        Ok(o)
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (v.len() as f64)).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Resident memory of a process, in MiB, from /proc.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU seconds (user + system) a process has used so far, from /proc (0 when it is gone).
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) are space-separated; utime and
    // stime are fields 14 and 15 of the whole line, in clock ticks (100 per second on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The pids of this process's children whose command name is `name` (kube-apiserver and
/// etcd of the control plane the bench started; not those of anything else on the machine).
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id().to_string();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let named = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == name);
            // The parent pid is the second field after the command name.
            let ours = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                    .unwrap_or(false)
            });
            named && ours
        })
        .collect()
}

/// CPU seconds used so far by the operator and, on a real control plane, by kube-apiserver
/// and etcd.
fn cpu_split(operator: u32) -> [f64; 3] {
    let sum = |name: &str| pids_named(name).into_iter().map(cpu_s).sum::<f64>();
    [cpu_s(operator), sum("kube-apiserver"), sum("etcd")]
}

fn credential(name: &str, endpoint: &str, interval: Duration) -> ConnectorCredential {
    serde_json::from_value(json!({
        "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
        "metadata": {"name": name},
        "spec": {"provider": "procore", "auth": "ClientCredentials",
                 "secretRef": {"name": format!("{name}-src")}, "endpoint": endpoint,
                 "params": {"companyId": "1234"},
                 "validation": {"interval": format!("{}s", interval.as_secs())}},
    }))
    .expect("a valid ConnectorCredential")
}

fn source(name: &str, client: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-src")},
        "stringData": {"client_id": client, "client_secret": format!("{client}-secret")},
    }))
    .expect("a valid Secret")
}

/// The operator: the code `reconnect-operator run` runs, in this child process.
/// With `--features dhat-heap`, the operator child records every allocation; the bench asks
/// it (SIGUSR1) to write `dhat-heap.json` once it has measured the steady-state RSS, so the
/// profile's end state is the heap at steady state.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn operator_child(args: &[String]) -> Result<()> {
    let [kubeconfig, namespace, metrics_addr] = args else {
        return Err("--operator-child KUBECONFIG NAMESPACE METRICS_ADDR".into());
    };
    reconnect_operator::telemetry::init(
        reconnect_operator::telemetry::LogFormat::Text,
        "warn,kube=warn",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    #[cfg(feature = "dhat-heap")]
    {
        let profiler = dhat::Profiler::new_heap();
        runtime.spawn(async move {
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                    .expect("SIGUSR1 handler");
            usr1.recv().await;
            drop(profiler);
            eprintln!("bench: heap profile written to dhat-heap.json");
        });
    }
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let options = reconnect_operator::operator::Options {
            namespaces: vec![namespace.clone()],
            metrics_addr: metrics_addr.parse()?,
            leader_election: false,
            lease_name: "reconnect-operator".into(),
            lease_namespace: None,
            identity: "bench".into(),
            lease_duration: Duration::from_secs(15),
            restart_debounce: Duration::from_secs(10),
            max_concurrent_reconciles: reconnect_operator::controller::DEFAULT_CONCURRENCY,
            max_concurrent_rollouts:
                reconnect_operator::controller::integration::DEFAULT_MAX_CONCURRENT_ROLLOUTS,
            rollout_hold: reconnect_operator::controller::integration::DEFAULT_ROLLOUT_HOLD,
        };
        reconnect_operator::operator::run(client, options, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}

/// Creates `items` with at most [`CONCURRENCY`] requests in flight.
async fn create_all<K>(api: &Api<K>, items: Vec<K>) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let results: Vec<_> = futures::stream::iter(items)
        .map(|item| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &item).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

async fn connected(creds: &Api<ConnectorCredential>) -> Result<usize> {
    Ok(creds
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|c| c.status.as_ref().and_then(|s| s.phase) == Some(Phase::Connected))
        .count())
}

/// The revision a target Secret carries.
async fn revision(secrets: &Api<Secret>, target: &str) -> Result<Option<String>> {
    Ok(secrets
        .get(target)
        .await?
        .metadata
        .annotations
        .and_then(|a| a.get(REVISION_ANNOTATION).cloned()))
}

/// resourceVersions of every Secret and ConnectorCredential in the namespace.
async fn versions(
    secrets: &Api<Secret>,
    creds: &Api<ConnectorCredential>,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in secrets.list_metadata(&ListParams::default()).await?.items {
        let name = format!("secret/{}", s.metadata.name.unwrap_or_default());
        out.insert(name, s.metadata.resource_version.unwrap_or_default());
    }
    for c in creds.list(&ListParams::default()).await?.items {
        let name = format!("credential/{}", c.metadata.name.clone().unwrap_or_default());
        out.insert(name, c.metadata.resource_version.unwrap_or_default());
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("--operator-child") {
        operator_child(&args[1..])
    } else {
        match Options::parse(&args) {
            Ok(options) => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(Into::into)
                .and_then(|rt| rt.block_on(bench(options))),
            Err(e) => Err(e),
        }
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Kills the operator child when the bench ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(o: Options) -> Result<()> {
    let cluster = test_cluster().await;
    let backend = cluster.backend();
    let served = match &cluster.standin {
        Some(standin) => Some(standin.serve().await?),
        None => None,
    };
    let kubeconfig: PathBuf = match (&served, cluster.kubeconfig()) {
        (Some(served), _) => served.kubeconfig().to_path_buf(),
        (None, Some(path)) => path.to_path_buf(),
        (None, None) => return Err("a real cluster without a kubeconfig".into()),
    };
    let ns = cluster.namespace.clone();
    let client = cluster.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds: Api<ConnectorCredential> = Api::namespaced(client.clone(), &ns);

    let emu = ProcoreEmulator::start().await;
    emu.add_account(Account::new("1", "svc@acme.com").with_permissions(["company:1234"]));
    for client in ["a", "b"] {
        emu.add_client(client, &format!("{client}-secret"), Some("1"));
    }
    if !o.provider_latency.is_zero() {
        emu.fail_next(usize::MAX, Fault::Latency(o.provider_latency));
    }
    let names: Vec<String> = (0..o.credentials).map(|i| format!("c{i:05}")).collect();
    eprintln!(
        "bench: {backend} backend, {} credentials, creating them",
        o.credentials
    );
    create_all(&secrets, names.iter().map(|n| source(n, "a")).collect()).await?;
    create_all(
        &creds,
        names
            .iter()
            .map(|n| credential(n, &emu.base_url(), o.steady))
            .collect(),
    )
    .await?;

    // Cold start.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // The control plane's CPU so far (the operator starts from zero).
    let cpu_before = cpu_split(0);
    let started = Instant::now();
    let child = Child(
        std::process::Command::new(std::env::current_exe()?)
            .args([
                "--operator-child",
                &kubeconfig.to_string_lossy(),
                &ns,
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .spawn()?,
    );
    let pid = child.0.id();
    loop {
        let n = connected(&creds).await?;
        if n == o.credentials {
            break;
        }
        if started.elapsed() > Duration::from_secs(3_600) {
            return Err(format!("only {n} of {} Connected after an hour", o.credentials).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cold = started.elapsed();
    let cpu_after = cpu_split(pid);
    let cpu: Vec<f64> = (0..3).map(|i| cpu_after[i] - cpu_before[i]).collect();
    let cold_per_s = o.credentials as f64 / cold.as_secs_f64();
    eprintln!("bench: all Connected after {:.1} s", cold.as_secs_f64());

    // Memory at steady state, then with unrelated Secrets. Steady: the burst is over and the
    // operator's memory upkeep has run at least once since (it hands freed heap pages back
    // every `memory::TRIM_EVERY`); the figure kept is the larger of this and the RSS at the
    // end of the steady interval below.
    tokio::time::sleep(reconnect_operator::memory::TRIM_EVERY + Duration::from_secs(2)).await;
    let rss_after_cold = rss_mib(pid);
    #[cfg(feature = "dhat-heap")]
    {
        std::process::Command::new("kill")
            .args(["-USR1", &pid.to_string()])
            .status()?;
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let filler = "x".repeat(o.unrelated_kib * 1024);
    let unrelated: Vec<Secret> = (0..o.unrelated_secrets)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("unrelated-{i:05}")},
                "stringData": {"blob": filler},
            }))
            .expect("a valid Secret")
        })
        .collect();
    create_all(&secrets, unrelated).await?;
    tokio::time::sleep(reconnect_operator::memory::TRIM_EVERY + Duration::from_secs(2)).await;
    let rss_unrelated = rss_mib(pid);

    // Rotations under load, and the floor.
    let mut rotation_ms = Vec::with_capacity(o.rotations);
    for i in 0..o.rotations {
        let name = &names[i % names.len()];
        let target_name = format!("{name}-active");
        let before = revision(&secrets, &target_name).await?;
        // Alternate between the two clients, so each rotation is a new revision.
        let round = i / names.len();
        let next = if round.is_multiple_of(2) { "b" } else { "a" };
        let t = Instant::now();
        secrets
            .patch(
                &format!("{name}-src"),
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"client_id": next, "client_secret": format!("{next}-secret")}})),
            )
            .await?;
        loop {
            let now = revision(&secrets, &target_name).await?;
            if now.is_some() && now != before {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                return Err(format!("rotation {i} of {name} not swapped in 120 s").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rotation_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut floor_ms = Vec::with_capacity(o.rotations);
    for i in 0..o.rotations {
        let name = &names[i % names.len()];
        let t = Instant::now();
        let cred = creds.get(name).await?;
        let _source = secrets.get(&format!("{name}-src")).await?;
        let mut target = secrets.get(&format!("{name}-active")).await?;
        target
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("bench.reconnect.dev/floor".into(), i.to_string());
        target.metadata.managed_fields = None;
        secrets
            .replace(&format!("{name}-active"), &PostParams::default(), &target)
            .await?;
        let phase = cred.status.as_ref().and_then(|s| s.phase);
        creds
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": phase}})),
            )
            .await?;
        floor_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Steady state over one validation interval. A credential's first probe after its
    // validation falls in its own slot, between half an interval and one and a half
    // intervals later; from half an interval after the last change on, every window one
    // interval long holds exactly one probe slot of each credential.
    tokio::time::sleep(o.steady / 2 + Duration::from_secs(5)).await;
    // Listing every object to take their versions is heavy work for the in-process stand-in:
    // the probes are counted over one interval strictly inside the writes' window, away from
    // the lists, so that probes the lists delay across an edge of the window are not counted
    // twice.
    let before = versions(&secrets, &creds).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let probes_before = emu.count("/oauth/token");
    tokio::time::sleep(o.steady).await;
    let probes = emu.count("/oauth/token") - probes_before;
    let rss_steady = rss_mib(pid);
    let rss = rss_after_cold.max(rss_steady);
    let after = versions(&secrets, &creds).await?;
    let writes = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .count();
    drop(child);

    let rows = [
        ("backend", backend.to_string()),
        ("credentials", o.credentials.to_string()),
        (
            "cold start",
            format!("{:.1} s, {cold_per_s:.1} credentials/s", cold.as_secs_f64()),
        ),
        (
            "CPU during the cold start",
            match backend {
                reconnect_apiserver::Backend::Real => format!(
                    "operator {:.1} s, kube-apiserver {:.1} s, etcd {:.1} s",
                    cpu[0], cpu[1], cpu[2]
                ),
                reconnect_apiserver::Backend::Standin => format!("operator {:.1} s", cpu[0]),
            },
        ),
        (
            "operator RSS",
            format!(
                "{rss:.1} MiB (after the cold start {rss_after_cold:.1}, after the steady interval {rss_steady:.1})"
            ),
        ),
        (
            "unrelated Secrets",
            format!(
                "{} x {} KiB: RSS +{:.1} MiB",
                o.unrelated_secrets,
                o.unrelated_kib,
                rss_unrelated - rss_after_cold
            ),
        ),
        (
            "rotation (update -> swapped)",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms ({} rotations)",
                percentile(&rotation_ms, 50.0),
                percentile(&rotation_ms, 99.0),
                o.rotations
            ),
        ),
        (
            "floor (same API calls, plain client)",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms",
                percentile(&floor_ms, 50.0),
                percentile(&floor_ms, 99.0)
            ),
        ),
        (
            "steady interval",
            format!(
                "{} s: {writes} objects written, {probes} token requests",
                o.steady.as_secs()
            ),
        ),
        (
            "provider latency",
            format!("{} ms", o.provider_latency.as_millis()),
        ),
    ];
    for (what, figure) in rows {
        println!("{what:<38} {figure}");
    }
    println!(
        "bench: credentials={} cold_start_per_s={cold_per_s:.1} rotation_p50_ms={:.1} rotation_p99_ms={:.1} floor_p50_ms={:.1} floor_p99_ms={:.1} rss_mib={rss:.1} unrelated_secrets_rss_delta_mib={:.1} steady_api_writes={writes} probes_per_interval={probes}",
        o.credentials,
        percentile(&rotation_ms, 50.0),
        percentile(&rotation_ms, 99.0),
        percentile(&floor_ms, 50.0),
        percentile(&floor_ms, 99.0),
        rss_unrelated - rss_after_cold,
    );
    cluster.cleanup().await;
    drop(served);
    Ok(())
}
