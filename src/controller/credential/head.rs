//! What the credential controller caches of each ConnectorCredential: its metadata, the two
//! Secret names the Secret index needs, and the two status fields that pick a reconcile's
//! priority. A reconcile reads its object afresh, so nothing else of a cached credential
//! is ever read.
//!
//! The watch decodes straight into this type, so the rest of each object (spec details,
//! conditions, permissions, accounts) is never held at all: at 10,000 credentials the cache
//! is about half the size the full type takes even when emptied (docs/performance.md).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

use crate::api::ConnectorCredential;

/// A ConnectorCredential as the controller's cache holds it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CredentialHead {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HeadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HeadStatus>,
}

/// Of the spec, the Secrets it names.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadSpec {
    #[serde(default)]
    pub secret_ref: Named,
    #[serde(default)]
    pub target: Named,
}

/// An object reference by name only.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Named {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Of the status, what picks a reconcile's priority.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<String>,
}

impl CredentialHead {
    /// The source Secret's name (empty when the object names none: the full read reports it).
    pub fn source_secret_name(&self) -> &str {
        self.spec.secret_ref.name.as_deref().unwrap_or_default()
    }

    /// The target Secret's name, as [`ConnectorCredential::target_secret_name`] gives it.
    pub fn target_secret_name(&self) -> String {
        match &self.spec.target.name {
            Some(name) => name.clone(),
            None => format!(
                "{}-active",
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }

    /// Routine upkeep: the credential has an active revision and its status is up to date
    /// with its spec.
    pub fn settled(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.active_revision.is_some() && s.observed_generation == self.metadata.generation
        })
    }
}

impl Resource for CredentialHead {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ConnectorCredential::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ConnectorCredential::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ConnectorCredential::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ConnectorCredential::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_cache_needs_from_a_full_object_and_drops_the_rest() {
        let head: CredentialHead = serde_json::from_value(serde_json::json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "ConnectorCredential",
            "metadata": {"name": "c", "namespace": "ns", "generation": 3},
            "spec": {
                "provider": "procore", "auth": "RefreshToken",
                "secretRef": {"name": "src", "keys": {"refreshToken": "rt"}},
                "target": {"name": "tgt"},
                "params": {"companyId": "1"},
            },
            "status": {
                "observedGeneration": 3,
                "activeRevision": "sha256:aa",
                "permissions": ["company:1"],
            },
        }))
        .unwrap();
        assert_eq!(head.source_secret_name(), "src");
        assert_eq!(head.target_secret_name(), "tgt");
        assert!(head.settled());
        let mut default_target = head.clone();
        default_target.spec.target.name = None;
        assert_eq!(default_target.target_secret_name(), "c-active");
        let mut changed = head.clone();
        changed.metadata.generation = Some(4);
        assert!(!changed.settled(), "a spec change is not routine");
        // The same kind, group, version and plural as the full type: one API path.
        assert_eq!(
            CredentialHead::url_path(&(), Some("ns")),
            ConnectorCredential::url_path(&(), Some("ns"))
        );
    }
}
