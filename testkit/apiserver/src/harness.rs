//! The switch every end-to-end test starts from: a real cluster when
//! `RECONNECT_TEST_KUBECONFIG` names a kubeconfig, the in-memory stand-in (with the repo's
//! CRDs) otherwise; either way a fresh, uniquely named namespace for the test.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};

use crate::ApiServer;

/// Environment variable naming a kubeconfig for a real cluster to test against.
pub const KUBECONFIG_ENV: &str = "RECONNECT_TEST_KUBECONFIG";

/// Label on every namespace the harness creates, so leftovers can be cleaned up in bulk.
pub const TEST_NAMESPACE_LABEL: &str = "reconnect.dev/test-namespace";

/// A cluster for one test.
pub struct TestCluster {
    /// Client for the cluster; its default namespace is [`TestCluster::namespace`].
    pub client: kube::Client,
    /// A fresh namespace created for this test.
    pub namespace: String,
    /// The stand-in, for request logs and fault injection; `None` on a real cluster.
    pub standin: Option<ApiServer>,
}

/// Starts a [`TestCluster`]: see [`TestCluster::start`].
pub async fn test_cluster() -> TestCluster {
    TestCluster::start().await
}

/// The repo's generated CRDs.
pub fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds")
}

fn unique_namespace() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "rt-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestCluster {
    /// Connects to the cluster `RECONNECT_TEST_KUBECONFIG` names (applying the repo's CRDs
    /// there), or starts a stand-in with them registered; then creates a fresh namespace.
    ///
    /// # Panics
    /// When the cluster cannot be reached or set up: the test cannot run.
    pub async fn start() -> Self {
        let namespace = unique_namespace();
        let (client, standin) = match std::env::var_os(KUBECONFIG_ENV) {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(&path)
                    .unwrap_or_else(|e| panic!("{KUBECONFIG_ENV}: {e}"));
                let mut config =
                    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                        .await
                        .unwrap_or_else(|e| panic!("{KUBECONFIG_ENV}: {e}"));
                config.default_namespace = namespace.clone();
                let client = kube::Client::try_from(config).expect("client from kubeconfig");
                install_crds(&client).await;
                (client, None)
            }
            None => {
                let standin = ApiServer::new();
                standin
                    .register_crds_from_dir(crds_dir())
                    .expect("the repo's CRDs register");
                (
                    kube::Client::new(standin.clone(), namespace.clone()),
                    Some(standin),
                )
            }
        };
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {TEST_NAMESPACE_LABEL: "true"}}
        }))
        .expect("static namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {namespace}: {e}"));
        Self {
            client,
            namespace,
            standin,
        }
    }

    /// The stand-in for a test that needs fault injection or the request log; on a real
    /// cluster prints why the test is skipped and returns `None`.
    pub fn standin_or_skip(&self, test: &str) -> Option<&ApiServer> {
        if self.standin.is_none() {
            println!(
                "skipping {test}: it needs the stand-in's fault injection or request log ({KUBECONFIG_ENV} is set)"
            );
        }
        self.standin.as_ref()
    }

    /// Deletes the test namespace (and with it everything the test created).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut entries: Vec<_> = std::fs::read_dir(crds_dir())
        .expect("crds/ exists")
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let text = std::fs::read_to_string(entry.path()).expect("readable CRD file");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).expect("valid CRD yaml");
        let name = crd.metadata.name.clone().expect("CRD has a name");
        crds.patch(
            &name,
            &PatchParams::apply("reconnect-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established within 30s"))
        .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
    }
}
