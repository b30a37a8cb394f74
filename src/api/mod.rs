//! The two custom resources, API group `reconnect.dev`, version `v1alpha1`.

pub mod conditions;
pub mod connector_credential;
pub mod duration;
pub mod integration;

pub use conditions::Phase;
pub use connector_credential::{
    Account, AuthType, ConnectorCredential, ConnectorCredentialSpec, ConnectorCredentialStatus,
    PermissionPolicy, Provider, Rejection, SecretKeys, SecretRef, TargetSpec, ValidationSpec,
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
