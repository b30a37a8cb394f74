//! In-memory stand-in for kube-apiserver, for end-to-end tests (see README.md beside this
//! crate for what it simplifies).
//!
//! [`ApiServer`] holds the state. Use it as a tower `Service` ([`ApiServer::client`] builds a
//! `kube::Client` with no sockets), or [`ApiServer::serve`] it over plain HTTP on loopback with
//! a kubeconfig for the operator binary and kubectl. [`TestCluster`] is the switch every
//! end-to-end test starts from: the cluster `RECONNECT_TEST_KUBECONFIG` names, else a real
//! control plane started once per test process when `KUBEBUILDER_ASSETS` names a folder with
//! `kube-apiserver` and `etcd` (the envtest convention), else this stand-in.

#![warn(missing_docs)]

mod envtest;
mod errors;
mod faults;
mod harness;
mod ownership;
mod patch;
mod protobuf;
mod render;
mod resources;
mod routes;
mod scratch;
mod selectors;
mod server;
mod service;
mod store;
mod validation;
mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub use faults::{Chaos, RequestMatch, RequestRecord, Verb};
pub use harness::{
    ASSETS_ENV, Backend, KUBECONFIG_ENV, SKIP_LOG_ENV, TEST_NAMESPACE_LABEL, TestCluster, backend,
    control_plane_startup, crds_dir, test_cluster,
};
pub use server::ServedApiServer;
pub use service::ResponseBody;

/// This test process's scratch directory: removed with everything in it when the process
/// ends, however it ends (see `scratch.rs`). Tests write their files here.
pub fn scratch_dir() -> Result<&'static Path, String> {
    scratch::dir()
}

use faults::Faults;
use store::State;

/// Watch events kept for resumption by default; older resourceVersions get `410 Gone`.
const DEFAULT_HISTORY: usize = 10_000;
/// How often open watches that asked for bookmarks get one (kube-apiserver: about a minute).
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A CRD could not be loaded or registered.
#[derive(Debug)]
pub struct CrdError(String);

impl std::fmt::Display for CrdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CrdError {}

pub(crate) struct Inner {
    state: Mutex<State>,
    log: Mutex<Vec<RequestRecord>>,
    faults: Mutex<Faults>,
    bookmark_interval: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take every later request down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// The in-memory API server. Cheap to clone; clones share the same state.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

impl ApiServer {
    /// An empty server: the built-in types, namespaces `default`, `kube-system` and
    /// `kube-public`, no custom resources yet.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(DEFAULT_HISTORY)),
                log: Mutex::new(Vec::new()),
                faults: Mutex::new(Faults::default()),
                bookmark_interval: Mutex::new(DEFAULT_BOOKMARK_INTERVAL),
            }),
        }
    }

    /// Serves the type a CRD defines, at its group, served versions and plural, and stores
    /// the CRD itself (established) like `kubectl apply` would.
    pub fn register_crd(&self, crd: &CustomResourceDefinition) -> Result<(), CrdError> {
        let value = serde_json::to_value(crd).map_err(|e| CrdError(e.to_string()))?;
        self.inner
            .state()
            .put_crd(value)
            .map_err(|e| CrdError(e.message))
    }

    /// Registers every CustomResourceDefinition in the `*.yaml`/`*.yml`/`*.json` files of
    /// `dir` (one document per file). Returns how many were registered.
    pub fn register_crds_from_dir(&self, dir: impl AsRef<Path>) -> Result<usize, CrdError> {
        let dir = dir.as_ref();
        let entries =
            std::fs::read_dir(dir).map_err(|e| CrdError(format!("{}: {e}", dir.display())))?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        paths.sort();
        for path in &paths {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CrdError(format!("{}: {e}", path.display())))?;
            let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
                .map_err(|e| CrdError(format!("{}: {e}", path.display())))?;
            self.register_crd(&crd)
                .map_err(|e| CrdError(format!("{}: {e}", path.display())))?;
        }
        Ok(paths.len())
    }

    /// A client talking to this server in-process, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    /// Serves over plain HTTP on `127.0.0.1:<random port>` and writes a kubeconfig for it.
    pub async fn serve(&self) -> std::io::Result<ServedApiServer> {
        server::serve(self.clone()).await
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.log).clone()
    }

    /// Forgets the request log (e.g. once a test reaches steady state).
    pub fn clear_requests(&self) {
        lock(&self.inner.log).clear();
    }

    /// Answers the next `count` requests that match with `status` (a proper `Status` body with
    /// the reason kube-apiserver gives that code) instead of serving them.
    pub fn fail_next(&self, count: usize, matcher: RequestMatch, status: u16) {
        lock(&self.inner.faults).fail_next(count, matcher, status);
    }

    /// Lets the next `skip` matching requests through, then answers the `count` after them
    /// with `status`: "the second status write fails", as when a process dies between two
    /// writes.
    pub fn fail_after(&self, skip: usize, count: usize, matcher: RequestMatch, status: u16) {
        lock(&self.inner.faults).fail_after(skip, count, matcher, status);
    }

    /// Delays every matching request by `latency` before it is served.
    pub fn add_latency(&self, matcher: RequestMatch, latency: Duration) {
        lock(&self.inner.faults).add_latency(matcher, latency);
    }

    /// Starts a seeded probabilistic fault plan (replacing any running one), or stops it
    /// with `None`. See [`Chaos`].
    pub fn set_chaos(&self, plan: Option<Chaos>) {
        lock(&self.inner.faults).set_chaos(plan);
    }

    /// Faults the running chaos plan has injected, by status code.
    pub fn chaos_injected(&self) -> std::collections::BTreeMap<u16, usize> {
        lock(&self.inner.faults).chaos_injected()
    }

    /// Removes all failure and latency rules and the chaos plan.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Ends every open watch stream, as an apiserver restart or a load balancer would.
    pub fn close_watches(&self) {
        self.inner.state().close_watches();
    }

    /// How many watch streams are open.
    pub fn open_watches(&self) -> usize {
        self.inner.state().open_watches()
    }

    /// The current (highest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.state().resource_version()
    }

    /// Keeps only the last `events` change events for watch resumption and exact/paged lists;
    /// older resourceVersions answer `410 Gone` (reason Expired).
    pub fn set_history_limit(&self, events: usize) {
        self.inner.state().set_history_limit(events);
    }

    /// How often watches that allow bookmarks receive one (default one second).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.inner.bookmark_interval) = interval;
    }
}
