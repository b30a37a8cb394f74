//! The ConnectorCredential controller: validate, then swap.
//!
//! One reconcile is a pipeline of named steps:
//!
//! 1. read: the source Secret ([`read::source`]: a [`read::Candidate`] with its revision)
//!    and the target Secret ([`target::inspect`]: intact, altered, missing or foreign);
//! 2. decide ([`decide::decide`], pure): the step and when to look again;
//! 3. provider step ([`act`]): the only provider calls, returning an [`act::Outcome`]; a
//!    refresh token the exchange rotates is persisted before the probe uses the new access
//!    token (the write-ahead: [`staging`] for a candidate, the target for the active one);
//! 4. react ([`react::react`], pure): the status and events the outcome deserves;
//! 5. apply: the target Secret first (a rotated refresh token must be persisted before
//!    anything else), then status, then the staging Secret is emptied once its rotation is
//!    settled, then events.
//!
//! The target Secret only ever holds material that passed validation; [`target`] makes that
//! a property of the types. The controller's own writes never wake it: status writes are
//! filtered by generation and target writes by resourceVersion ([`super::triggers`]).

pub(crate) mod act;
pub(crate) mod decide;
pub(crate) mod events;
mod head;
mod in_use;
mod index;
mod owned;
pub(crate) mod react;
pub(crate) mod read;
mod revision;
pub(crate) mod staging;
pub(crate) mod status;
pub(crate) mod target;

pub use in_use::FINALIZER as IN_USE_FINALIZER;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{debug, warn};

use self::act::{Outcome, ProviderStep};
use self::decide::{MIN_REFRESH_GAP, Observed, Plan, Step, Timing, View};
use self::react::Input;
use self::target::Target;
use super::Staging;
use super::events::publish;
use super::queue::{Queue, Turn};
use super::runner::{self, Object, Reconciler, api};
use super::triggers::{OwnWrites, spec_changes};
use super::{Context, Error, kube_err};
use crate::api::{AuthType, ConnectorCredential, ConnectorCredentialStatus, Integration};
use crate::providers::budget::{Priority, with_priority};
use crate::secret::Redacted;

/// The cached form of a credential (malformed ones included, so they never block a watch).
type Guarded = DeserializeGuard<CredentialHead>;

pub use head::CredentialHead;

/// How soon to look again when a reconcile leaves more to do at once.
const FOLLOW_UP: Duration = Duration::from_secs(1);

/// Writes status with server-side apply, unless nothing but `lastValidated` changed.
async fn write_status(
    api: &Api<ConnectorCredential>,
    name: &str,
    old: Option<&ConnectorCredentialStatus>,
    new: &ConnectorCredentialStatus,
) -> Result<bool, Error> {
    let changed = old.is_none_or(|old| status::differs_beyond_last_validated(old, new));
    runner::write_status(api, name, changed, new).await
}

impl runner::Kind for ConnectorCredential {}
impl runner::Kind for CredentialHead {}

/// The ConnectorCredential controller, as the shell ([`runner`]) runs it.
pub(crate) struct Credentials {
    ctx: Arc<Context>,
}

impl Reconciler for Credentials {
    type Head = CredentialHead;
    type Object = ConnectorCredential;
    /// The priority of this turn, and a routine worker's permit.
    type Admission = (Priority, Option<tokio::sync::OwnedSemaphorePermit>);
    const KIND: &'static str = "ConnectorCredential";
    const GET: &'static str = "get ConnectorCredential";
    const CONTROLLER: &'static str = "connectorcredential";
    const KEY: &'static str = "credential";

    fn context(&self) -> &Context {
        &self.ctx
    }

    /// Routine upkeep waits for a routine worker; a change goes first (see `queue`).
    fn admit(&self, key: &str, head: &CredentialHead) -> Result<Self::Admission, Duration> {
        match self.ctx.queue.turn(key, head.settled()) {
            Turn::PutOff(wait) => Err(wait),
            Turn::Go { priority, permit } => Ok((priority, permit)),
        }
    }

    async fn reconcile(
        &self,
        object: Object<'_, ConnectorCredential>,
        (priority, _routine_worker): Self::Admission,
    ) -> Result<Action, Error> {
        let Object { object, api, key } = object;
        let mut cred = object;
        // In-use protection first. A credential whose deletion waits for its Integrations
        // keeps being validated and refreshed, so the syncs still using it keep working.
        match in_use::protect(&self.ctx, api, &mut cred).await? {
            Some(done) => Ok(done),
            None => reconcile_credential(&cred, api, &self.ctx, key, priority).await,
        }
    }

