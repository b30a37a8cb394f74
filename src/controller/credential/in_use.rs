//! In-use protection: a ConnectorCredential that an Integration references carries the
//! finalizer `reconnect.dev/in-use`, so deleting it (the "Disconnect" that breaks a running
//! sync) waits until no Integration uses it.
//!
//! While a deletion waits, the credential is validated and refreshed as usual: the syncs
//! still using it must keep working.
//!
//! This controller owns the finalizer: it adds it while some Integration references the
//! credential and removes it once none does. It learns about references by listing the
//! namespace's Integrations at reconcile time, and is woken by Integration changes through
//! [`credentials_for_integration`], which maps an Integration to the credentials it
//! references now and referenced before (so a dropped reference releases the credential).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::{Guarded, write_status};
use crate::api::conditions::{Reason, types};
use crate::api::{ConnectorCredential, Integration};
use crate::controller::conditions::{self, get};
use crate::controller::events::{Note, publish};
use crate::controller::{Context, Error, FIELD_MANAGER, kube_err};

/// The finalizer on a ConnectorCredential that an Integration references.
pub const FINALIZER: &str = "reconnect.dev/in-use";

/// What to do about the finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Add,
    Remove,
    /// Being deleted while still referenced: keep the finalizer and say why.
    Hold,
    Nothing,
}

fn step(has_finalizer: bool, deleting: bool, used: bool) -> Step {
    match (has_finalizer, deleting, used) {
        (false, false, true) => Step::Add,
        (true, _, false) => Step::Remove,
        (true, true, true) => Step::Hold,
        // Not used and not protected; or deleted before any reference was seen, when
        // Kubernetes no longer accepts new finalizers.
        _ => Step::Nothing,
    }
}

/// The Integrations in `ns` (not themselves being deleted) that reference `credential`,
/// from the controller's Integration cache once it has synced (a listing where no cache is
/// kept). An Integration the cache has not seen yet wakes the credential when it arrives.
async fn users(ctx: &Context, ns: &str, credential: &str) -> Result<Vec<String>, Error> {
    let refers = |i: &Integration| {
        i.meta().deletion_timestamp.is_none()
            && i.spec
                .connectors
                .iter()
                .any(|c| c.credential_ref.name == credential)
    };
    let users: BTreeSet<String> = match ctx.integration_cache(ns) {
        Some(cache) => {
            crate::controller::store_ready(cache.clone()).await;
            cache
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .filter(|i| i.namespace().as_deref() == Some(ns) && refers(i))
                .map(|i| i.name_any())
                .collect()
        }
        None => {
            let api: Api<DeserializeGuard<Integration>> = Api::namespaced(ctx.client.clone(), ns);
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                // The Integration CRD is not installed: nothing can reference the credential.
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Vec::new()),
                Err(source) => return Err(kube_err("list Integrations")(source)),
            };
            list.items
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .filter(|i| refers(i))
                .map(|i| i.name_any())
                .collect()
        }
    };
    Ok(users.into_iter().collect())
}

async fn set_finalizers(
    api: &Api<ConnectorCredential>,
    cred: &ConnectorCredential,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    // The resourceVersion makes this a compare-and-swap: another writer's finalizer is
    // never dropped by a stale list.
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": cred.resource_version(),
    }});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(&cred.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(kube_err("patch ConnectorCredential finalizers"))?;
    Ok(())
}

