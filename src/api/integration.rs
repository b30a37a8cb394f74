//! `Integration`: a sync between applications and the credentials it runs on.
//!
//! Its status is the one place a user looks when a sync stops: which connector is broken
//! and which account must be re-authenticated.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Phase;

/// A sync between SaaS applications. Names the ConnectorCredentials it runs on and the
/// workloads that must restart after one of them is rotated.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reconnect.dev",
    version = "v1alpha1",
    kind = "Integration",
    doc = "A sync between SaaS applications: the credentials it runs on, its health, and the workloads to roll after a credential swap.",
    plural = "integrations",
    singular = "integration",
    namespaced,
    status = "IntegrationStatus",
    shortname = "integ",
    category = "reconnect",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Connectors","type":"string","jsonPath":".status.readyConnectors","description":"Connected connectors / all connectors"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationSpec {
    /// The connections this sync runs on, one per application. Names are unique.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("connector names must be unique"))]
    pub connectors: Vec<Connector>,

    /// Workloads in this namespace that read the target Secrets. After a credential swap the
    /// operator rolls them by patching a pod-template annotation; nothing you own is changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub restart_targets: Vec<RestartTarget>,

    /// Stop restarting workloads and writing status churn; health is still reported.
    #[serde(default)]
    pub suspend: bool,
}

/// One side of the sync.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connector {
    /// A short name for this side, used in messages ("procore", "sharepoint").
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// The ConnectorCredential, in this namespace, this side authenticates with.
    pub credential_ref: CredentialRef,

    /// Permissions this sync needs from the credential, on top of the credential's own
    /// requiredPermissions (same vocabulary). A credential that is Connected but lacks one of
    /// these leaves the Integration in PermissionMismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"), inner(length(min = 1, max = 256)))]
    pub required_permissions: Vec<String>,
}

/// A reference to a ConnectorCredential in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// Name of the ConnectorCredential.
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: String,
}

/// A workload to roll after a swap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: RestartKind,
    /// Name of the workload in this namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: String,
}

/// Kinds of workload the operator can roll.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RestartKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// What the operator last observed. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The worst phase among the connectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Connected connectors out of all connectors, as "1/2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_connectors: Option<String>,
    /// Each connector's credential as last seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub connectors: Vec<ConnectorStatus>,
    /// Ready (the summary), Connected, PermissionMismatch, RestartTargetsFound (every
    /// restart target exists; not part of Ready), and Reconciling / Stalled (the same
    /// verdict for kstatus readers such as Flux).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One connector as last seen.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// The connector's name from the spec.
    pub name: String,
    /// The ConnectorCredential it uses.
    pub credential: String,
    /// The credential's phase, from this Integration's point of view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The account the credential authenticates as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The credential's active revision as last rolled out to the restart targets (it
    /// follows the credential once the restart debounce window has passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<String>,
    /// Permissions this Integration requires that the credential's account lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_permissions: Vec<String>,
    /// Why the connector is not Connected, without credential material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