    fn forget(&self, namespace: &str, name: &str, key: &str) {
        self.ctx.queue.forget(key);
        self.ctx.metrics.forget_credential(namespace, name);
    }
}

/// Reconciles one ConnectorCredential.
pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    runner::reconcile(guard, Arc::new(Credentials { ctx })).await
}

/// The decision's view of the target Secret.
fn view(target: &Target) -> View {
    match target {
        Target::Missing => View::Missing,
        Target::Foreign => View::Foreign,
        Target::Altered(_) => View::Altered,
        Target::Intact(active) => View::Intact {
            revision: active.revision().to_owned(),
            access: active.record().access,
        },
    }
}

async fn reconcile_credential(
    cred: &ConnectorCredential,
    api: &Api<ConnectorCredential>,
    ctx: &Context,
    key: &str,
    priority: Priority,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let ns = cred.namespace().unwrap_or_default();
    let name = cred.name_any();
    let generation = cred.meta().generation;
    let target_name = cred.target_secret_name();

    // The spec as written: what no provider call can fix is found before any call.
    let (timing, mut spec_problem) = match Timing::from_spec(&cred.spec) {
        Ok(t) => (t, None),
        Err(err) => (Timing::fallback(), Some(err.to_string())),
    };
    if spec_problem.is_none()
        && let Err(err) = ctx.providers.check_spec(&cred.spec)
    {
        spec_problem = Some(err.to_string());
    }

    // 1. Read the referenced Secrets.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let source = read::source(&secrets, cred).await?;
    let target = target::inspect(
        secrets
            .get_opt(&target_name)
            .await
            .map_err(kube_err("get target Secret"))?,
        cred,
    );
    let view = view(&target.state);

    // 2. Decide.
    let status_now = cred.status.clone().unwrap_or_default();
    let observe = |status: &ConnectorCredentialStatus, view: &View| {
        decide::decide(&Observed {
            generation,
            status,
            timing,
            source: source.revision(),
            target: view,
            last_probe: last_probe(ctx, key, status, timing.interval),
            phase: phase(key, timing.interval),
            short_tokens: ctx.short_tokens(key),
            now,
        })
    };
    let plan = if spec_problem.is_some() {
        Plan {
            step: Step::Idle,
            wake_at: None,
        }
    } else {
        observe(&status_now, &view)
    };
    debug!(step = ?plan.step, "decided");

    // 3. The provider step. A refresh-token credential first looks at its staging Secret
    // when this process has not (or left a token there): a token an earlier attempt staged
    // continues its lineage, instead of the spent one being presented again.
    let staging_state = ctx.staging(key);
    let mut staged = staging::Read::default();
    if cred.spec.auth == AuthType::RefreshToken
        && (staging_state == Staging::Held
            || (staging_state == Staging::Unknown && touches_provider(&plan.step)))
    {
        staged = staging::read(&secrets, cred)
            .await
            .map_err(kube_err("get staging Secret"))?;
        settle_staging(
            ctx,
            key,
            &secrets,
            cred,
            &mut staged,
            &source,
            &target.state,
        )
        .await?;
    }
    let unwritten = ctx.unwritten(key);
    let persist = Persist {
        ctx,
        key,
        ns: &ns,
        secrets: &secrets,
        cred,
        target: Mutex::new(target.secret.clone()),
        staging: Mutex::new(staged),
        failed: Mutex::new(None),
        meanwhile: AtomicBool::new(false),
    };
    let step = ProviderStep {
        providers: &ctx.providers,
        cred,
        key,
        timing,
        now,
        unwritten: unwritten
            .as_ref()
            .map(|(revision, token)| (revision.as_str(), token)),
        write_ahead: &persist,
    };
    // A new or changed credential is validated ahead of routine upkeep at the provider too.
    let priority = match plan.step {
        Step::Rotate { .. } | Step::Restore { .. } => Priority::Urgent,
        _ => priority,
    };
    let outcome = with_priority(priority, step.run(&plan.step, &source, &target.state)).await;
    if let Outcome::Transient {
        unwritten: Some((revision, token)),
        ..
    } = &outcome
    {
        ctx.keep_unwritten(key, revision, token.clone());
    }
    if let Outcome::Unpersisted { revision, token } = &outcome {
        // Not persisted, and its access token not used: presented next time.
        ctx.keep_unwritten(key, revision, token.clone());
        return Err(persist.take_failure());
    }

    // 4. React.
    let reaction = react::react(
        &Input {
            status: cred.status.as_ref(),
            generation,
            target_name: &target_name,
            spec_problem: spec_problem.clone(),
            source: &source,
            target: &target.state,
            view: &view,
            plan: &plan,
            timing,
            now,
        },
        &outcome,
    );

    // 5. Apply: the target Secret, then status, then the staging Secret, then events.
    // Set when someone else wrote the target while this process was writing it: look again.
    let mut written_meanwhile = persist.meanwhile.load(Ordering::SeqCst);
    if let Some(validated) = outcome.target_write() {
        let existing = persist.target();
        let (_, meanwhile) =
            write_target(ctx, key, &ns, &secrets, cred, existing.as_ref(), validated).await?;
        written_meanwhile |= meanwhile;
    }
    // A dead credential is probed again on the interval too, not in a loop.
    if let Outcome::Swapped { .. } | Outcome::Probed { .. } | Outcome::ActiveFailed { .. } =
        &outcome
    {
        ctx.set_last_probe(key, now);
    }
    let provider = cred.spec.provider;
    if let Outcome::Swapped { .. } | Outcome::Rejected { .. } = &outcome {
        ctx.metrics
            .rotation(provider, matches!(outcome, Outcome::Swapped { .. }));
    }
    ctx.metrics.credential(
        &ns,
        &name,
        provider,
        reaction.status.phase.unwrap_or_default(),
        reaction.status.expires_at.as_ref().map(|t| t.0),
        timing.expiry_warning,
    );
    write_status(api, &name, cred.status.as_ref(), &reaction.status).await?;
    // A staged token is obsolete once its rotation is settled and recorded (a rejection that
    // status has not recorded yet is validated again after a crash, from the staged token),
    // or once the target holds its lineage again.
    if let Some(staged) = persist.staged() {
        let settled = matches!(outcome, Outcome::Swapped { .. } | Outcome::Rejected { .. })
            || outcome
                .target_holds()
                .is_some_and(|v| v.revision() == staged.revision);
        if settled {
            persist.clear().await;
        }
    }
    let reference = cred.object_ref(&());
    for note in reaction.events {
        publish(ctx, &reference, note).await;
    }
    if let Outcome::Transient { error, .. } = outcome {
        ctx.seed_failures(key, reaction.status.consecutive_failures.max(0) as u32);
        return Err(Error::Provider(error));
    }

    // When to look again: what the plan says once this outcome has landed.
    let after = if spec_problem.is_some() {
        Plan {
            step: Step::Idle,
            wake_at: None,
        }
    } else {
        observe(&reaction.status, &reaction.view)
    };
    if written_meanwhile {
        debug!("the target Secret changed while it was written; looking again");
        return Ok(Action::requeue(FOLLOW_UP));
    }
    Ok(match after.step {
        Step::Idle => match after.wake_at {
            Some(at) => Action::requeue(until(now, at).clamp(FOLLOW_UP, timing.interval)),
            // A safety net for a missed watch event while a credential is active.
            None if reaction.status.active_revision.is_some() => Action::requeue(timing.interval),
            None => Action::await_change(),
        },
        Step::TargetNotOwned => Action::await_change(),
        other => {
            debug!(step = ?other, "more to do at once");
            Action::requeue(FOLLOW_UP)
        }
    })
}

