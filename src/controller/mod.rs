//! The controllers and what they share: the context, the error type, the backoff policy.

pub(crate) mod conditions;
pub mod credential;
pub(crate) mod events;
pub mod integration;
pub(crate) mod queue;
mod runner;
#[cfg(test)]
mod simulation;
pub(crate) mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::providers::{Providers, VerifyError};
use crate::secret::Redacted;

/// Field manager for every write the operator makes (server-side apply of status included).
pub const FIELD_MANAGER: &str = "reconnect-operator";

/// Errors of a reconcile. Each has a static [`Error::reason`] for events and metric labels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call {call} failed: {source}")]
    Kube {
        /// What was being done.
        call: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The provider could not answer now; retried with backoff.
    #[error(transparent)]
    Provider(#[from] VerifyError),
    /// The Secret a credential stages rotated refresh tokens in exists and is not the
    /// operator's: a rotation whose provider rotates refresh tokens cannot go on.
    #[error(
        "Secret {secret} exists and is not owned by this ConnectorCredential; rotated refresh tokens cannot be staged there"
    )]
    StagingNotOwned {
        /// The Secret's name.
        secret: String,
    },
}

impl Error {
    /// A stable CamelCase reason for events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } if is_conflict(source) => "Conflict",
            Error::Kube { .. } => "KubeApiError",
            Error::Provider(e) => e.reason(),
            Error::StagingNotOwned { .. } => "StagingSecretNotOwned",
        }
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

/// Writes `status` to the status subresource of `name` with server-side apply under the
/// operator's one field manager (fields it stops applying are removed, conditions merge
/// by type).
pub(crate) async fn apply_status<K>(
    api: &kube::Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err("apply status"))?;
    Ok(())
}

/// Wraps a kube error with the call that produced it.
pub(crate) fn kube_err(call: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { call, source }
}

/// Whether every running controller has listed its objects once (its cache is synced):
/// what `/readyz` reports on a leader.
#[derive(Debug, Default)]
pub struct CacheSync {
    running: std::sync::atomic::AtomicUsize,
    synced: std::sync::atomic::AtomicUsize,
}

impl CacheSync {
    /// True when at least one controller runs and all running controllers have synced.
    pub fn all_synced(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let running = self.running.load(SeqCst);
        running > 0 && self.synced.load(SeqCst) >= running
    }

    /// Tracks one controller from start to end; `synced` is called once its cache is ready.
    pub(crate) fn track(self: &Arc<Self>) -> CacheGuard {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CacheGuard {
            sync: self.clone(),
            synced: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }
}

/// How often [`store_ready`] looks at a store again.
const READY_POLL: Duration = Duration::from_millis(200);

/// Resolves once `store` has been filled by its first list (false when its writer is gone).
///
/// `Store::wait_until_ready` alone is not enough: behind it sits one oneshot receiver that
/// remembers only the waker of the task that polled it last, and the Controller waits on the
/// same store. A second waiter polled earlier is never woken, which kept `/readyz` at 503
/// forever on a real API server. Polling again on a short period re-registers our waker; once
/// any poll has seen the store ready, the answer is remembered.
pub(crate) async fn store_ready<K>(store: kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_elapsed) => continue,
        }
    }
}

