//! The shell both controllers run in. A [`Reconciler`] says what its kind is and how to
//! reconcile one object it has just read; the shell does the rest, the same for every kind:
//!
//! 1. a malformed cached object is said once (an event) and left until it changes;
//! 2. the reconciler admits the object now or puts it off (the credential queue);
//! 3. one reconcile per object at a time (the per-object lock);
//! 4. the object is read afresh, whole: the watch cache may not have seen our own last
//!    status write yet, and acting on a stale status could repeat a step; an object gone
//!    is forgotten;
//! 5. the reconcile, timed into metrics; success resets the object's backoff, failure
//!    requeues it with per-object exponential backoff ([`error_policy`]).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use serde::de::DeserializeOwned;
use tracing::{instrument, warn};

use super::events::{Note, publish};
use super::{Context, Error, kube_err};
use crate::api::conditions::Reason;

/// A namespaced kind the cluster serves, as kube reads it (each controller declares its
/// own).
pub(crate) trait Kind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

/// One object the shell hands to [`Reconciler::reconcile`].
pub(crate) struct Object<'a, K> {
    /// The object as just read from the API server.
    pub object: K,
    /// Its API, for status writes.
    pub api: &'a Api<K>,
    /// Its key for the per-object state in [`Context`] (locks, backoff, probe bookkeeping).
    pub key: &'a str,
}

/// What a controller knows of its kind.
pub(crate) trait Reconciler: Send + Sync + 'static {
    /// What the watch caches of an object (a head of it, or all of it).
    type Head: Kind;
    /// The object a reconcile reads afresh.
    type Object: Kind;
    /// What admission hands to the reconcile (held for its length).
    type Admission: Send;

    /// The kind, for messages: `ConnectorCredential`.
    const KIND: &'static str;
    /// The fresh read, as its errors name it: `get ConnectorCredential`.
    const GET: &'static str;
    /// The controller's name in metrics.
    const CONTROLLER: &'static str;
    /// The prefix of its per-object keys, so objects of two kinds with one name never share
    /// state.
    const KEY: &'static str;

    fn context(&self) -> &Context;

    /// Whether to reconcile `head` now (`Ok`) or come back after a while (`Err`), without
    /// reading or calling anything.
    fn admit(&self, key: &str, head: &Self::Head) -> Result<Self::Admission, Duration>;

    /// Reconciles the object just read.
    fn reconcile(
        &self,
        object: Object<'_, Self::Object>,
        admission: Self::Admission,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// The object is gone: drops what this controller keeps of it (the shared per-object
    /// state is dropped by the shell).
    fn forget(&self, namespace: &str, name: &str, key: &str);
}

/// The per-object key of `namespace/name` for reconciler `R`.
pub(crate) fn key<R: Reconciler>(namespace: &str, name: &str) -> String {
    format!("{}:{namespace}/{name}", R::KEY)
}

fn key_of<R: Reconciler>(guard: &DeserializeGuard<R::Head>) -> String {
    key::<R>(
        guard.meta().namespace.as_deref().unwrap_or_default(),
        guard.meta().name.as_deref().unwrap_or_default(),
    )
}