/// Whether a step talks to the provider or finishes a swap: the steps a staged token matters to.
fn touches_provider(step: &Step) -> bool {
    !matches!(step, Step::Idle | Step::TargetNotOwned)
}

/// Writes validated material to the target Secret, with what every target write needs: a
/// rotated refresh token is kept in memory until the write lands, and the write is marked as
/// this process's own. Returns the Secret as written, and whether someone else wrote it
/// meanwhile.
async fn write_target(
    ctx: &Context,
    key: &str,
    ns: &str,
    secrets: &Api<Secret>,
    cred: &ConnectorCredential,
    existing: Option<&Secret>,
    validated: &target::Validated,
) -> Result<(Secret, bool), Error> {
    // Until the write lands, a rotated refresh token lives only here: a failed write must
    // not lose it (the one it replaced is spent).
    if let Some(token) = validated.refresh_token() {
        ctx.keep_unwritten(key, validated.revision(), token.clone());
    }
    let target_name = cred.target_secret_name();
    let flight = ctx.own_writes.begin(ns, &target_name);
    let written = target::write(secrets, cred, existing, validated).await;
    let meanwhile = flight.landed(written.as_ref().ok().and_then(|w| w.resource_version()));
    let written = written.map_err(kube_err("write target Secret"))?;
    ctx.written(key);
    if let Some(lifetime) = act::issued_lifetime(validated) {
        ctx.token_issued(key, lifetime < MIN_REFRESH_GAP);
    }
    Ok((written, meanwhile))
}