/// One running controller's share of [`CacheSync`]; released when the controller ends.
pub(crate) struct CacheGuard {
    sync: Arc<CacheSync>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl CacheGuard {
    /// Marks this controller's cache as synced once `ready` resolves to true.
    pub(crate) fn synced_when(
        &self,
        ready: impl std::future::Future<Output = bool> + Send + 'static,
    ) {
        let sync = self.sync.clone();
        let flag = self.synced.clone();
        tokio::spawn(async move {
            if !ready.await {
                return;
            }
            if !flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
                sync.synced
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
}

impl Drop for CacheGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        // Claim the flag so a sync that completes after the end is not counted.
        if self.synced.swap(true, SeqCst) {
            self.sync.synced.fetch_sub(1, SeqCst);
        }
        self.sync.running.fetch_sub(1, SeqCst);
    }
}

/// Per-object bookkeeping that must outlive one reconcile but not the process.
#[derive(Default)]
struct ObjectState {
    /// Serialises reconciles of one object, so a refresh token is never spent twice even if
    /// two triggers race (belt and braces beside kube-runtime's own per-object exclusion).
    lock: Arc<tokio::sync::Mutex<()>>,
    /// When the active credential was last probed by this process.
    last_probe: Option<Timestamp>,
    /// Consecutive failed reconciles, for backoff.
    attempts: u32,
    /// Refreshes in a row that returned a token living less than the minimum refresh gap.
    short_tokens: u32,
    /// A refresh token the provider rotated for this revision that the target Secret may
    /// not hold (its write failed, or the candidate's validation did not finish): the token
    /// it replaced is spent, so this one is presented instead.
    unwritten: Option<(String, Redacted)>,
    /// What this process knows of the object's staging Secret.
    staging: Staging,
}

/// What a process knows of a credential's staging Secret (`credential::staging`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Staging {
    /// Not read since the process started: it may hold a token an earlier process staged.
    #[default]
    Unknown,
    /// Absent or empty.
    Clear,
    /// Holds a staged token (or its emptying failed).
    Held,
}
pub const DEFAULT_CONCURRENCY: u16 = 64;

/// What every reconcile gets.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) providers: Providers,
    pub(crate) clock: Arc<dyn Clock>,
    /// When the controllers last started (the process started, or its leadership began).
    started: Mutex<Timestamp>,
    pub(crate) events: events::Publisher,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) caches: Arc<CacheSync>,
    /// Secrets this process wrote, so their watch events do not wake their credentials.
    /// Reconciles each controller runs at once (0: unbounded).
    concurrency: u16,
    pub(crate) own_writes: Arc<triggers::OwnWrites>,
    /// Urgent before routine work.
    pub(crate) queue: Arc<queue::Queue>,
    /// Restart-target rollouts in flight, across every Integration.
    pub(crate) rollouts: Arc<integration::Rollouts>,
    /// The credential controllers' caches of Integrations, by watched namespace (`None`:
    /// all), for the in-use finalizer; read instead of listing Integrations per reconcile.
    pub(crate) integration_caches: Mutex<Vec<(Option<String>, IntegrationCache)>>,
    objects: Mutex<HashMap<String, ObjectState>>,
}

/// A reflector cache of Integrations (malformed ones included, so they never block a watch).
pub(crate) type IntegrationCache =
    kube::runtime::reflector::Store<kube::core::DeserializeGuard<crate::api::Integration>>;

impl Context {
    /// A context for controllers talking to `client` and the providers through `providers`.
    pub fn new(
        client: Client,
        providers: Providers,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let queue = Arc::new(queue::Queue::new(DEFAULT_CONCURRENCY, metrics.clone()));
        Self {
            started: Mutex::new(clock.now()),
            events: events::Publisher::new(client.clone(), FIELD_MANAGER, instance),
            client,
            providers,
            clock,
            metrics,
            caches: Arc::default(),
            own_writes: Arc::default(),
            queue,
            rollouts: Arc::new(integration::Rollouts::new(
                integration::DEFAULT_MAX_CONCURRENT_ROLLOUTS,
                integration::DEFAULT_ROLLOUT_HOLD,
            )),
            integration_caches: Mutex::default(),
            objects: Mutex::default(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// At most `n` reconciles of each controller run at once (0: unbounded). Bounds the
    /// provider connections and API requests in flight when thousands of objects are due
    /// together (a cold start, a restart).
    pub fn with_concurrency(mut self, n: u16) -> Self {
        self.concurrency = n;
        self.queue = Arc::new(queue::Queue::new(n, self.metrics.clone()));
        self
    }

    /// At most `limit` restart-target rollouts in flight at once across every Integration
    /// (0: unbounded), each holding its slot until its workload reports it done or `hold`
    /// passed.
    pub fn with_rollouts(mut self, limit: usize, hold: Duration) -> Self {
        self.rollouts = Arc::new(integration::Rollouts::new(limit, hold));
        self
    }

    /// The kube-runtime controller settings every controller of this context uses.
    pub(crate) fn controller_config(&self) -> kube::runtime::controller::Config {
        kube::runtime::controller::Config::default().concurrency(self.concurrency)
    }

    /// The Integration cache that covers namespace `ns`, if a credential controller keeps one.
    pub(crate) fn integration_cache(&self, ns: &str) -> Option<IntegrationCache> {
        self.integration_caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == ns))
            .map(|(_, cache)| cache.clone())
    }

    /// Whether the controllers running on this context have synced their caches.
    pub fn caches(&self) -> &Arc<CacheSync> {
        &self.caches
    }

    /// The metrics this context records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObjectState>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the start of a term: the controllers start now (at process start, or when this
    /// replica becomes the leader).
    pub(crate) fn begin_term(&self) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = self.clock.now();
    }

