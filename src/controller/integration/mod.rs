//! The Integration controller: one status for a sync, and restarts after swaps.
//!
//! One reconcile is a pipeline: [`read_credentials`] GETs each connector's
//! ConnectorCredential, [`aggregate`] (pure) turns them into connector statuses, a phase and
//! conditions, [`restart::plan`] (pure) decides whether the restart targets roll now,
//! [`touch_targets`] rolls them (or checks they exist), and [`write_status`] applies the
//! status only when it changed. Credential changes reach the Integrations that use them
//! through an [`index::Index`] fed by each reconcile.

mod aggregate;
mod events;
mod index;
mod restart;
mod rollouts;
mod workload;

pub(crate) use rollouts::Rollouts;
pub use rollouts::{DEFAULT_MAX_CONCURRENT_ROLLOUTS, DEFAULT_ROLLOUT_HOLD};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use jiff::Timestamp;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{debug, info};

use self::aggregate::Found;
use self::index::Index;
use self::restart::Action as Restart;
use super::events::{Note, publish};
use super::runner::{self, Object, Reconciler, api};
use super::{Context, Error, kube_err};
use crate::api::conditions::{Reason, types};
use crate::api::{ConnectorCredential, Integration, IntegrationStatus, RestartTarget};

type Guarded = DeserializeGuard<Integration>;

/// How often an Integration is looked at without a trigger. Credential changes arrive by
/// watch; this catches what no watch reports, such as a restart target being created.
const RESYNC: Duration = Duration::from_secs(5 * 60);

/// Settings of the Integration controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Swaps seen within this window after the first are rolled out together, once.
    pub restart_debounce: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            restart_debounce: Duration::from_secs(10),
        }
    }
}

/// Per-Integration restart bookkeeping that lives only in this process (the CRD has no
/// field for it). A process restart loses it: an open window starts over, and a roll whose
/// status write never landed is repeated once. A swap whose revisions reached status is
/// never rolled again.
#[derive(Default, Clone)]
struct Debounce {
    /// When the oldest swap not yet rolled out was first seen.
    pending_since: Option<Timestamp>,
    /// Revisions rolled out whose status write has not succeeded yet, so a failed status
    /// write does not roll the same swap twice.
    rolled: BTreeMap<String, String>,
}

/// What every Integration reconcile gets.
struct State {
    ctx: Arc<Context>,
    settings: Settings,
    index: Arc<Index>,
    debounce: Mutex<HashMap<String, Debounce>>,
}

impl State {
    fn debounce(&self) -> std::sync::MutexGuard<'_, HashMap<String, Debounce>> {
        self.debounce.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl runner::Kind for Integration {}

impl Reconciler for State {
    type Head = Integration;
    type Object = Integration;
    type Admission = ();
    const KIND: &'static str = "Integration";
    const GET: &'static str = "get Integration";
    const CONTROLLER: &'static str = "integration";
    const KEY: &'static str = "integration";

    fn context(&self) -> &Context {
        &self.ctx
    }

    fn admit(&self, _key: &str, _head: &Integration) -> Result<(), Duration> {
        Ok(())
    }

    async fn reconcile(&self, object: Object<'_, Integration>, (): ()) -> Result<Action, Error> {
        let ns = object.object.namespace().unwrap_or_default();
        reconcile_integration(&object.object, object.api, self, &ns, object.key).await
    }

    fn forget(&self, namespace: &str, name: &str, key: &str) {
        self.index.remove(namespace, name);
        self.ctx.rollouts.forget(key);
        self.debounce().remove(key);
    }
}

/// GETs each connector's ConnectorCredential. A malformed credential is reported on the
/// connector rather than failing the whole Integration.
async fn read_credentials(
    ctx: &Context,
    integ: &Integration,
    ns: &str,
) -> Result<Vec<Option<DeserializeGuard<ConnectorCredential>>>, Error> {
    let api: Api<DeserializeGuard<ConnectorCredential>> = Api::namespaced(ctx.client.clone(), ns);
    let mut found = Vec::with_capacity(integ.spec.connectors.len());
    for connector in &integ.spec.connectors {
        found.push(
            api.get_opt(&connector.credential_ref.name)
                .await
                .map_err(kube_err("get ConnectorCredential"))?,
        );
    }
    Ok(found)
}

/// Whether every restart target already carries a roll for `revisions`: a process that
/// rolled them died before status recorded it, and rolling again would restart the
/// workloads twice for one swap.
async fn rolled_already(
    ctx: &Context,
    ns: &str,
    targets: &[RestartTarget],
    revisions: &str,
) -> Result<bool, Error> {
    for target in targets {
        let carried = workload::carries(&ctx.client, ns, target, revisions).await?;
        if !carried {
            return Ok(false);
        }
    }
    Ok(!targets.is_empty())
}

/// Rolls every restart target with `patch` (or checks they exist, without one); returns the
/// targets that do not exist.
async fn touch_targets<'a>(
    ctx: &Context,
    ns: &str,
    targets: &'a [RestartTarget],
    patch: Option<&serde_json::Value>,
) -> Result<Vec<&'a RestartTarget>, Error> {
    let mut missing = Vec::new();
    for target in targets {
        let exists = workload::touch(&ctx.client, ns, target, patch).await?;
        if !exists {
            missing.push(target);
        }
    }
    Ok(missing)
}