/// A staging Secret as found at the start of a reconcile: a token for the source revision or
/// the active one is taken up (unless this process holds a newer one); anything else, or a
/// token the target already holds, is obsolete and emptied.
async fn settle_staging(
    ctx: &Context,
    key: &str,
    secrets: &Api<Secret>,
    cred: &ConnectorCredential,
    read: &mut staging::Read,
    source: &read::Source,
    target: &Target,
) -> Result<(), Error> {
    let Some(staged) = read.staged() else {
        ctx.set_staging(key, Staging::Clear);
        return Ok(());
    };
    let active = match target {
        Target::Intact(active) => Some(active),
        _ => None,
    };
    let in_target = active.is_some_and(|a| {
        a.revision() == staged.revision
            && a.material().refresh_token.as_ref() == Some(&staged.token)
    });
    let current = source.revision() == Some(staged.revision.as_str())
        || active.is_some_and(|a| a.revision() == staged.revision);
    if current && !in_target {
        if ctx
            .unwritten(key)
            .is_none_or(|(revision, _)| revision != staged.revision)
        {
            debug!("continuing from a staged refresh token");
            ctx.keep_unwritten(key, &staged.revision, staged.token);
        }
        ctx.set_staging(key, Staging::Held);
        return Ok(());
    }
    let emptied = staging::write(secrets, cred, read.secret.as_ref(), None)
        .await
        .map_err(staging_err)?;
    read.secret = Some(emptied);
    ctx.set_staging(key, Staging::Clear);
    Ok(())
}

fn staging_err(err: staging::WriteError) -> Error {
    match err {
        staging::WriteError::Kube(source) => Error::Kube {
            call: "write staging Secret",
            source,
        },
        staging::WriteError::Foreign(secret) => Error::StagingNotOwned { secret },
    }
}

/// The write-ahead of one reconcile ([`act::WriteAhead`]): candidates' rotated refresh tokens
/// go to the staging Secret, the active credential's to the target Secret.
struct Persist<'a> {
    ctx: &'a Context,
    key: &'a str,
    ns: &'a str,
    secrets: &'a Api<Secret>,
    cred: &'a ConnectorCredential,
    /// The target Secret as last read or written (the next write's precondition).
    target: Mutex<Option<Secret>>,
    /// The staging Secret as last read or written.
    staging: Mutex<staging::Read>,
    /// Why the last write-ahead failed.
    failed: Mutex<Option<Error>>,
    /// Someone else wrote the target while the write-ahead wrote it.
    meanwhile: AtomicBool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Persist<'_> {
    fn target(&self) -> Option<Secret> {
        locked(&self.target).clone()
    }

    fn staged(&self) -> Option<staging::Staged> {
        locked(&self.staging).staged()
    }

    fn take_failure(&self) -> Error {
        locked(&self.failed)
            .take()
            .unwrap_or_else(|| Error::StagingNotOwned {
                secret: staging::name(self.cred),
            })
    }

    /// Empties the staging Secret; a failure leaves it to the next reconcile.
    async fn clear(&self) {
        let existing = locked(&self.staging).secret.clone();
        match staging::write(self.secrets, self.cred, existing.as_ref(), None).await {
            Ok(secret) => {
                locked(&self.staging).secret = Some(secret);
                self.ctx.set_staging(self.key, Staging::Clear);
            }
            Err(err) => {
                let err = staging_err(err);
                warn!(reason = err.reason(), error = %err, "emptying the staging Secret failed; retried next time");
                self.ctx.set_staging(self.key, Staging::Held);
            }
        }
    }
}

