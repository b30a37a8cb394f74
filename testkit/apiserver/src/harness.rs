//! The switch every end-to-end test starts from, and a fresh, uniquely named namespace for
//! each test. In order of precedence:
//!
//! 1. `RECONNECT_TEST_KUBECONFIG` names a kubeconfig: that cluster (kind, k3d, ...).
//! 2. `KUBEBUILDER_ASSETS` names a folder holding `kube-apiserver` and `etcd`: a real control
//!    plane started once per test process (see `envtest.rs`).
//! 3. Otherwise the in-memory stand-in, with the repo's CRDs registered.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};

use crate::{ApiServer, envtest, scratch};

/// Environment variable naming a kubeconfig for a real cluster to test against. Takes
/// precedence over [`ASSETS_ENV`].
pub const KUBECONFIG_ENV: &str = "RECONNECT_TEST_KUBECONFIG";

pub use crate::envtest::ASSETS_ENV;

/// Environment variable naming a file to which every skipped test appends one line,
/// `<backend>\t<test>\t<reason>` (see [`TestCluster::standin_or_skip`]).
pub const SKIP_LOG_ENV: &str = "RECONNECT_TEST_SKIP_LOG";

/// Label on every namespace the harness creates, so leftovers can be cleaned up in bulk.
pub const TEST_NAMESPACE_LABEL: &str = "reconnect.dev/test-namespace";

/// Which kind of API server the tests of this process run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory stand-in ([`ApiServer`]).
    Standin,
    /// A real kube-apiserver: the cluster `RECONNECT_TEST_KUBECONFIG` names, or the control
    /// plane started from `KUBEBUILDER_ASSETS`.
    Real,
}

impl Backend {
    /// `standin` or `real`, as the skip log and CI summaries name backends.
    pub fn name(self) -> &'static str {
        match self {
            Self::Standin => "standin",
            Self::Real => "real",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend [`test_cluster`] would use in this process, from the environment alone
/// (nothing is started).
///
/// # Panics
/// When `KUBEBUILDER_ASSETS` is set but holds no `kube-apiserver` or `etcd`.
pub fn backend() -> Backend {
    if std::env::var_os(KUBECONFIG_ENV).is_some() || envtest::assets().is_some() {
        Backend::Real
    } else {
        Backend::Standin
    }
}

/// A cluster for one test.
pub struct TestCluster {
    /// Client for the cluster; its default namespace is [`TestCluster::namespace`].
    pub client: kube::Client,
    /// A fresh namespace created for this test.
    pub namespace: String,
    /// The stand-in, for request logs and fault injection; `None` on a real cluster.
    pub standin: Option<ApiServer>,
    /// The admin kubeconfig on a real cluster.
    kubeconfig: Option<PathBuf>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("backend", &self.backend())
            .field("namespace", &self.namespace)
            .field("kubeconfig", &self.kubeconfig)
            .finish()
    }
}

/// Starts a [`TestCluster`]: see [`TestCluster::start`].
pub async fn test_cluster() -> TestCluster {
    TestCluster::start().await
}

/// The repo's generated CRDs.
pub fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds")
}

/// How long the process's control plane (from `KUBEBUILDER_ASSETS`) took to start, once it
/// has been started; `None` otherwise.
pub fn control_plane_startup() -> Option<std::time::Duration> {
    envtest::started().map(|plane| plane.startup)
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

/// A client from a kubeconfig, its default namespace `namespace`.
async fn client_from(kubeconfig: Kubeconfig, namespace: &str) -> Result<kube::Client, String> {
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    config.default_namespace = namespace.to_string();
    // Tests see the server's answers as they are, as they do on the stand-in (whose client
    // has no retry layer): kube's default layer retries 429/503/504 up to 15 times, which
    // turns an expected 504 into minutes of waiting.
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// The kubeconfig with its current context's user replaced by a bearer token.
fn with_token(admin: &Path, token: &str, namespace: &str) -> Result<Kubeconfig, String> {
    let config = Kubeconfig::read_from(admin).map_err(|e| format!("{}: {e}", admin.display()))?;
    let context_name = config
        .current_context
        .clone()
        .ok_or_else(|| format!("{}: no current-context", admin.display()))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| format!("{}: no context {context_name}", admin.display()))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .cloned()
        .ok_or_else(|| format!("{}: no cluster {}", admin.display(), context.cluster))?;
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "token", "context": {"cluster": cluster.name, "user": "token", "namespace": namespace}}],
        "current-context": "token",
    }))
    .map_err(|e| e.to_string())
}