fn target_label(target: &RestartTarget) -> String {
    format!("{:?}/{}", target.kind, target.name)
}

async fn reconcile_integration(
    integ: &Integration,
    api: &Api<Integration>,
    state: &State,
    ns: &str,
    key: &str,
) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let now = ctx.clock.now();
    let name = integ.name_any();
    let generation = integ.meta().generation;
    let spec = &integ.spec;
    let old = integ.status.clone().unwrap_or_default();

    // 1. Index the references, then read the credentials.
    let refs: BTreeSet<String> = spec
        .connectors
        .iter()
        .map(|c| c.credential_ref.name.clone())
        .collect();
    state.index.set(ns, &name, refs);
    let creds = read_credentials(ctx, integ, ns).await?;

    // 2. Aggregate (pure).
    let observed: Vec<aggregate::Observed> = spec
        .connectors
        .iter()
        .zip(&creds)
        .map(|(connector, got)| {
            let found = match got {
                None => Found::Missing,
                Some(DeserializeGuard(Ok(cred))) => Found::Credential(cred),
                Some(DeserializeGuard(Err(invalid))) => Found::Malformed(&invalid.error),
            };
            aggregate::connector(connector, found)
        })
        .collect();

    // 3. Decide on restarts (pure).
    let debounce = state.debounce().get(key).cloned().unwrap_or_default();
    let mut recorded: BTreeMap<String, String> = old
        .connectors
        .iter()
        .filter_map(|c| Some((c.name.clone(), c.active_revision.clone()?)))
        .collect();
    recorded.extend(debounce.rolled.clone());
    let current: Vec<(String, Option<String>)> = observed
        .iter()
        .map(|o| (o.status.name.clone(), o.revision.clone()))
        .collect();
    let mut plan = restart::plan(&restart::Input {
        current: &current,
        recorded: &recorded,
        first_observation: old.connectors.is_empty(),
        pending_since: debounce.pending_since,
        now,
        window: state.settings.restart_debounce,
        suspended: spec.suspend,
        has_targets: !spec.restart_targets.is_empty(),
    });

    // 4. Roll the restart targets, or check they exist.
    let mut rolled = None;
    let done_before = match &plan.action {
        Restart::Roll(revisions) if !spec.suspend => {
            rolled_already(ctx, ns, &spec.restart_targets, revisions).await?
        }
        _ => false,
    };
    // A roll takes rollout slots first (a limit across every Integration), or waits.
    if let (Restart::Roll(_), false) = (&plan.action, done_before) {
        let admitted = ctx
            .rollouts
            .admit(&ctx.client, &ctx.metrics, key, ns, &spec.restart_targets)
            .await;
        if let Err(wait) = admitted {
            debug!(retry_in = ?wait, "waiting for a rollout slot");
            plan = plan.put_off(wait);
        }
    } else {
        ctx.rollouts.forget(key);
    }
    let missing = if spec.suspend {
        None
    } else if let (Restart::Roll(revisions), true) = (&plan.action, done_before) {
        rolled = Some(revisions.clone());
        Some(touch_targets(ctx, ns, &spec.restart_targets, None).await?)
    } else if let Restart::Roll(revisions) = &plan.action {
        let patch = restart::rollout_patch(now, revisions);
        let missing = touch_targets(ctx, ns, &spec.restart_targets, Some(&patch)).await?;
        info!(%revisions, "rolled restart targets after a credential swap");
        rolled = Some(revisions.clone());
        Some(missing)
    } else {
        Some(touch_targets(ctx, ns, &spec.restart_targets, None).await?)
    };
    {
        let mut all = state.debounce();
        let entry = all.entry(key.to_owned()).or_default();
        entry.pending_since = plan.pending_since;
        if rolled.is_some() {
            entry.rolled = plan
                .record
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                .collect();
        }
    }

    // 5. Status.
    let mut status = IntegrationStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        connectors: observed
            .iter()
            .map(|o| {
                let mut c = o.status.clone();
                c.active_revision = plan.record.get(&c.name).cloned().flatten();
                c
            })
            .collect(),
        ..IntegrationStatus::default()
    };
    let summary = aggregate::summarize(&observed, &mut status.conditions, generation, now);
    status.phase = Some(summary.phase);
    status.ready_connectors = Some(summary.ready_connectors);
    if let Some(missing) = &missing {
        let (found, reason, message) = if missing.is_empty() {
            let n = spec.restart_targets.len();
            (
                true,
                Reason::RestartTargetsFound,
                format!("all {n} restart targets exist"),
            )
        } else {
            let list: Vec<String> = missing.iter().map(|t| target_label(t)).collect();
            (
                false,
                Reason::RestartTargetNotFound,
                format!(
                    "{} not found in namespace {ns}; it cannot be restarted after a credential swap",
                    list.join(", ")
                ),
            )
        };
        crate::controller::conditions::set(
            &mut status.conditions,
            types::RESTART_TARGETS_FOUND,
            found,
            reason,
            message,
            generation,
            now,
        );
    }
    runner::write_status(api, &name, old != status, &status).await?;
    {
        // Status now records what was rolled out; keep only an open window.
        let mut all = state.debounce();
        match plan.pending_since {
            Some(_) => {
                if let Some(entry) = all.get_mut(key) {
                    entry.rolled.clear();
                }
            }
            None => {
                all.remove(key);
            }
        }
    }

    // 6. Events.
    let reference = integ.object_ref(&());
    if let Some(revisions) = &rolled {
        let targets: Vec<String> = spec
            .restart_targets
            .iter()
            .filter(|t| missing.as_ref().is_none_or(|m| !m.contains(t)))
            .map(target_label)
            .collect();
        if !targets.is_empty() {
            let note = format!("rolled {} for {revisions}", targets.join(", "));
            let note = Note::normal(Reason::Restarted, "Restart", note);
            publish(ctx, &reference, note).await;
        }
    }
    let facts = events::Facts {
        missing_credentials: observed
            .iter()
            .filter(|o| o.reason == Reason::CredentialNotFound)
            .map(|o| o.status.name.as_str())
            .collect(),
        targets_missing: missing.as_ref().is_some_and(|m| !m.is_empty()),
    };
    for note in events::transitions(&old, &status, &facts) {
        publish(ctx, &reference, note).await;
    }

    Ok(match plan.action {
        Restart::Wait(remaining) => Action::requeue(remaining.max(Duration::from_millis(100))),
        Restart::Idle | Restart::Roll(_) => Action::requeue(RESYNC),
    })
}

