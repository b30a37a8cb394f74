//! The install paths on a real API server, as a user takes them: `kubectl apply
//! --server-side -f crds/`, `helm install` (with the helm binary CI installs), the chart as
//! helm renders it (`tests/fixtures/chart-default.yaml`,
//! which `.ci/chart-check` keeps equal to `helm template`) applied server-side, and the
//! operator binary run the way the chart's Deployment runs it: its arguments and environment,
//! the chart's ServiceAccount (a TokenRequest token, like `kubectl create token`) and nothing
//! but the chart's RBAC. It connects a credential, swaps in a rotated one and rolls an
//! Integration's Deployment, and no request is refused.
//!
//! Needs authentication and RBAC, so a real cluster: skipped (with a note) on the stand-in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use reconnect_apiserver::test_cluster;
use reconnect_emulators::{Account, ProcoreEmulator};
use reconnect_operator::api::{ConnectorCredential, Integration, Phase};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);
/// Where `helm template reconnect charts/reconnect-operator --namespace reconnect-system`
/// puts the operator.
const RELEASE_NAMESPACE: &str = "reconnect-system";
const DEPLOYMENT: &str = "reconnect-reconnect-operator";
const SERVICE_ACCOUNT: &str = "reconnect-reconnect-operator";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `program` (kubectl, helm) against `kubeconfig`; its output, or a panic with it when
/// it fails.
fn run_tool(program: &std::ffi::OsStr, kubeconfig: &Path, args: &[&str]) -> String {
    let name = program.to_string_lossy();
    let out = std::process::Command::new(program)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {}: {text}", args.join(" "));
    text
}

/// Runs kubectl (on every machine this project supports) against `kubeconfig`.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    run_tool("kubectl".as_ref(), kubeconfig, args)
}

/// `helm install` of the chart as a second release (its own namespace, no aggregated roles,
/// which are cluster-wide and already installed above), when `RECONNECT_HELM` names a helm
/// binary (`.ci/run` sets it to the one `.ci/chart-check` installs), then `helm uninstall`.
fn helm_install(kubeconfig: &Path) {
    let Some(helm) = std::env::var_os("RECONNECT_HELM") else {
        println!("helm install not tried: RECONNECT_HELM names no helm binary (CI sets it)");
        return;
    };
    let chart = repo("charts/reconnect-operator");
    let run = |args: &[&str]| run_tool(&helm, kubeconfig, args);
    let chart = chart.to_string_lossy();
    let installed = run(&[
        "install",
        "second",
        &chart,
        "--namespace",
        "reconnect-helm",
        "--create-namespace",
        "--set",
        "rbac.aggregatedRoles=false",
    ]);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    run(&["uninstall", "second", "--namespace", "reconnect-helm"]);
}

/// A plain HTTP/1.1 GET; the status code.
async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw).await;
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    child: &mut std::process::Child,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the operator exited ({status}) while waiting: {what}");
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chart Deployment's container command line and environment, with `$(VAR)` references
/// and the downward API resolved as the kubelet would for a pod named `pod`.
fn command_line(deployment: &Deployment, pod: &str) -> (Vec<String>, Vec<(String, String)>) {
    let spec = deployment.spec.as_ref().unwrap().template.spec.as_ref();
    let container = &spec.unwrap().containers[0];
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => RELEASE_NAMESPACE.to_string(),
                Some("metadata.name") => pod.to_string(),
                other => panic!("a downward API field the test does not resolve: {other:?}"),
            },
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    let args = container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            env.iter().fold(arg.clone(), |a, (name, value)| {
                a.replace(&format!("$({name})"), value)
            })
        })
        .collect();
    (args, env)
}