    /// When the controllers last started.
    pub(crate) fn term_started(&self) -> Timestamp {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn object_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.objects()
            .entry(key.to_owned())
            .or_default()
            .lock
            .clone()
    }

    pub(crate) fn last_probe(&self, key: &str) -> Option<Timestamp> {
        self.objects().get(key).and_then(|s| s.last_probe)
    }

    pub(crate) fn set_last_probe(&self, key: &str, at: Timestamp) {
        self.objects().entry(key.to_owned()).or_default().last_probe = Some(at);
    }

    pub(crate) fn short_tokens(&self, key: &str) -> u32 {
        self.objects().get(key).map_or(0, |s| s.short_tokens)
    }

    /// The refresh token rotated for `key` and not known to be in its target Secret, with
    /// the revision it belongs to.
    pub(crate) fn unwritten(&self, key: &str) -> Option<(String, Redacted)> {
        self.objects().get(key).and_then(|s| s.unwritten.clone())
    }

    /// Remembers a rotated refresh token until a target write holding it lands.
    pub(crate) fn keep_unwritten(&self, key: &str, revision: &str, token: Redacted) {
        self.objects().entry(key.to_owned()).or_default().unwritten =
            Some((revision.to_owned(), token));
    }

    /// A target write landed: nothing rotated is held only in memory any more.
    pub(crate) fn written(&self, key: &str) {
        if let Some(state) = self.objects().get_mut(key) {
            state.unwritten = None;
        }
    }

    /// What this process knows of `key`'s staging Secret.
    pub(crate) fn staging(&self, key: &str) -> Staging {
        self.objects()
            .get(key)
            .map_or(Staging::Unknown, |s| s.staging)
    }

    pub(crate) fn set_staging(&self, key: &str, staging: Staging) {
        self.objects().entry(key.to_owned()).or_default().staging = staging;
    }

    /// Counts a token that lives less than the minimum refresh gap, or resets the count.
    pub(crate) fn token_issued(&self, key: &str, short: bool) {
        let mut objects = self.objects();
        let state = objects.entry(key.to_owned()).or_default();
        state.short_tokens = if short {
            state.short_tokens.saturating_add(1)
        } else {
            0
        };
    }

    /// Makes the backoff continue from `failures` (what status recorded), so a restart does
    /// not start the schedule over at one second.
    pub(crate) fn seed_failures(&self, key: &str, failures: u32) {
        let mut objects = self.objects();
        let state = objects.entry(key.to_owned()).or_default();
        state.attempts = state.attempts.max(failures.saturating_sub(1));
    }

    pub(crate) fn succeeded(&self, key: &str) {
        if let Some(s) = self.objects().get_mut(key) {
            s.attempts = 0;
        }
    }

    /// Counts a failure and returns the backoff before the next attempt.
    pub(crate) fn failed(&self, key: &str, err: &Error) -> Duration {
        let attempts = {
            let mut objects = self.objects();
            let state = objects.entry(key.to_owned()).or_default();
            state.attempts = state.attempts.saturating_add(1);
            state.attempts
        };
        backoff(attempts, err, jitter_seed(key, attempts))
    }

    pub(crate) fn forget(&self, key: &str) {
        self.objects().remove(key);
    }
}