/// Adds or removes the in-use finalizer as Integrations reference the credential, and holds
/// a deletion while they do. Returns the action to end the reconcile with when nothing else
/// should happen to the credential (it is being deleted and no Integration holds it), `None`
/// when the rotation pipeline runs as usual. A held deletion records `DeletionBlocked` in
/// `cred`'s status (written, and updated in place so the pipeline's own status write keeps it).
pub(super) async fn protect(
    ctx: &Context,
    api: &Api<ConnectorCredential>,
    cred: &mut ConnectorCredential,
) -> Result<Option<Action>, Error> {
    let ns = cred.namespace().unwrap_or_default();
    let name = cred.name_any();
    let users = users(ctx, &ns, &name).await?;
    let has = cred.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = cred.meta().deletion_timestamp.is_some();
    match step(has, deleting, !users.is_empty()) {
        Step::Add => {
            let mut finalizers = cred.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            set_finalizers(api, cred, finalizers).await?;
        }
        Step::Remove => {
            let finalizers = cred
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            set_finalizers(api, cred, finalizers).await?;
            if deleting {
                info!("no Integration uses the credential any more; deletion proceeds");
            }
        }
        Step::Hold => {
            let old = cred.status.clone().unwrap_or_default();
            let mut status = old.clone();
            let message = format!(
                "deletion waits until no Integration uses this credential; still used by Integration {}",
                users.join(", ")
            );
            let before = get(&old.conditions, types::DELETION_BLOCKED).map(|c| c.message.clone());
            conditions::set(
                &mut status.conditions,
                types::DELETION_BLOCKED,
                true,
                Reason::InUse,
                message.clone(),
                cred.meta().generation,
                ctx.clock.now(),
            );
            write_status(api, &name, Some(&old), &status).await?;
            cred.status = Some(status);
            if before.as_deref() != Some(message.as_str()) {
                let note = format!(
                    "ConnectorCredential {name} is still used by Integration {}; it is deleted once none uses it",
                    users.join(", ")
                );
                let note = Note::warning(Reason::InUse, "Protect", note);
                publish(ctx, &cred.object_ref(&()), note).await;
            }
            return Ok(None);
        }
        Step::Nothing => {}
    }
    Ok(deleting.then(Action::await_change))
}

/// Remembers which credentials each Integration referenced when last seen.
pub(super) type Seen = Mutex<HashMap<(String, String), BTreeSet<String>>>;

/// Maps an Integration watch event to the credentials it references now or referenced when
/// last seen, so adding, dropping and deleting references all wake the credentials concerned.
pub(super) fn credentials_for_integration(
    seen: &Seen,
    integration: &DeserializeGuard<Integration>,
) -> Vec<ObjectRef<Guarded>> {
    let ns = integration.meta().namespace.clone().unwrap_or_default();
    let name = integration.meta().name.clone().unwrap_or_default();
    let now: BTreeSet<String> = integration
        .0
        .as_ref()
        .map(|i| {
            i.spec
                .connectors
                .iter()
                .map(|c| c.credential_ref.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let before = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((ns.clone(), name), now.clone())
        .unwrap_or_default();
    before
        .union(&now)
        .map(|c| ObjectRef::new(c).within(&ns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizer_steps() {
        // (has finalizer, deleting, used) -> step
        let table = [
            ((false, false, false), Step::Nothing),
            ((false, false, true), Step::Add),
            ((true, false, true), Step::Nothing),
            ((true, false, false), Step::Remove),
            ((true, true, true), Step::Hold),
            ((true, true, false), Step::Remove),
            ((false, true, true), Step::Nothing),
            ((false, true, false), Step::Nothing),
        ];
        for ((has, deleting, used), want) in table {
            assert_eq!(step(has, deleting, used), want, "{has} {deleting} {used}");
        }
    }

    #[test]
    fn an_integration_maps_to_the_credentials_it_references_now_and_before() {
        let seen = Seen::default();
        let integration = |refs: &[&str]| {
            let connectors: Vec<_> = refs
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"name": format!("c{i}"), "credentialRef": {"name": r}}))
                .collect();
            let obj = json!({
                "apiVersion": "reconnect.dev/v1alpha1", "kind": "Integration",
                "metadata": {"name": "sync", "namespace": "acme"},
                "spec": {"connectors": connectors},
            });
            serde_json::from_value::<DeserializeGuard<Integration>>(obj).unwrap()
        };
        let names = |refs: Vec<ObjectRef<Guarded>>| {
            refs.into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap(), r.name))
                .collect::<Vec<_>>()
        };
        let first = credentials_for_integration(&seen, &integration(&["procore", "sharepoint"]));
        assert_eq!(names(first), ["acme/procore", "acme/sharepoint"]);
        let dropped = credentials_for_integration(&seen, &integration(&["procore"]));
        assert_eq!(names(dropped), ["acme/procore", "acme/sharepoint"]);
        let again = credentials_for_integration(&seen, &integration(&["procore"]));
        assert_eq!(names(again), ["acme/procore"]);
    }
}