#[tokio::test]
async fn the_chart_installs_server_side_and_its_rbac_is_all_the_operator_needs() {
    let cluster = test_cluster().await;
    if !cluster
        .real_or_skip("the_chart_installs_server_side_and_its_rbac_is_all_the_operator_needs")
    {
        return;
    }
    let admin = cluster
        .kubeconfig()
        .expect("a real cluster has a kubeconfig");

    // 1. The CRDs, as the README says (the harness installed them already: a re-apply by
    //    another manager with the same content must not conflict).
    kubectl(
        admin,
        &[
            "apply",
            "--server-side",
            "-f",
            &repo("crds").to_string_lossy(),
        ],
    );
    // 2. The chart as helm renders it: a server-side dry run (every object admitted), then
    //    for real.
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    if namespaces
        .get_opt(RELEASE_NAMESPACE)
        .await
        .unwrap()
        .is_none()
    {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": RELEASE_NAMESPACE}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }
    let rendered = repo("tests/fixtures/chart-default.yaml");
    let rendered = rendered.to_string_lossy();
    kubectl(
        admin,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            &rendered,
        ],
    );
    kubectl(admin, &["apply", "--server-side", "-f", &rendered]);
    helm_install(admin);

    // 3. The operator as the chart runs it, as the chart's ServiceAccount.
    let deployment = Api::<Deployment>::namespaced(cluster.client.clone(), RELEASE_NAMESPACE)
        .get(DEPLOYMENT)
        .await
        .unwrap();
    let (mut args, env) = command_line(&deployment, "reconnect-operator-test-pod");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    for arg in &mut args {
        if arg.starts_with("--metrics-addr=") {
            *arg = format!("--metrics-addr={addr}");
        }
    }
    assert!(
        args.iter()
            .any(|a| a.starts_with("--metrics-addr=127.0.0.1")),
        "the chart sets --metrics-addr: {args:?}"
    );
    let token = cluster
        .service_account_token(RELEASE_NAMESPACE, SERVICE_ACCOUNT)
        .await;
    let kubeconfig = cluster.kubeconfig_for_token(&token).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
        .args(&args)
        .envs(env)
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained as it comes, so the pipe never fills.
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });

    // 4. Connect, rotate, roll.
    let ns = &cluster.namespace;
    let emu = ProcoreEmulator::start().await;
    emu.add_account(Account::new("4567", "svc-sync@acme.com").with_permissions(["company:1234"]));
    emu.add_client("dmsa-1", "secret-1", Some("4567"));
    emu.add_client("dmsa-2", "secret-2", Some("4567"));
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    let source = |id: &str, secret: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "procore-src"},
               "stringData": {"client_id": id, "client_secret": secret}})
    };
    let apply = PatchParams::apply("chart-install-test");
    secrets
        .patch(
            "procore-src",
            &apply,
            &Patch::Apply(source("dmsa-1", "secret-1")),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let workload: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "sync-engine"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sync-engine"}},
                 "template": {"metadata": {"labels": {"app": "sync-engine"}},
                              "spec": {"containers": [{"name": "sync", "image": "example/sync:1.0"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &workload)
        .await
        .unwrap();
    let creds: Api<ConnectorCredential> = Api::namespaced(cluster.client.clone(), ns);
    creds
        .patch(
            "procore-sync",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
                "metadata": {"name": "procore-sync"},
                "spec": {"provider": "procore", "auth": "ClientCredentials",
                         "secretRef": {"name": "procore-src"}, "endpoint": emu.base_url(),
                         "params": {"companyId": "1234"}},
            })),
        )
        .await
        .unwrap();
    let integrations: Api<Integration> = Api::namespaced(cluster.client.clone(), ns);
    integrations
        .patch(
            "procore-sync",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "reconnect.dev/v1alpha1", "kind": "Integration",
                "metadata": {"name": "procore-sync"},
                "spec": {"connectors": [{"name": "procore", "credentialRef": {"name": "procore-sync"}}],
                         "restartTargets": [{"kind": "Deployment", "name": "sync-engine"}]},
            })),
        )
        .await
        .unwrap();
    let revision = || async {
        creds
            .get_opt("procore-sync")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status)
            .filter(|s| s.phase == Some(Phase::Connected))
            .and_then(|s| s.active_revision)
    };
    eventually("the credential Connected", &mut child, || async {
        revision().await.is_some()
    })
    .await;
    let first = revision().await.unwrap();
    eventually("/readyz answers 200", &mut child, || async {
        http_status(addr, "/readyz").await == 200
    })
    .await;
    eventually("the Integration Connected", &mut child, || async {
        integrations
            .get_opt("procore-sync")
            .await
            .ok()
            .flatten()
            .and_then(|i| i.status)
            .and_then(|s| s.phase)
            == Some(Phase::Connected)
    })
    .await;
    secrets
        .patch(
            "procore-src",
            &apply,
            &Patch::Apply(source("dmsa-2", "secret-2")),
        )
        .await
        .unwrap();
    eventually("the rotated credential swapped in", &mut child, || async {
        revision().await.is_some_and(|r| r != first)
    })
    .await;
    let rolled = |d: Option<Deployment>| {
        d.and_then(|d| d.spec?.template.metadata?.annotations)
            .is_some_and(|a| a.contains_key("reconnect.dev/restartedAt"))
    };
    eventually("the Deployment rolled", &mut child, || async {
        rolled(deployments.get_opt("sync-engine").await.ok().flatten())
    })
    .await;
    let target = secrets.get("procore-sync-active").await.unwrap();
    let client_id = target
        .data
        .as_ref()
        .and_then(|d| d.get("client_id"))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    assert_eq!(client_id.as_deref(), Some("dmsa-2"));

    // 5. Stop it; nothing was refused, nothing leaked.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the operator did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = logs.join().unwrap();
    assert!(status.success(), "exit {status:?}; logs:\n{logs}");
    let lower = logs.to_lowercase();
    assert!(
        !lower.contains("forbidden") && !lower.contains("\"403\"") && !lower.contains(" 403"),
        "a request was refused with the chart's RBAC:\n{logs}"
    );
    assert!(
        !logs.contains("secret-1") && !logs.contains("secret-2"),
        "credential material in the logs"
    );
    cluster.cleanup().await;
}
