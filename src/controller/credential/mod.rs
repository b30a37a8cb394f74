//! The ConnectorCredential controller: validate, then swap.
//!
//! One reconcile is a pipeline of named steps: [`read_source`] and [`target::inspect`] read
//! the two Secrets, [`decide::decide`] (pure) plans, the provider verifies, [`target::write`]
//! swaps, and [`write_status`] records the outcome. The target Secret only ever holds
//! material that passed validation; [`target`] makes that a property of the types.

pub(crate) mod decide;
pub(crate) mod events;
mod in_use;
mod revision;
pub(crate) mod status;
pub(crate) mod target;

pub use in_use::FINALIZER as IN_USE_FINALIZER;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, instrument, warn};

use self::decide::{Observed, Source, Step, Timing};
use self::status::Update;
use super::{Context, Error, FIELD_MANAGER, kube_err};
use crate::api::conditions::reasons;
use crate::api::{ConnectorCredential, ConnectorCredentialStatus, Integration, PermissionPolicy};
use crate::providers::{CredentialMaterial, VerifyError, VerifyRequest};

type Guarded = DeserializeGuard<ConnectorCredential>;

/// This controller's name in metrics.
const CONTROLLER: &str = "connectorcredential";

/// How soon to look again after a reconcile that changed something: the follow-up finds the
/// steady state and schedules the next probe.
const FOLLOW_UP: Duration = Duration::from_secs(1);