impl TestCluster {
    /// Connects to the cluster `RECONNECT_TEST_KUBECONFIG` names (applying the repo's CRDs
    /// there), or to the process's control plane from `KUBEBUILDER_ASSETS` (starting it on
    /// first use), or starts a stand-in with the CRDs registered; then creates a fresh
    /// namespace.
    ///
    /// # Panics
    /// When the cluster cannot be reached or set up: the test cannot run.
    pub async fn start() -> Self {
        let namespace = unique_namespace();
        let (client, standin, kubeconfig) = if let Some(path) = std::env::var_os(KUBECONFIG_ENV) {
            let path = PathBuf::from(path);
            let kubeconfig =
                Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("{KUBECONFIG_ENV}: {e}"));
            let client = client_from(kubeconfig, &namespace)
                .await
                .unwrap_or_else(|e| panic!("{KUBECONFIG_ENV}: {e}"));
            install_crds(&client)
                .await
                .unwrap_or_else(|e| panic!("{KUBECONFIG_ENV}: {e}"));
            (client, None, Some(path))
        } else if let Some(assets) = envtest::assets() {
            let plane = tokio::task::spawn_blocking(move || envtest::shared(&assets))
                .await
                .expect("the control plane start does not panic")
                .unwrap_or_else(|e| panic!("{e}"));
            let kubeconfig = Kubeconfig::read_from(&plane.kubeconfig)
                .unwrap_or_else(|e| panic!("{}: {e}", plane.kubeconfig.display()));
            let client = client_from(kubeconfig, &namespace)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", plane.kubeconfig.display()));
            (client, None, Some(plane.kubeconfig.clone()))
        } else {
            let standin = ApiServer::new();
            standin
                .register_crds_from_dir(crds_dir())
                .expect("the repo's CRDs register");
            (
                kube::Client::new(standin.clone(), namespace.clone()),
                Some(standin),
                None,
            )
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
            kubeconfig,
        }
    }

    /// Which backend this cluster is.
    pub fn backend(&self) -> Backend {
        if self.standin.is_some() {
            Backend::Standin
        } else {
            Backend::Real
        }
    }

    /// The admin kubeconfig of a real cluster, for processes the test starts (the operator
    /// binary, kubectl): the file `RECONNECT_TEST_KUBECONFIG` names, or the one written for
    /// the control plane from `KUBEBUILDER_ASSETS` (user `admin` in `system:masters`;
    /// removed when the test process ends). Its context's namespace is not the test's: pass
    /// `-n`/`--namespace`. `None` on the stand-in, which [`ApiServer::serve`] serves with a
    /// kubeconfig of its own.
    pub fn kubeconfig(&self) -> Option<&Path> {
        self.kubeconfig.as_deref()
    }

    /// A client that authenticates with `token` (e.g. a ServiceAccount token from
    /// [`TestCluster::service_account_token`]) instead of the admin identity, default
    /// namespace the test's. On the stand-in, which has no authentication or authorization,
    /// a client like [`TestCluster::client`].
    ///
    /// # Panics
    /// When the kubeconfig cannot be read.
    pub async fn client_for_token(&self, token: &str) -> kube::Client {
        match &self.kubeconfig {
            None => kube::Client::new(
                self.standin.clone().expect("stand-in without kubeconfig"),
                self.namespace.clone(),
            ),
            Some(admin) => {
                let config = with_token(admin, token, &self.namespace)
                    .unwrap_or_else(|e| panic!("kubeconfig for a token: {e}"));
                client_from(config, &self.namespace)
                    .await
                    .unwrap_or_else(|e| panic!("client for a token: {e}"))
            }
        }
    }

    /// Writes a kubeconfig for the same cluster as [`TestCluster::kubeconfig`] whose user
    /// authenticates with `token` (context namespace: the test's), for processes that should
    /// run under another identity, like the operator with its Helm chart's ServiceAccount.
    /// The file lives in the process's scratch directory and is removed when the test
    /// process ends. `None` on the stand-in (no authentication; serve it with
    /// [`ApiServer::serve`] instead).
    ///
    /// # Panics
    /// When the kubeconfig cannot be read or written.
    pub fn kubeconfig_for_token(&self, token: &str) -> Option<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let admin = self.kubeconfig.as_ref()?;
        let config = with_token(admin, token, &self.namespace)
            .unwrap_or_else(|e| panic!("kubeconfig for a token: {e}"));
        let dir = scratch::dir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join(format!(
            "{}-token-{}.kubeconfig",
            self.namespace,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let text = serde_json::to_string_pretty(&config).expect("kubeconfig serializes");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some(path)
    }

    /// A bearer token for a ServiceAccount, from the TokenRequest API (what
    /// `kubectl create token <name> -n <namespace>` does), valid for an hour. Real clusters
    /// only: the stand-in serves no ServiceAccounts.
    ///
    /// # Panics
    /// On the stand-in, or when the token request fails (e.g. the ServiceAccount is absent).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        assert!(
            self.standin.is_none(),
            "service_account_token needs a real cluster; skip with real_or_skip"
        );
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [], "expirationSeconds": 3600},
        }))
        .expect("static token request");
        accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for ServiceAccount {namespace}/{name}: {e}"))
            .status
            .map(|s| s.token)
            .unwrap_or_else(|| panic!("token for ServiceAccount {namespace}/{name}: no status"))
    }

    /// The stand-in for a test that needs fault injection or the request log; on a real
    /// cluster notes the skip (see [`TestCluster::skip`]) and returns `None`.
    pub fn standin_or_skip(&self, test: &str) -> Option<&ApiServer> {
        if self.standin.is_none() {
            self.skip(
                test,
                "it needs the stand-in's fault injection or request log",
            );
        }
        self.standin.as_ref()
    }

    /// For a test that needs what only a real cluster has (authentication and RBAC,
    /// TokenRequest, the controller manager's controllers): `true` on a real cluster; on the
    /// stand-in notes the skip (see [`TestCluster::skip`]) and returns `false`.
    pub fn real_or_skip(&self, test: &str) -> bool {
        if self.standin.is_some() {
            self.skip(test, "it needs a real cluster");
        }
        self.standin.is_none()
    }

    /// Notes that `test` is skipped on this backend and why: prints a line, and when
    /// `RECONNECT_TEST_SKIP_LOG` names a file appends `<backend>\t<test>\t<reason>` to it
    /// (one `write` per line on a file opened for appending, so concurrent test processes
    /// do not interleave), for per-backend "ran / skipped" counts.
    pub fn skip(&self, test: &str, reason: &str) {
        let backend = self.backend();
        println!("skipping {test} on the {backend} backend: {reason}");
        if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
            append_skip(Path::new(&path), backend, test, reason)
                .unwrap_or_else(|e| panic!("{SKIP_LOG_ENV}={}: {e}", Path::new(&path).display()));
        }
    }

    /// Deletes the test namespace (and with it everything the test created; on a real
    /// cluster the namespace controller empties it in the background).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

/// Appends `<backend>\t<test>\t<reason>` to the skip log in one `write` on a file opened
/// with `O_APPEND`, so lines from concurrent tests and processes never interleave.
fn append_skip(path: &Path, backend: Backend, test: &str, reason: &str) -> std::io::Result<()> {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let line = format!("{backend}\t{}\t{}\n", clean(test), clean(reason));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// Server-side-applies the repo's CRDs and waits until each is established.
pub(crate) async fn install_crds(client: &kube::Client) -> Result<(), String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = crds_dir();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("reconnect-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| format!("applying CRD {name}: {e}"))?;
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| format!("CRD {name} not established within 30s"))?
        .map_err(|e| format!("waiting for CRD {name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_skips_append_whole_lines() {
        let path = scratch::dir().unwrap().join("skip-log-test");
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let path = &path;
                scope.spawn(move || {
                    for i in 0..50 {
                        append_skip(
                            path,
                            Backend::Real,
                            &format!("t{thread}-{i}"),
                            "a\treason\n",
                        )
                        .unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 400);
        assert!(
            lines.iter().all(|l| {
                let fields: Vec<&str> = l.split('\t').collect();
                fields.len() == 3 && fields[0] == "real" && fields[2] == "a reason "
            }),
            "{text}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
