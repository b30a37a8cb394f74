//! The test harness itself: backend selection, other identities on a real cluster (RBAC is
//! enforced), and that a killed test process leaves no files or processes behind.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use reconnect_apiserver::{ASSETS_ENV, Backend, KUBECONFIG_ENV, backend, test_cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_backend_follows_the_environment() {
    let cluster = test_cluster().await;
    let expected = if std::env::var_os(KUBECONFIG_ENV).is_some()
        || std::env::var_os(ASSETS_ENV).is_some_and(|v| !v.is_empty())
    {
        Backend::Real
    } else {
        Backend::Standin
    };
    assert_eq!(backend(), expected);
    assert_eq!(cluster.backend(), expected);
    assert_eq!(cluster.backend().name(), expected.to_string());
    match expected {
        Backend::Standin => {
            assert!(cluster.standin.is_some() && cluster.kubeconfig().is_none());
            assert!(cluster.kubeconfig_for_token("any").is_none());
        }
        Backend::Real => {
            assert!(cluster.standin.is_none());
            let kubeconfig = cluster
                .kubeconfig()
                .expect("a real cluster has a kubeconfig");
            // The admin kubeconfig works for a fresh client.
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
                &Default::default(),
            )
            .await
            .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            Api::<Secret>::namespaced(client, &cluster.namespace)
                .list(&ListParams::default())
                .await
                .unwrap();
        }
    }
    cluster.cleanup().await;
}

/// The operator runs with its chart's ServiceAccount and RBAC on a real cluster; this is the
/// machinery for that: a TokenRequest token, a client and a kubeconfig for it, and RBAC that
/// refuses until a Role grants.
#[tokio::test]
async fn a_service_account_token_identity_is_subject_to_rbac() {
    let cluster = test_cluster().await;
    if !cluster.real_or_skip("a_service_account_token_identity_is_subject_to_rbac") {
        return;
    }
    let ns = cluster.namespace.clone();
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
    Api::<ServiceAccount>::namespaced(cluster.client.clone(), &ns)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let token = cluster.service_account_token(&ns, "robot").await;
    let robot = cluster.client_for_token(&token).await;
    let robot_secrets: Api<Secret> = Api::default_namespaced(robot);
    match robot_secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
            assert!(
                status
                    .message
                    .contains(&format!("system:serviceaccount:{ns}:robot")),
                "{}",
                status.message
            );
        }
        other => panic!("expected 403 Forbidden before any Role, got {other:?}"),
    }
    let role: Role = serde_json::from_value(json!({"metadata": {"name": "read-secrets"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}))
    .unwrap();
    Api::<Role>::namespaced(cluster.client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "robot-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": ns}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(cluster.client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The authorizer learns about new bindings through a watch: wait for it, bounded.
    tokio::time::timeout(WAIT, async {
        while robot_secrets.list(&ListParams::default()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the Role grants list within the timeout");

    let kubeconfig = cluster
        .kubeconfig_for_token(&token)
        .expect("a real cluster writes token kubeconfigs");
    if kubectl_available() {
        let whoami = |kubeconfig: PathBuf| {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new("kubectl")
                    .args([
                        "auth",
                        "whoami",
                        "-o",
                        "jsonpath={.status.userInfo.username}",
                    ])
                    .env("KUBECONFIG", kubeconfig)
                    .output()
                    .expect("kubectl runs");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            })
        };
        assert_eq!(
            whoami(kubeconfig).await.unwrap(),
            format!("system:serviceaccount:{ns}:robot")
        );
        if std::env::var_os(KUBECONFIG_ENV).is_none() {
            let admin = cluster.kubeconfig().unwrap().to_path_buf();
            assert_eq!(whoami(admin).await.unwrap(), "admin");
        }
    } else {
        // Without kubectl, read the file back with kube.
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(config.default_namespace, ns);
    }
    cluster.cleanup().await;
}

fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether any process's command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            // Zombies have an empty command line; they are dead already.
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Runs in a child process of `killing_the_test_process_leaves_nothing_behind`: starts a
/// cluster (and on the stand-in serves it, which writes a kubeconfig), reports where its files
/// are, then waits to be killed.
#[tokio::test]
#[ignore = "started (and killed) by killing_the_test_process_leaves_nothing_behind"]
async fn holds_a_cluster_until_killed() {
    let cluster = test_cluster().await;
    let served;
    let file = match &cluster.standin {
        Some(standin) => {
            served = standin.serve().await.unwrap();
            served.kubeconfig().to_path_buf()
        }
        None => cluster.kubeconfig().unwrap().to_path_buf(),
    };
    println!("READY {}", file.display());
    tokio::time::sleep(Duration::from_secs(600)).await;
    panic!("not killed within 10 minutes");
}

/// The scratch directory holding a file the harness wrote.
fn scratch_dir_of(file: &Path) -> PathBuf {
    file.ancestors()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("reconnect-test-"))
        })
        .unwrap_or_else(|| panic!("{} is not in a scratch directory", file.display()))
        .to_path_buf()
}

#[tokio::test]
async fn killing_the_test_process_leaves_nothing_behind() {
    if std::env::var_os(KUBECONFIG_ENV).is_some() {
        // Nothing is started for an external cluster; the stand-in and control-plane cases
        // are what this covers.
        let cluster = test_cluster().await;
        cluster.skip(
            "killing_the_test_process_leaves_nothing_behind",
            "an external cluster starts no local processes",
        );
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "holds_a_cluster_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed however this test ends, so that a failure here does not wait for the child.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints `test <name> ... ` before the test's own output on the same line.
            .find_map(|line| {
                line.split_once("READY ")
                    .map(|(_, f)| PathBuf::from(f.trim()))
            })
    });
    let file = tokio::time::timeout(Duration::from_secs(180), ready)
        .await
        .expect("the child reports its cluster within 3 minutes")
        .unwrap()
        .expect("the child reports READY");
    let dir = scratch_dir_of(&file);
    assert!(file.is_file() && dir.is_dir());
    let needle = dir.to_string_lossy().to_string();
    let started = processes_mentioning(&needle);
    if backend() == Backend::Real {
        assert!(
            started.len() >= 2,
            "etcd and kube-apiserver run from {needle}: {started:?}"
        );
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_mentioning(&needle);
        if !dir.exists() && left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGKILL: {} exists: {}, processes left: {left:?}",
            dir.display(),
            dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
