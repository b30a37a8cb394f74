//! The two custom resources, API group `reconnect.dev`, version `v1alpha1`.

pub mod conditions;
pub mod connector_credential;
pub mod duration;
pub mod integration;

pub use conditions::Phase;
pub use connector_credential::{
    Account, ActiveHealth, AuthType, ConnectorCredential, ConnectorCredentialSpec,
    ConnectorCredentialStatus, HealthState, PermissionPolicy, Provider, Rejection, RejectionReason,
    SecretKeys, SecretRef, TargetSpec, ValidationSpec,
};
pub use integration::{
    Connector, ConnectorStatus, CredentialRef, Integration, IntegrationSpec, IntegrationStatus,
    RestartKind, RestartTarget,
};

/// An RFC 1123 DNS subdomain: the names of Secrets and of our own objects.
pub(crate) const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A valid Secret data key.
pub(crate) const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_credential_gets_the_documented_defaults() {
        let cred: ConnectorCredential = serde_json::from_value(json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "ConnectorCredential",
            "metadata": {"name": "procore-sync", "namespace": "acme"},
            "spec": {"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "procore-sync"}},
        }))
        .unwrap();
        let spec = &cred.spec;
        assert_eq!(spec.permission_policy, PermissionPolicy::Superset);
        assert_eq!(spec.validation.interval, "15m");
        assert_eq!(spec.validation.timeout, "10s");
        assert_eq!(spec.validation.failure_threshold, 3);
        assert_eq!(spec.refresh_before, "10m");
        assert_eq!(spec.expiry_warning, "336h");
        assert_eq!(spec.secret_ref.keys, SecretKeys::default());
        assert!(spec.required_permissions.is_empty());
        assert_eq!(cred.target_secret_name(), "procore-sync-active");
    }

    #[test]
    fn full_credential_round_trips() {
        let value = json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "ConnectorCredential",
            "metadata": {"name": "sp", "namespace": "acme", "generation": 4},
            "spec": {
                "provider": "microsoft",
                "auth": "RefreshToken",
                "secretRef": {"name": "sp-src", "keys": {"clientId": "id", "clientSecret": "secret", "refreshToken": "rt"}},
                "endpoint": "https://login.microsoftonline.us",
                "params": {"tenantId": "t-1", "cloud": "usgov"},
                "requiredPermissions": ["Sites.ReadWrite.All"],
                "permissionPolicy": "Required",
                "validation": {"interval": "30m", "timeout": "5s", "failureThreshold": 5},
                "refreshBefore": "5m",
                "expiryWarning": "720h",
                "target": {"name": "sp-live"},
            },
            "status": {
                "observedGeneration": 4,
                "phase": "PermissionMismatch",
                "account": {"id": "4567", "name": "svc-sync@acme.com"},
                "permissions": ["Sites.ReadWrite.All"],
                "activeRevision": "sha256:abc",
                "rejected": {"revision": "sha256:def", "reason": "PermissionMismatch", "message": "missing Sites.ReadWrite.All", "at": "2026-11-22T10:00:00Z"},
                "expiresAt": "2027-02-20T10:00:00Z",
                "accessTokenExpiresAt": "2026-11-22T11:00:00Z",
                "lastValidated": "2026-11-22T10:00:00Z",
                "lastRotated": "2026-11-21T10:00:00Z",
                "consecutiveFailures": 2,
                "conditions": [{"type": "Ready", "status": "False", "reason": "PermissionMismatch", "message": "m", "lastTransitionTime": "2026-11-22T10:00:00Z", "observedGeneration": 4}],
            },
        });
        let cred: ConnectorCredential = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(cred.target_secret_name(), "sp-live");
        assert_eq!(
            cred.status.as_ref().unwrap().phase,
            Some(Phase::PermissionMismatch)
        );
        assert_eq!(serde_json::to_value(&cred).unwrap(), value);
    }

    #[test]
    fn integration_round_trips_minimal_and_full() {
        let minimal = json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": "i"},
            "spec": {"connectors": [{"name": "a", "credentialRef": {"name": "a"}}], "suspend": false},
        });
        let integ: Integration = serde_json::from_value(minimal.clone()).unwrap();
        assert!(!integ.spec.suspend && integ.spec.restart_targets.is_empty());
        assert_eq!(serde_json::to_value(&integ).unwrap(), minimal);

        let full = json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": "i", "namespace": "acme"},
            "spec": {
                "connectors": [{"name": "procore", "credentialRef": {"name": "p"}, "requiredPermissions": ["projects:read_only"]}],
                "restartTargets": [{"kind": "StatefulSet", "name": "sync"}],
                "suspend": true,
            },
            "status": {
                "observedGeneration": 2,
                "phase": "ConnectionLost",
                "readyConnectors": "0/1",
                "connectors": [{"name": "procore", "credential": "p", "phase": "ConnectionLost", "account": "svc@acme.com", "activeRevision": "sha256:1", "missingPermissions": ["x"], "message": "m"}],
                "conditions": [],
            },
        });
        let integ: Integration = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(integ.spec.restart_targets[0].kind, RestartKind::StatefulSet);
        let mut expected = full;
        // Empty lists are omitted on the way out.
        expected["status"]
            .as_object_mut()
            .unwrap()
            .remove("conditions");
        assert_eq!(serde_json::to_value(&integ).unwrap(), expected);
    }

    #[test]
    fn unknown_provider_and_auth_are_refused_by_the_types_too() {
        let err = serde_json::from_value::<ConnectorCredentialSpec>(json!({
            "provider": "box", "auth": "ApiKey", "secretRef": {"name": "x"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `box`"), "{err}");
    }
}