impl act::WriteAhead for Persist<'_> {
    fn stage<'a>(&'a self, revision: &'a str, token: &'a Redacted) -> BoxFuture<'a, bool> {
        async move {
            let read = {
                let read = locked(&self.staging);
                (read.secret.clone(), read.foreign)
            };
            let staged = staging::Staged {
                revision: revision.to_owned(),
                token: token.clone(),
            };
            let written = if read.1 {
                Err(staging::WriteError::Foreign(staging::name(self.cred)))
            } else {
                staging::write(self.secrets, self.cred, read.0.as_ref(), Some(&staged)).await
            };
            match written {
                Ok(secret) => {
                    *locked(&self.staging) = staging::Read {
                        secret: Some(secret),
                        foreign: false,
                    };
                    self.ctx.set_staging(self.key, Staging::Held);
                    // The staged token is the one to present next, whatever memory held.
                    self.ctx.keep_unwritten(self.key, revision, token.clone());
                    debug!("staged a rotated refresh token");
                    true
                }
                Err(err) => {
                    *locked(&self.failed) = Some(staging_err(err));
                    false
                }
            }
        }
        .boxed()
    }

    fn persist_active<'a>(&'a self, validated: &'a target::Validated) -> BoxFuture<'a, bool> {
        async move {
            let existing = self.target();
            match write_target(
                self.ctx,
                self.key,
                self.ns,
                self.secrets,
                self.cred,
                existing.as_ref(),
                validated,
            )
            .await
            {
                Ok((secret, meanwhile)) => {
                    *locked(&self.target) = Some(secret);
                    if meanwhile {
                        self.meanwhile.store(true, Ordering::SeqCst);
                    }
                    true
                }
                Err(err) => {
                    *locked(&self.failed) = Some(err);
                    false
                }
            }
        }
        .boxed()
    }
}

/// When the active credential was last probed successfully: status, or this process.
///
/// A successful probe writes nothing (status records `lastValidated` only with another
/// change), so a process that has not probed a credential yet cannot know when the previous
/// one did. It takes the last probe as no earlier than half an interval before it started:
/// the first probe then falls in the credential's own slot within one interval of the start,
/// so a restart or a new leader spreads its probes over the interval instead of probing
/// every credential at once.
fn last_probe(
    ctx: &Context,
    key: &str,
    status: &ConnectorCredentialStatus,
    interval: Duration,
) -> Option<Timestamp> {
    let on_record = [
        status.last_validated.as_ref().map(|t| t.0),
        ctx.last_probe(key),
    ]
    .into_iter()
    .flatten()
    .max();
    let started = ctx.term_started();
    let floor = started
        .checked_sub(jiff::SignedDuration::try_from(interval / 2).unwrap_or_default())
        .unwrap_or(started);
    Some(on_record.map_or(floor, |t| t.max(floor)))
}

