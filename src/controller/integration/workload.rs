//! The workloads an Integration restarts (Deployments, StatefulSets, DaemonSets). Every read
//! and write of a restart target goes through here, and the kind is dispatched in one place
//! ([`dispatch`]).

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::restart;
use crate::api::{RestartKind, RestartTarget};
use crate::controller::{Error, FIELD_MANAGER, kube_err};

/// A workload kind a restart target can name.
trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug
{
    /// The generation its controller observed and whether every replica is updated and
    /// available; `None` when no controller reports on it.
    fn progress(&self) -> Option<(i64, bool)>;

    /// Its pod template's annotations.
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>>;
}

impl Workload for Deployment {
    fn progress(&self) -> Option<(i64, bool)> {
        let status = self.status.as_ref()?;
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let done = status.updated_replicas.unwrap_or(0) >= want
            && status.available_replicas.unwrap_or(0) >= want
            && status.replicas.unwrap_or(0) <= want;
        Some((status.observed_generation?, done))
    }

    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
    }
}

impl Workload for StatefulSet {
    fn progress(&self) -> Option<(i64, bool)> {
        let status = self.status.as_ref()?;
        let want = self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let done = status.updated_replicas.unwrap_or(0) >= want
            && status.ready_replicas.unwrap_or(0) >= want
            && status.current_revision == status.update_revision;
        Some((status.observed_generation?, done))
    }

    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
    }
}

impl Workload for DaemonSet {
    fn progress(&self) -> Option<(i64, bool)> {
        let status = self.status.as_ref()?;
        let want = status.desired_number_scheduled;
        let done = status.updated_number_scheduled.unwrap_or(0) >= want
            && status.number_available.unwrap_or(0) >= want;
        Some((status.observed_generation?, done))
    }

    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()
    }
}

/// Calls generic `$f::<K>(args)` with `K` the workload type of `$kind`.
macro_rules! dispatch {
    ($kind:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $kind {
            RestartKind::Deployment => $f::<Deployment>($($arg),*).await,
            RestartKind::StatefulSet => $f::<StatefulSet>($($arg),*).await,
            RestartKind::DaemonSet => $f::<DaemonSet>($($arg),*).await,
        }
    };
}

/// Rolls `target` with `patch`, or only checks that it exists. `Ok(false)`: not found.
pub(super) async fn touch(
    client: &Client,
    ns: &str,
    target: &RestartTarget,
    patch: Option<&serde_json::Value>,
) -> Result<bool, Error> {
    dispatch!(target.kind, touch_as(client, ns, &target.name, patch))
}

async fn touch_as<K: Workload>(
    client: &Client,
    ns: &str,
    name: &str,
    patch: Option<&serde_json::Value>,
) -> Result<bool, Error> {
    let api = Api::<K>::namespaced(client.clone(), ns);
    match patch {
        Some(patch) => {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match api.patch(name, &params, &Patch::Merge(patch)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
                Err(source) => Err(Error::Kube {
                    call: "roll restart target",
                    source,
                }),
            }
        }
        None => Ok(api
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("get restart target"))?
            .is_some()),
    }
}

/// Whether `target`'s pod template already carries a roll for `revisions`.
pub(super) async fn carries(
    client: &Client,
    ns: &str,
    target: &RestartTarget,
    revisions: &str,
) -> Result<bool, Error> {
    dispatch!(target.kind, carries_as(client, ns, &target.name, revisions))
}

async fn carries_as<K: Workload>(
    client: &Client,
    ns: &str,
    name: &str,
    revisions: &str,
) -> Result<bool, Error> {
    let object = Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(kube_err("get restart target"))?;
    Ok(object
        .as_ref()
        .and_then(Workload::template_annotations)
        .and_then(|a| a.get(restart::REVISIONS))
        .is_some_and(|r| r == revisions))
}

/// Whether a rollout is over: its workload is gone, reports no rollout (no controller acts
/// on it), or has every replica updated and available at its current generation. A failed
/// read counts as not over (the rollout's hold bounds it).
pub(super) async fn rolled_out(client: &Client, ns: &str, kind: RestartKind, name: &str) -> bool {
    dispatch!(kind, rolled_out_as(client, ns, name))
}

async fn rolled_out_as<K: Workload>(client: &Client, ns: &str, name: &str) -> bool {
    match Api::<K>::namespaced(client.clone(), ns).get_opt(name).await {
        Ok(None) => true,
        Ok(Some(workload)) => {
            let generation = workload.meta().generation.unwrap_or(0);
            workload
                .progress()
                .is_none_or(|(observed, done)| observed >= generation && done)
        }
        Err(_) => false,
    }
}