/// Reads the source Secret and the credential material in it.
async fn read_source(
    secrets: &Api<Secret>,
    cred: &ConnectorCredential,
) -> Result<(Source, Option<CredentialMaterial>), Error> {
    let name = &cred.spec.secret_ref.name;
    let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(kube_err("get source Secret"))?
    else {
        return Ok((Source::Missing, None));
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    match CredentialMaterial::from_secret_data(cred.spec.auth, &cred.spec.secret_ref.keys, &data) {
        Ok(material) => Ok((
            Source::Ready {
                revision: revision::of(&material),
            },
            Some(material),
        )),
        Err(missing) => Ok((Source::MissingKey(missing), None)),
    }
}

/// What a new credential must hold: requiredPermissions, and under the Superset policy
/// everything the active account held.
fn required_for_rotation(cred: &ConnectorCredential) -> BTreeSet<String> {
    let mut required: BTreeSet<String> = cred.spec.required_permissions.iter().cloned().collect();
    if cred.spec.permission_policy == PermissionPolicy::Superset
        && let Some(status) = &cred.status
        && status.active_revision.is_some()
    {
        required.extend(status.permissions.iter().cloned());
    }
    required
}

/// Writes status with server-side apply, unless nothing but `lastValidated` changed.
async fn write_status(
    api: &Api<ConnectorCredential>,
    name: &str,
    old: Option<&ConnectorCredentialStatus>,
    new: &ConnectorCredentialStatus,
) -> Result<bool, Error> {
    let unchanged = old.is_some_and(|old| !status::differs_beyond_last_validated(old, new));
    if unchanged {
        return Ok(false);
    }
    super::apply_status(api, name, new).await?;
    Ok(true)
}

/// Reconciles one ConnectorCredential.
#[instrument(skip_all, fields(credential = %guard.meta().namespace.as_deref().unwrap_or_default(), name = %guard.meta().name.as_deref().unwrap_or_default()))]
pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let meta = guard.meta();
    let (Some(ns), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
        return Ok(Action::await_change());
    };
    let key = format!("{ns}/{name}");
    if let Err(invalid) = &guard.0 {
        warn!(error = %invalid, "malformed ConnectorCredential skipped");
        let reference = guard.object_ref(&());
        let note = format!("the object does not match the ConnectorCredential schema: {invalid}");
        events::publish(
            &ctx,
            &reference,
            EventType::Warning,
            reasons::MISCONFIGURED,
            note,
        )
        .await;
        return Ok(Action::await_change());
    }
    let lock = ctx.object_lock(&key);
    let _held = lock.lock().await;

    let api: Api<ConnectorCredential> = Api::namespaced(ctx.client.clone(), &ns);
    // Read afresh: the watch cache may not have seen our own last status write yet, and
    // acting on a stale status could validate the same revision twice.
    let Some(mut cred) = api
        .get_opt(&name)
        .await
        .map_err(kube_err("get ConnectorCredential"))?
    else {
        ctx.forget(&key);
        ctx.metrics.forget_credential(&ns, &name);
        return Ok(Action::await_change());
    };
    let started = std::time::Instant::now();
    // In-use protection first. A credential whose deletion waits for its Integrations keeps
    // being validated and refreshed, so the syncs still using it keep working.
    let result = match in_use::protect(&ctx, &api, &mut cred).await {
        Ok(Some(done)) => Ok(done),
        Ok(None) => reconcile_credential(&cred, &api, &ctx, &key).await,
        Err(err) => Err(err),
    };
    ctx.metrics.reconciled(
        CONTROLLER,
        started.elapsed(),
        result.as_ref().err().map(Error::reason),
    );
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

async fn reconcile_credential(
    cred: &ConnectorCredential,
    api: &Api<ConnectorCredential>,
    ctx: &Context,
    key: &str,
) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let ns = cred.namespace().unwrap_or_default();
    let generation = cred.meta().generation;
    let reference = cred.object_ref(&());
    let mut update = Update::new(cred.status.as_ref(), generation, now);

    let timing = match Timing::from_spec(&cred.spec) {
        Ok(t) => t,
        Err(err) => {
            update.misconfigured(&err.to_string());
            update.summarize(&Timing::fallback(), None);
            write_status(api, &cred.name_any(), cred.status.as_ref(), &update.status).await?;
            return Ok(Action::await_change());
        }
    };

    // 1. Read the referenced Secrets.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (source, material) = read_source(&secrets, cred).await?;
    let target_name = cred.target_secret_name();
    let target = target::inspect(
        secrets
            .get_opt(&target_name)
            .await
            .map_err(kube_err("get target Secret"))?,
        cred,
    );

    // 2. Decide.
    let last_probe = [
        cred.status
            .as_ref()
            .and_then(|s| s.last_validated.as_ref())
            .map(|t| t.0),
        ctx.last_probe(key),
    ]
    .into_iter()
    .flatten()
    .max();
    let plan = decide::decide(&Observed {
        generation,
        status: cred
            .status
            .as_ref()
            .unwrap_or(&ConnectorCredentialStatus::default()),
        timing,
        source: &source,
        target: &target.state,
        last_probe,
        now,
    });
    tracing::debug!(step = ?plan.step, "decided");

    // 3-4. Verify with the provider and swap.
    let provider = cred.spec.provider;
    let mut pass = Pass {
        ctx,
        cred,
        key,
        now,
        timing,
        secrets: &secrets,
        target: &target,
        update,
        events: Vec::new(),
    };
    let outcome = match &plan.step {
        Step::Idle => Ok(()),
        Step::TargetNotOwned => {
            pass.update.misconfigured(&format!(
                "target Secret {target_name} exists but is not owned by this ConnectorCredential: \
                 set spec.target.name to another name or delete that Secret"
            ));
            Ok(())
        }
        Step::FinishSwap { revision } => {
            pass.finish_swap(revision);
            Ok(())
        }
        Step::Rotate { revision } => {
            let material = material
                .as_ref()
                .expect("decide plans a rotation only for a complete source Secret");
            // Tell users a validation is under way before the provider call, which may take
            // up to the timeout.
            pass.update.validating(revision, provider.as_str());
            let mut shown = Update::new(Some(&pass.update.status), generation, now);
            shown.summarize(&timing, plan.source_problem.as_ref());
            write_status(api, &cred.name_any(), cred.status.as_ref(), &shown.status).await?;
            pass.rotate(revision, material).await?
        }
        Step::Revalidate | Step::Refresh => {
            let active = target
                .active
                .as_ref()
                .expect("decide plans maintenance only with an active credential");
            pass.maintain(active, plan.step == Step::Refresh).await?
        }
    };
    let Pass {
        mut update,
        events: direct_events,
        ..
    } = pass;

    // 5. Write status and tell people what changed.
    update.summarize(&timing, plan.source_problem.as_ref());
    ctx.metrics.credential(
        &ns,
        &cred.name_any(),
        provider,
        update.status.phase.unwrap_or_default(),
        update.status.expires_at.as_ref().map(|t| t.0),
        timing.expiry_warning,
    );
    let old = cred.status.clone().unwrap_or_default();
    write_status(api, &cred.name_any(), cred.status.as_ref(), &update.status).await?;
    for (type_, reason, note) in direct_events {
        events::publish(ctx, &reference, type_, reason, note).await;
    }
    for (type_, reason, note) in events::transitions(&old, &update.status) {
        events::publish(ctx, &reference, type_, reason, note).await;
    }
    outcome.map_err(Error::Provider)?;

    Ok(match (&plan.step, plan.wake_at) {
        (Step::Idle, Some(at)) => Action::requeue(until(now, at).clamp(FOLLOW_UP, timing.interval)),
        (Step::Idle, None) if update.status.active_revision.is_some() => {
            Action::requeue(timing.interval)
        }
        (Step::Idle | Step::TargetNotOwned, None) => Action::await_change(),
        _ => Action::requeue(FOLLOW_UP),
    })
}