/// A credential's offset in its validation interval: a stable hash of its key (FNV-1a), the
/// same in every process, so its probe slots do not move across restarts.
fn phase(key: &str, interval: Duration) -> Duration {
    let hash = super::fnv1a(key.bytes());
    let every = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(hash % every)
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Maps a Secret to the ConnectorCredentials that read it (source) or own it (target),
/// unless the event is this process's own write of a target Secret.
fn credentials_for_secret(
    index: &index::SecretIndex,
    own: &OwnWrites,
    queue: &Queue,
    meta: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Guarded>> {
    let ns = meta.metadata.namespace.as_deref().unwrap_or_default();
    let secret = meta.metadata.name.as_deref().unwrap_or_default();
    if own.is_own(ns, secret, meta.metadata.resource_version.as_deref()) {
        return Vec::new();
    }
    index
        .credentials(ns, secret)
        .into_iter()
        .map(|name| {
            queue.mark_urgent(&runner::key::<Credentials>(ns, &name));
            ObjectRef::new(&name).within(ns)
        })
        .collect()
}

/// What the credential cache keeps of metadata: not its bulk, labels or annotations (the
/// head type already leaves out everything else; see [`CredentialHead`]).
fn slim(guard: &mut Guarded) {
    super::forget_bulky_metadata(guard);
    let meta = guard.meta_mut();
    meta.labels = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// Builds the controller for one namespace (or all, with `None`).
pub fn controller(ctx: &Context, namespace: Option<&str>) -> Controller<Guarded> {
    let client = &ctx.client;
    let config = || watcher::Config::default().any_semantic();
    let (store, writer) = reflector::store();
    // Only spec changes and deletions wake a credential; its own status writes do not.
    let index = Arc::new(index::SecretIndex::default());
    let credentials = {
        let index = index.clone();
        spec_changes(
            watcher(api::<Guarded>(client, namespace), config())
                .default_backoff()
                .modify(slim)
                .reflect(writer)
                .inspect(move |event| {
                    if let Ok(event) = event {
                        index.observe(event);
                    }
                }),
        )
    };
    let controller =
        Controller::for_stream(credentials, store).with_config(ctx.controller_config());
    let seen = in_use::Seen::default();
    let own = ctx.own_writes.clone();
    let queue = ctx.queue.clone();
    // Integrations wake the credentials they reference (or referenced) for the in-use
    // finalizer: only when their connectors change or they go, not on their status writes.
    // They are cached too, so the finalizer decision reads the cache instead of a listing.
    let (integration_cache, integration_writer) = reflector::store();
    {
        // A controller built again (a new leadership term) replaces its predecessor's cache.
        let mut caches = ctx
            .integration_caches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let scope = namespace.map(str::to_owned);
        caches.retain(|(s, _)| *s != scope);
        caches.push((scope, integration_cache));
    }
    let integrations = spec_changes(
        watcher(
            api::<DeserializeGuard<Integration>>(client, namespace),
            config(),
        )
        .default_backoff()
        .modify(super::forget_bulky_metadata)
        .reflect(integration_writer),
    );
    // Secrets are watched as metadata only: a rotated Secret triggers its credentials at once,
    // while the data of unrelated Secrets is never transferred or cached.
    let secrets = watcher(
        api::<PartialObjectMeta<Secret>>(client, namespace),
        config(),
    )
    .default_backoff()
    .touched_objects();
    controller
        .watches_stream(integrations, move |integration| {
            in_use::credentials_for_integration(&seen, &integration)
        })
        .watches_stream(secrets, move |meta: PartialObjectMeta<Secret>| {
            credentials_for_secret(&index, &own, &queue, &meta)
        })
}

/// Runs the controller until `shutdown` resolves; `reconcile_all` re-reconciles everything
/// whenever it yields.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = controller(&ctx, namespace.as_deref());
    runner::run(
        Arc::new(Credentials { ctx }),
        controller,
        reconcile_all,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_secret_names_and_what_picks_a_priority_and_nothing_else() {
        let mut guard: Guarded = serde_json::from_value(serde_json::json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "ConnectorCredential",
            "metadata": {
                "name": "c", "namespace": "ns", "generation": 3,
                "labels": {"team": "sync"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": \"copy\"}",
                    "team.example/owner": "sync",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "provider": "procore", "auth": "RefreshToken",
                "secretRef": {"name": "src", "keys": {"refreshToken": "rt"}},
                "target": {"name": "tgt"},
                "endpoint": "https://sandbox.procore.com",
                "params": {"companyId": "1"},
                "requiredPermissions": ["company:1"],
            },
            "status": {
                "observedGeneration": 3,
                "activeRevision": "sha256:aa",
                "permissions": ["company:1"],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Connected",
                                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
        }))
        .unwrap();
        slim(&mut guard);
        let head = guard.0.as_ref().unwrap();
        // What the Secret index and the queue read stays.
        assert_eq!(head.source_secret_name(), "src");
        assert_eq!(head.target_secret_name(), "tgt");
        assert!(head.settled());
        assert_eq!(head.name_any(), "c");
        // Metadata bulk is dropped; the head type holds nothing else of the object.
        assert!(head.metadata.managed_fields.is_none());
        assert!(head.metadata.annotations.is_none() && head.metadata.labels.is_none());
        let kept = serde_json::to_value(head).unwrap();
        assert_eq!(
            kept["spec"],
            serde_json::json!({"secretRef": {"name": "src"}, "target": {"name": "tgt"}})
        );
        assert_eq!(
            kept["status"],
            serde_json::json!({"observedGeneration": 3, "activeRevision": "sha256:aa"})
        );
    }
}