/// FNV-1a of `bytes`: a stable hash (the same in every process and Rust release), for
/// spreading objects over time by their key.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A cheap, deterministic per-object jitter source: spreads retries of many objects apart
/// without a random number generator.
fn jitter_seed(key: &str, attempts: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    attempts.hash(&mut h);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        .hash(&mut h);
    h.finish()
}

/// Exponential backoff (1s doubling to 5 minutes) with up to 20% jitter, never shorter than
/// what the provider asked for in Retry-After.
pub(crate) fn backoff(attempts: u32, err: &Error, seed: u64) -> Duration {
    let base = match err {
        Error::Kube { source, .. } if is_conflict(source) => Duration::from_millis(200),
        _ => Duration::from_secs(1),
    };
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(10));
    let capped = exp.min(Duration::from_secs(300));
    let jitter = capped.mul_f64((seed % 1000) as f64 / 1000.0 * 0.2);
    let delay = capped + jitter;
    match err {
        Error::Provider(e) => delay.max(e.retry_after().unwrap_or_default()),
        Error::Kube { .. } | Error::StagingNotOwned { .. } => delay,
    }
}

/// The annotation `kubectl apply` (client-side) leaves: a full copy of the object as applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Cached objects keep no `managedFields` and no `kubectl apply` copy of themselves: nothing
/// here reads them, and on a real API server they are often the largest part of an object.
pub(crate) fn forget_bulky_metadata<K: kube::Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Provider;
    use crate::providers::TransientKind;

    fn transient(retry_after: Option<Duration>) -> Error {
        Error::Provider(VerifyError::Transient {
            provider: Provider::Procore,
            call: "GET /rest/v1.0/me",
            kind: TransientKind::RateLimited,
            status: Some(429),
            code: None,
            retry_after,
        })
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes_with_bounded_jitter() {
        let err = transient(None);
        for (attempts, base) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (30, 300)] {
            for seed in [0, 499, 999] {
                let d = backoff(attempts, &err, seed);
                let base = Duration::from_secs(base);
                assert!(d >= base && d <= base.mul_f64(1.2), "{attempts}: {d:?}");
            }
        }
    }

    #[test]
    fn backoff_honours_retry_after() {
        let err = transient(Some(Duration::from_secs(120)));
        assert!(backoff(1, &err, 0) >= Duration::from_secs(120));
    }

    #[tokio::test]
    async fn caches_are_synced_only_when_every_running_controller_synced() {
        let sync = Arc::new(CacheSync::default());
        assert!(!sync.all_synced(), "nothing running is not ready");
        let a = sync.track();
        let b = sync.track();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        a.synced_when(async { true });
        b.synced_when(async move { rx.await.is_ok() });
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while sync.synced.load(std::sync::atomic::Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(!sync.all_synced(), "one of two synced");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sync.all_synced() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        drop(b);
        assert!(sync.all_synced(), "the remaining controller is synced");
        drop(a);
        assert!(!sync.all_synced(), "no controller running");
    }

    /// The Controller waits on its store too; the readiness waiter must still be woken
    /// when the Controller's waiter polled last (a real API server answers slowly enough for
    /// exactly that order).
    #[tokio::test(start_paused = true)]
    async fn readiness_sees_a_store_that_another_task_also_waits_on() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::{reflector, watcher};
        let sync = Arc::new(CacheSync::default());
        let guard = sync.track();
        let (store, mut writer) = reflector::store::<ConfigMap>();
        guard.synced_when(store_ready(store.clone()));
        tokio::task::yield_now().await;
        let other = tokio::spawn({
            let store = store.clone();
            async move { store.wait_until_ready().await.is_ok() }
        });
        tokio::task::yield_now().await;
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sync.all_synced() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the readiness waiter was never woken");
        assert!(
            other.await.unwrap(),
            "the other waiter sees the store ready too"
        );
    }

    #[test]
    fn jitter_spreads_objects_apart() {
        let err = transient(None);
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|i| backoff(5, &err, jitter_seed(&format!("ns/c{i}"), 5)))
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