/// Maps a ConnectorCredential to the Integrations that reference it, through the index;
/// Integrations gone from the controller's cache are dropped from the index on the way.
fn integrations_for_credential(
    index: &Index,
    store: &Store<Guarded>,
    ns: &str,
    credential: &str,
) -> Vec<ObjectRef<Guarded>> {
    index
        .users(ns, credential)
        .into_iter()
        .filter_map(|integration| {
            let reference = ObjectRef::new(&integration).within(ns);
            if store.get(&reference).is_some() {
                Some(reference)
            } else {
                index.remove(ns, &integration);
                None
            }
        })
        .collect()
}

/// What an Integration reads of a credential, as a hash: a change to anything else (a token
/// refresh's new expiry, a probe time) does not wake the Integrations that use it. (A hash is
/// kept per credential: 8 bytes instead of the fields.)
fn aggregated(cred: &DeserializeGuard<ConnectorCredential>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    let meta = cred.meta();
    meta.generation.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    if let Ok(c) = &cred.0 {
        c.spec.provider.hash(&mut h);
        if let Some(s) = &c.status {
            s.phase.hash(&mut h);
            s.account.as_ref().map(|a| (&a.id, &a.name)).hash(&mut h);
            s.permissions.hash(&mut h);
            s.active_revision.hash(&mut h);
            s.active_health.as_ref().map(|x| x.state).hash(&mut h);
            for c in &s.conditions {
                (&c.type_, &c.status, &c.reason, &c.message).hash(&mut h);
            }
        }
    }
    h.finish()
}

fn controller(ctx: &Context, namespace: Option<&str>, index: Arc<Index>) -> Controller<Guarded> {
    let integrations = api::<Guarded>(&ctx.client, namespace);
    let creds = api::<DeserializeGuard<ConnectorCredential>>(&ctx.client, namespace);
    let (store, writer) = kube::runtime::reflector::store();
    let watched = watcher(integrations, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(super::forget_bulky_metadata)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(watched, store).with_config(ctx.controller_config());
    let store = controller.store();
    // Credentials wake their Integrations only when something the aggregate reads changes.
    let creds = super::triggers::changes(
        watcher(creds, watcher::Config::default().any_semantic()).default_backoff(),
        aggregated,
    );
    controller.watches_stream(creds, move |cred: DeserializeGuard<ConnectorCredential>| {
        integrations_for_credential(
            &index,
            &store,
            cred.meta().namespace.as_deref().unwrap_or_default(),
            cred.meta().name.as_deref().unwrap_or_default(),
        )
    })
}

/// Runs the controller with default [`Settings`] until `shutdown` resolves; `reconcile_all`
/// re-reconciles everything whenever it yields.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with(ctx, Settings::default(), namespace, reconcile_all, shutdown).await;
}

/// [`run`] with explicit settings.
pub async fn run_with(
    ctx: Arc<Context>,
    settings: Settings,
    namespace: Option<String>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let index = Arc::new(Index::default());
    let state = Arc::new(State {
        ctx: ctx.clone(),
        settings,
        index: index.clone(),
        debounce: Mutex::default(),
    });
    let controller = controller(&ctx, namespace.as_deref(), index);
    runner::run(state, controller, reconcile_all, shutdown).await;
}
