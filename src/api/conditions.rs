//! Condition types, reasons and phases shared by both resources.
//!
//! Reasons are stable CamelCase strings: GitOps tools, alerts and users key on them, so they
//! live here, once, and change only with a changelog entry.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition `type` values.
pub mod types {
    /// The one summary GitOps tools (Argo CD, Flux, kstatus) read.
    pub const READY: &str = "Ready";
    /// The credential (or, for an Integration, every connector) can reach its provider.
    pub const CONNECTED: &str = "Connected";
    /// An account lacks required or previously held permissions.
    pub const PERMISSION_MISMATCH: &str = "PermissionMismatch";
    /// A new source revision is being validated.
    pub const ROTATING: &str = "Rotating";
    /// The credential itself expires inside the `expiryWarning` window.
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    /// Every restart target an Integration names exists.
    pub const RESTART_TARGETS_FOUND: &str = "RestartTargetsFound";
    /// A ConnectorCredential's deletion waits until no Integration uses it.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// kstatus: the operator is still working towards the desired state (validating, or not
    /// validated yet). Flux and other kstatus readers report InProgress.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: the operator cannot make progress without a person (a lost connection, a
    /// permission shortfall, a spec or Secret to fix). kstatus readers report Failed.
    pub const STALLED: &str = "Stalled";
}

/// A condition `reason` (also an Event reason), typed: status and events are rendered from
/// it and never parse one back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Validated against the provider and in use.
    Connected,
    /// The provider says the active credential is dead (revoked, expired, user deactivated).
    ConnectionLost,
    /// The referenced source Secret does not exist.
    SecretNotFound,
    /// The source Secret lacks a key the auth type needs.
    MissingKey,
    /// The provider could not be reached or answered with a transient error.
    ProviderUnreachable,
    /// The spec cannot work as written (endpoint, params, auth type); a user must fix it.
    Misconfigured,
    /// An account lacks permissions it must hold.
    PermissionMismatch,
    /// Every required permission is held.
    PermissionsSatisfied,
    /// A new source revision is being validated.
    Validating,
    /// No rotation in progress.
    Idle,
    /// A new revision passed validation and was swapped into the target Secret.
    Rotated,
    /// A new revision failed validation; the target Secret kept the previous material.
    RotationRejected,
    /// Nothing has been validated yet.
    Pending,
    /// The credential expires inside the warning window.
    ExpiringSoon,
    /// The credential's expiry, when known, is outside the warning window.
    NotExpiring,
    /// A referenced ConnectorCredential does not exist.
    CredentialNotFound,
    /// The object is being deleted but is still referenced.
    InUse,
    /// A restart target named by an Integration does not exist.
    RestartTargetNotFound,
    /// Every restart target an Integration names exists (or it names none).
    RestartTargetsFound,
    /// An Integration rolled its restart targets after a credential swap.
    Restarted,
    /// The target Secret's content no longer matches what the operator validated and wrote
    /// (a hand edit, another controller, a restore).
    TargetAltered,
    /// The target Secret was rewritten with validated material after it had been altered.
    TargetRestored,
    /// A Secret of the target's name exists and is not owned by this ConnectorCredential.
    TargetNotOwned,
}

impl Reason {
    /// The reason as conditions and events carry it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Connected => "Connected",
            Reason::ConnectionLost => "ConnectionLost",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::MissingKey => "MissingKey",
            Reason::ProviderUnreachable => "ProviderUnreachable",
            Reason::Misconfigured => "Misconfigured",
            Reason::PermissionMismatch => "PermissionMismatch",
            Reason::PermissionsSatisfied => "PermissionsSatisfied",
            Reason::Validating => "Validating",
            Reason::Idle => "Idle",
            Reason::Rotated => "Rotated",
            Reason::RotationRejected => "RotationRejected",
            Reason::Pending => "Pending",
            Reason::ExpiringSoon => "ExpiringSoon",
            Reason::NotExpiring => "NotExpiring",
            Reason::CredentialNotFound => "CredentialNotFound",
            Reason::InUse => "InUse",
            Reason::RestartTargetNotFound => "RestartTargetNotFound",
            Reason::RestartTargetsFound => "RestartTargetsFound",
            Reason::Restarted => "Restarted",
            Reason::TargetAltered => "TargetAltered",
            Reason::TargetRestored => "TargetRestored",
            Reason::TargetNotOwned => "TargetNotOwned",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase of a ConnectorCredential or an Integration: one word for `kubectl get`. Only
/// `Pending` means "wait"; every phase but `Connected` and `Pending` needs a person to act.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Phase {
    /// Not validated yet, or a validation is under way: wait.
    #[default]
    Pending,
    /// Validated and in use.
    Connected,
    /// The provider rejects the credential in use (or cannot be reached for it), or the
    /// target Secret was altered and cannot be restored: an account must be re-authenticated
    /// or the target repaired.
    ConnectionLost,
    /// The account lacks required or previously held permissions.
    PermissionMismatch,
    /// The newest source revision was refused by the provider (dead or invalid); the previous
    /// credential stays in use.
    RotationRejected,
    /// The spec or the source Secret cannot work as written (missing Secret or key, unknown
    /// parameter, a target Secret the operator does not own): fix the object.
    Misconfigured,
}

impl Phase {
    /// Every phase, in the order of [`Phase::severity`].
    pub const ALL: [Phase; 6] = [
        Phase::Connected,
        Phase::Pending,
        Phase::RotationRejected,
        Phase::PermissionMismatch,
        Phase::Misconfigured,
        Phase::ConnectionLost,
    ];

    /// The phase as it appears in YAML and printer columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Connected => "Connected",
            Phase::ConnectionLost => "ConnectionLost",
            Phase::PermissionMismatch => "PermissionMismatch",
            Phase::RotationRejected => "RotationRejected",
            Phase::Misconfigured => "Misconfigured",
        }
    }

    /// How bad the phase is for a sync that depends on it (an Integration takes the worst of
    /// its connectors): a rejected rotation leaves the old credential working, a lost
    /// connection stops the sync.
    pub fn severity(self) -> u8 {
        match self {
            Phase::Connected => 0,
            Phase::Pending => 1,
            Phase::RotationRejected => 2,
            Phase::PermissionMismatch => 3,
            Phase::Misconfigured => 4,
            Phase::ConnectionLost => 5,
        }
    }

    /// Whether a person must act (kstatus: Stalled; Argo CD: Degraded).
    pub fn needs_action(self) -> bool {
        !matches!(self, Phase::Connected | Phase::Pending)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON schema of a `conditions` list: `metav1.Condition` items merged by `type`
/// under server-side apply.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema =
        <Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