/// One reconcile's provider step: what it reads and the status it builds. Each method is
/// one step of the pipeline; a transient provider failure comes back as `Ok(Err(..))` so
/// the status is still written before the error reaches `error_policy`.
struct Pass<'a> {
    ctx: &'a Context,
    cred: &'a ConnectorCredential,
    key: &'a str,
    now: Timestamp,
    timing: Timing,
    secrets: &'a Api<Secret>,
    target: &'a target::Read,
    update: Update,
    events: Vec<(EventType, &'static str, String)>,
}

type StepResult = Result<Result<(), VerifyError>, Error>;

impl Pass<'_> {
    /// Finishes a swap whose status write was lost, from what the target Secret records.
    fn finish_swap(&mut self, revision: &str) {
        if let Some(active) = &self.target.active {
            info!(revision = %status::short(revision), "finishing a swap interrupted before its status write");
            self.update.swapped(revision, &active.record);
            self.events.push((
                EventType::Normal,
                reasons::ROTATED,
                format!("revision {} is active", status::short(revision)),
            ));
        }
    }

    async fn write_target(&self, validated: &target::Validated) -> Result<(), Error> {
        target::write(
            self.secrets,
            self.cred,
            self.target.secret.as_ref(),
            validated,
        )
        .await
        .map_err(kube_err("write target Secret"))?;
        Ok(())
    }

    /// Validates a new source revision and swaps it in if it passes.
    async fn rotate(&mut self, revision: &str, material: &CredentialMaterial) -> StepResult {
        let provider = self.cred.spec.provider;
        let required = required_for_rotation(self.cred);
        let req = VerifyRequest {
            key: self.key,
            spec: &self.cred.spec,
            material,
            required: &required,
            timeout: self.timing.timeout,
        };
        let first = self
            .cred
            .status
            .as_ref()
            .and_then(|s| s.active_revision.as_ref())
            .is_none();
        match target::validate(&self.ctx.providers, &req, revision, self.now).await {
            Ok((validated, verified)) => {
                self.write_target(&validated).await?;
                info!(revision = %status::short(revision), account = %verified.account.id, "swapped in a validated credential");
                self.ctx.metrics.rotation(provider, true);
                self.update
                    .swapped(validated.revision(), validated.record());
                self.ctx.set_last_probe(self.key, self.now);
                let who = account_name(&verified.account);
                self.events.push(if first {
                    (
                        EventType::Normal,
                        reasons::CONNECTED,
                        format!("connected as {who}"),
                    )
                } else {
                    (
                        EventType::Normal,
                        reasons::ROTATED,
                        format!(
                            "revision {} validated and swapped in; now authenticated as {who}",
                            status::short(revision)
                        ),
                    )
                });
                Ok(Ok(()))
            }
            Err(err) if err.is_transient() => {
                self.update
                    .transient(&err, self.timing.failure_threshold, Some(revision));
                Ok(Err(err))
            }
            Err(err) => {
                info!(revision = %status::short(revision), reason = err.reason(), "rotation rejected");
                self.ctx.metrics.rotation(provider, false);
                self.update.rejected(revision, &err);
                let message = self
                    .update
                    .status
                    .rejected
                    .as_ref()
                    .map(|r| r.message.clone());
                self.events.push((
                    EventType::Warning,
                    reasons::ROTATION_REJECTED,
                    message.unwrap_or_default(),
                ));
                Ok(Ok(()))
            }
        }
    }

    /// Probes the active credential, or (with `refresh`) mints it a new access token.
    async fn maintain(&mut self, active: &target::Active, refresh: bool) -> StepResult {
        let required: BTreeSet<String> = self
            .cred
            .spec
            .required_permissions
            .iter()
            .cloned()
            .collect();
        let req = VerifyRequest {
            key: self.key,
            spec: &self.cred.spec,
            material: active.material(),
            required: &required,
            timeout: self.timing.timeout,
        };
        let result = if refresh {
            match self.ctx.providers.refresh(&req).await {
                Ok(tokens) => {
                    let v = target::Validated::refreshed(active, tokens.clone(), self.now);
                    self.write_target(&v).await?;
                    self.update.refreshed(&tokens);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            match self.ctx.providers.verify(&req).await {
                Ok(verified) => {
                    // A rotated refresh token must be persisted before anything else.
                    if verified.tokens.refresh_token.is_some() {
                        let v = target::Validated::revalidated(active, &verified, self.now);
                        self.write_target(&v).await?;
                        self.update.refreshed(&verified.tokens);
                    }
                    self.update.revalidated(&verified);
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        // A failure after the provider already rotated the refresh token (the grant worked,
        // the probe did not): the spent token is dead, so the new one is persisted first.
        if let Err(err) = &result
            && let Some(tokens) = err.rotated()
        {
            let v = target::Validated::refreshed(active, tokens.clone(), self.now);
            self.write_target(&v).await?;
            self.update.refreshed(tokens);
        }
        match result {
            Ok(()) => {
                self.ctx.set_last_probe(self.key, self.now);
                Ok(Ok(()))
            }
            Err(err) if err.is_transient() => {
                self.update
                    .transient(&err, self.timing.failure_threshold, None);
                Ok(Err(err))
            }
            Err(err) => {
                // Probe again on the interval, not in a loop: a dead credential stays dead
                // until somebody re-authenticates.
                self.ctx.set_last_probe(self.key, self.now);
                self.update.active_failed(&err);
                Ok(Ok(()))
            }
        }
    }
}

fn account_name(account: &crate::api::Account) -> &str {
    if account.name.is_empty() {
        &account.id
    } else {
        &account.name
    }
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Decides when to retry a failed reconcile: per-object exponential backoff with jitter,
/// honouring the provider's Retry-After.
pub fn error_policy(guard: Arc<Guarded>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        guard.meta().namespace.as_deref().unwrap_or_default(),
        guard.meta().name.as_deref().unwrap_or_default()
    );
    let delay = ctx.failed(&key, err);
    warn!(credential = %key, reason = err.reason(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Maps a Secret to the ConnectorCredentials that read it (source) or own it (target).
fn credentials_for_secret(
    store: &Store<Guarded>,
    ns: &str,
    secret: &str,
) -> Vec<ObjectRef<Guarded>> {
    store
        .state()
        .iter()
        .filter_map(|g| {
            let cred = g.0.as_ref().ok()?;
            let same_ns = cred.namespace().as_deref() == Some(ns);
            let refers = cred.spec.secret_ref.name == secret || cred.target_secret_name() == secret;
            (same_ns && refers).then(|| ObjectRef::from_obj(g.as_ref()))
        })
        .collect()
}

/// Builds the controller for one namespace (or all, with `None`).
pub fn controller(client: kube::Client, namespace: Option<&str>) -> Controller<Guarded> {
    let (creds, secrets, integrations): (
        Api<Guarded>,
        Api<PartialObjectMeta<Secret>>,
        Api<DeserializeGuard<Integration>>,
    ) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let controller = Controller::new(creds, watcher::Config::default().any_semantic());
    let store = controller.store();
    let seen = in_use::Seen::default();
    // Secrets are watched as metadata only: a rotated Secret triggers its credentials at once,
    // while the data of unrelated Secrets is never transferred or cached. Integrations wake
    // the credentials they reference (or referenced) for the in-use finalizer.
    controller
        .watches(
            integrations,
            watcher::Config::default().any_semantic(),
            move |integration: DeserializeGuard<Integration>| {
                in_use::credentials_for_integration(&seen, &integration)
            },
        )
        .watches(
            secrets,
            watcher::Config::default().any_semantic(),
            move |meta: PartialObjectMeta<Secret>| {
                credentials_for_secret(
                    &store,
                    meta.metadata.namespace.as_deref().unwrap_or_default(),
                    meta.metadata.name.as_deref().unwrap_or_default(),
                )
            },
        )
}

/// Runs the controller until `shutdown` resolves; `reconcile_all` re-reconciles everything
/// whenever it yields.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    reconcile_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = controller(ctx.client.clone(), namespace.as_deref());
    let cache = ctx.caches.track();
    let store = controller.store();
    cache.synced_when(super::store_ready(store));
    controller
        .reconcile_all_on(reconcile_all)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "controller event");
            }
        })
        .await;
    drop(cache);
}