/// The shell's reconcile: see the module documentation.
#[instrument(skip_all, fields(kind = R::KIND, namespace = %guard.meta().namespace.as_deref().unwrap_or_default(), name = %guard.meta().name.as_deref().unwrap_or_default()))]
pub(crate) async fn reconcile<R: Reconciler>(
    guard: Arc<DeserializeGuard<R::Head>>,
    reconciler: Arc<R>,
) -> Result<Action, Error> {
    let ctx = reconciler.context();
    let meta = guard.meta();
    let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return Ok(Action::await_change());
    };
    let key = key::<R>(ns, name);
    let head = match &guard.0 {
        Ok(head) => head,
        Err(invalid) => return malformed::<R>(ctx, &guard.object_ref(&()), invalid).await,
    };
    let admission = match reconciler.admit(&key, head) {
        Ok(admission) => admission,
        Err(wait) => return Ok(Action::requeue(wait)),
    };
    let lock = ctx.object_lock(&key);
    let _held = lock.lock().await;

    let Some(fresh) = Api::<DeserializeGuard<R::Object>>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_err(R::GET))?
    else {
        ctx.forget(&key);
        reconciler.forget(ns, name, &key);
        return Ok(Action::await_change());
    };
    let object = match fresh.0 {
        Ok(object) => object,
        Err(invalid) => return malformed::<R>(ctx, &guard.object_ref(&()), &invalid).await,
    };
    let api = Api::<R::Object>::namespaced(ctx.client.clone(), ns);
    let started = Instant::now();
    let result = reconciler
        .reconcile(
            Object {
                object,
                api: &api,
                key: &key,
            },
            admission,
        )
        .await;
    ctx.metrics.reconciled(
        R::CONTROLLER,
        started.elapsed(),
        result.as_ref().err().map(Error::reason),
    );
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// An object that does not match its schema (an older or hand-edited object): said once
/// per change, then left until it changes.
async fn malformed<R: Reconciler>(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    invalid: &kube::core::error_boundary::InvalidObject,
) -> Result<Action, Error> {
    warn!(kind = R::KIND, error = %invalid, "malformed object skipped");
    let note = format!(
        "the object does not match the {} schema: {invalid}",
        R::KIND
    );
    let note = Note::warning(Reason::Misconfigured, "Reconcile", note);
    publish(ctx, reference, note).await;
    Ok(Action::await_change())
}

/// Decides when to retry a failed reconcile: per-object exponential backoff with jitter,
/// honouring the provider's Retry-After.
pub(crate) fn error_policy<R: Reconciler>(
    guard: Arc<DeserializeGuard<R::Head>>,
    err: &Error,
    reconciler: Arc<R>,
) -> Action {
    let key = key_of::<R>(&guard);
    let delay = reconciler.context().failed(&key, err);
    warn!(object = %key, reason = err.reason(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs `controller` with `reconciler` until `shutdown` resolves; `reconcile_all`
/// re-reconciles everything whenever it yields. /readyz waits for its cache.
pub(crate) async fn run<R: Reconciler>(
    reconciler: Arc<R>,
    controller: Controller<DeserializeGuard<R::Head>>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let cache = reconciler.context().caches.track();
    let store = controller.store();
    cache.synced_when(super::store_ready(store.clone()));
    let shutdown = shutdown.boxed().shared();
    // kube-runtime holds reconciles until the cache has listed once, and its graceful
    // shutdown waits for that too: with an API server that never answers the list, a stop
    // would wait forever. No reconcile can be running then, so the stop is immediate.
    let unsynced = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if store.wait_until_ready().now_or_never().is_some() {
                std::future::pending::<()>().await;
            }
        }
    };
    controller
        .reconcile_all_on(reconcile_all)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<R>, error_policy::<R>, reconciler)
        .take_until(unsynced)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "controller event");
            }
        })
        .await;
    drop(cache);
}

/// An API for `K` in one namespace, or in all of them with `None`.
pub(crate) fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Writes `status` with server-side apply when it `changed`; whether it wrote.
pub(crate) async fn write_status<K: Kind>(
    api: &Api<K>,
    name: &str,
    changed: bool,
    status: &impl serde::Serialize,
) -> Result<bool, Error> {
    if !changed {
        return Ok(false);
    }
    super::apply_status(api, name, status).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe;

    impl Reconciler for Probe {
        type Head = crate::api::Integration;
        type Object = crate::api::Integration;
        type Admission = ();
        const KIND: &'static str = "Integration";
        const GET: &'static str = "get Integration";
        const CONTROLLER: &'static str = "integration";
        const KEY: &'static str = "probe";

        fn context(&self) -> &Context {
            unreachable!("not called by these tests")
        }
        fn admit(&self, _: &str, _: &Self::Head) -> Result<(), Duration> {
            Ok(())
        }
        async fn reconcile(&self, _: Object<'_, Self::Object>, _: ()) -> Result<Action, Error> {
            Ok(Action::await_change())
        }
        fn forget(&self, _: &str, _: &str, _: &str) {}
    }

    #[test]
    fn keys_carry_the_reconcilers_prefix() {
        assert_eq!(key::<Probe>("ns", "a"), "probe:ns/a");
        assert_ne!(key::<Probe>("ns", "a"), key::<Probe>("ns", "b"));
        assert_ne!(key::<Probe>("n", "sa"), key::<Probe>("ns", "a"));
    }
}
