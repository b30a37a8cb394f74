//! `ConnectorCredential`: one credential for one provider account.
//!
//! The user owns the spec and the source Secret; the operator owns the status and the target
//! Secret. Doc comments here become the descriptions `kubectl explain` prints.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Phase;

/// A credential for one SaaS provider account, kept in a Secret. When the Secret changes, the
/// operator validates the new credential against the provider and only then copies it into
/// the target Secret that the sync workloads mount.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reconnect.dev",
    version = "v1alpha1",
    kind = "ConnectorCredential",
    doc = "A credential for one SaaS provider account: the source Secret the user rotates, validated by the operator before it reaches the target Secret that workloads mount.",
    plural = "connectorcredentials",
    singular = "connectorcredential",
    namespaced,
    status = "ConnectorCredentialStatus",
    shortname = "ccred",
    shortname = "ccreds",
    category = "reconnect",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".status.account.name"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.provider in ['simpro', 'safetyculture'] ? self.auth == 'ApiKey' : true").message("providers simpro and safetyculture accept only auth ApiKey"),
    validation = Rule::new("self.provider in ['dropbox', 'google'] ? self.auth == 'RefreshToken' : true").message("providers dropbox and google accept only auth RefreshToken"),
    validation = Rule::new("self.provider in ['procore', 'microsoft', 'salesforce', 'oauth2'] ? self.auth in ['ClientCredentials', 'RefreshToken'] : true").message("providers procore, microsoft, salesforce and oauth2 accept auth ClientCredentials or RefreshToken"),
    validation = Rule::new("self.provider in ['simpro', 'oauth2'] ? has(self.endpoint) : true").message("providers simpro and oauth2 need spec.endpoint (the Simpro instance URL, or the OAuth2 issuer)"),
    validation = Rule::new("self.provider == 'microsoft' ? (has(self.params) && 'tenantId' in self.params) : true").message("provider microsoft needs params.tenantId"),
    validation = Rule::new("!has(self.target) || !has(self.target.name) || self.target.name != self.secretRef.name").message("target.name must differ from secretRef.name: the operator never writes the source Secret"),
)]
pub struct ConnectorCredentialSpec {
    /// The SaaS provider this credential authenticates to: procore, microsoft (Entra ID +
    /// Graph, SharePoint/Office 365), salesforce, simpro, safetyculture, dropbox, google
    /// (Google Drive), or oauth2 (any RFC 6749 server, with RFC 8414 discovery).
    pub provider: Provider,

    /// How the credential authenticates. ClientCredentials: an OAuth2 client id and secret
    /// (Procore DMSA, Entra app registration, Salesforce integration user). RefreshToken: a
    /// user's OAuth2 refresh token (plus client id and, for confidential clients, secret).
    /// ApiKey: a static API key or token (Simpro, SafetyCulture). Which types a provider
    /// accepts is checked on admission.
    pub auth: AuthType,

    /// The Secret, in this namespace, that holds the credential. Change this Secret to rotate;
    /// the operator validates the new material before anything uses it.
    pub secret_ref: SecretRef,

    /// Overrides the provider's default base URL: a Procore sandbox
    /// (https://sandbox.procore.com), a Microsoft sovereign cloud login host, a Salesforce My
    /// Domain, the Simpro instance URL (https://acme.simprosuite.com), or the OAuth2 issuer.
    /// Must be https; plain http is accepted only for loopback hosts (tests and demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('https://') || self.matches('^http://(localhost|127\\\\.[0-9]+\\\\.[0-9]+\\\\.[0-9]+|\\\\[::1\\\\])(:[0-9]+)?(/.*)?$')").message("endpoint must be an https:// URL (http:// only for localhost, 127.x.x.x or [::1])"),
        validation = Rule::new("!self.contains('@') && !self.contains('?') && !self.contains('#')").message("endpoint must not carry user info, a query or a fragment"),
    )]
    pub endpoint: Option<String>,

    /// Provider-specific settings. procore: companyId (required for ClientCredentials/DMSA,
    /// sent as the Procore-Company-Id header), projectId (optional permission scope).
    /// microsoft: tenantId (required), cloud (global | usgov | usgovdod | china; default
    /// global), siteId (optional SharePoint site to probe), scope (optional, default
    /// <graph>/.default). salesforce: apiVersion (default v62.0). simpro: companyId (default
    /// 0). oauth2: tokenUrl, introspectionUrl, probeUrl, scope. Unknown keys are rejected
    /// by the operator with a Misconfigured condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    // Values are bounded by the schema (maxLength), and the rules index the map
    // (`self['companyId']`) rather than select a field: kube-apiserver estimates the cost of
    // a field selection on a map as unbounded and refuses the whole CRD.
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 2048}))]
    #[x_kube(
        validation = Rule::new("!('companyId' in self) || self['companyId'].matches('^[0-9]{1,19}$')").message("params.companyId must be a non-negative whole number"),
        validation = Rule::new("!('cloud' in self) || self['cloud'] in ['global', 'usgov', 'usgovdod', 'china']").message("params.cloud must be one of global, usgov, usgovdod, china"),
    )]
    pub params: BTreeMap<String, String>,

    /// Permissions the account must hold, in the provider's vocabulary. procore:
    /// company:<id>, project:<id>, <tool>:<level> (level none/read_only/standard/admin; a
    /// higher level satisfies a lower one). microsoft: an application permission or delegated
    /// scope (Sites.ReadWrite.All) or site:<site-id>. salesforce: an OAuth scope (api) or
    /// permission:<UserPermissionAccess field> (permission:PermissionsApiEnabled). simpro:
    /// company:<id>. safetyculture: organisation:<id>. dropbox, google, oauth2: an OAuth scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"), inner(length(min = 1, max = 256)))]
    pub required_permissions: Vec<String>,

    /// Which permissions a new credential must hold before it replaces the active one.
    /// Superset (default): everything the active account held plus requiredPermissions, so a
    /// weaker account is never swapped in. Required: only requiredPermissions.
    #[serde(default)]
    pub permission_policy: PermissionPolicy,

    /// How often, and how patiently, the active credential is re-validated.
    #[serde(default)]
    pub validation: ValidationSpec,

    /// Refresh the access token this long before it expires (Go duration, 0s to 24h).
    #[serde(default = "default_refresh_before")]
    #[schemars(length(max = 32), regex(pattern = super::duration::PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')").message("refreshBefore must be at most 24h"))]
    pub refresh_before: String,

    /// Warn (condition ExpiringSoon, Warning event) when the credential itself expires within
    /// this window (Go duration, 1h to 8760h). Default 336h (14 days).
    #[serde(default = "default_expiry_warning")]
    #[schemars(length(max = 32), regex(pattern = super::duration::PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h') && duration(self) <= duration('8760h')").message("expiryWarning must be between 1h and 8760h"))]
    pub expiry_warning: String,

    /// The Secret the operator writes with the validated credential and fresh access token.
    /// Workloads mount this one, never the source. Default name: <metadata.name>-active.
    #[serde(default)]
    pub target: TargetSpec,
}

/// A provider the operator knows how to validate against.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Procore (DMSA client credentials or user refresh tokens).
    Procore,
    /// Microsoft Entra ID and Graph (SharePoint, Office 365).
    Microsoft,
    /// Salesforce.
    Salesforce,
    /// Simpro (API key on the instance URL).
    Simpro,
    /// SafetyCulture (API token).
    #[serde(rename = "safetyculture")]
    SafetyCulture,
    /// Dropbox.
    Dropbox,
    /// Google (Drive).
    Google,
    /// Any RFC 6749 authorization server.
    #[serde(rename = "oauth2")]
    OAuth2,
}

impl Provider {
    /// Every provider, in the order the docs list them.
    pub const ALL: [Provider; 8] = [
        Provider::Procore,
        Provider::Microsoft,
        Provider::Salesforce,
        Provider::Simpro,
        Provider::SafetyCulture,
        Provider::Dropbox,
        Provider::Google,
        Provider::OAuth2,
    ];

    /// The provider's name as written in `spec.provider` (also a low-cardinality metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Procore => "procore",
            Provider::Microsoft => "microsoft",
            Provider::Salesforce => "salesforce",
            Provider::Simpro => "simpro",
            Provider::SafetyCulture => "safetyculture",
            Provider::Dropbox => "dropbox",
            Provider::Google => "google",
            Provider::OAuth2 => "oauth2",
        }
    }

    // `supported_auth()` (the auth types each provider accepts, which the CEL rules above
    // restate) is a provider rule: it is defined in `providers`, beside the providers.
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a credential authenticates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AuthType {
    /// OAuth2 client credentials grant: `client_id` and `client_secret`.
    ClientCredentials,
    /// OAuth2 refresh token grant: `client_id`, `client_secret` (confidential clients) and
    /// `refresh_token`.
    RefreshToken,
    /// A static API key or token: `api_key`.
    ApiKey,
}

impl AuthType {
    /// The auth type as written in `spec.auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ClientCredentials => "ClientCredentials",
            AuthType::RefreshToken => "RefreshToken",
            AuthType::ApiKey => "ApiKey",
        }
    }
}

impl std::fmt::Display for AuthType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Secret in the same namespace, and which of its keys hold the credential.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the ConnectorCredential's own namespace (other namespaces are
    /// never read).
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: String,

    /// Renames of the Secret keys, when the Secret does not use the defaults client_id,
    /// client_secret, refresh_token and api_key. Example: {clientSecret: secret}.
    #[serde(default)]
    pub keys: SecretKeys,
}

/// Secret key names for each credential field; unset fields use the default key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    /// Key holding the OAuth2 client id (default client_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::SECRET_KEY))]
    pub client_id: Option<String>,
    /// Key holding the OAuth2 client secret (default client_secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::SECRET_KEY))]
    pub client_secret: Option<String>,
    /// Key holding the OAuth2 refresh token (default refresh_token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::SECRET_KEY))]
    pub refresh_token: Option<String>,
    /// Key holding the API key or token (default api_key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::SECRET_KEY))]
    pub api_key: Option<String>,
}

/// Which permissions a replacement credential must hold.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PermissionPolicy {
    /// Everything the active account held, plus requiredPermissions.
    #[default]
    Superset,
    /// Only requiredPermissions.
    Required,
}

/// Re-validation schedule and failure tolerance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSpec {
    /// How often the active credential is probed against the provider (Go duration, 1m to
    /// 24h). Each credential has its own slot in the interval, so that many credentials are
    /// not probed together: probes come exactly one interval apart, and the first one after
    /// a swap or an operator restart comes within one and a half intervals. A rejected
    /// revision is retried no sooner than this either. Default 15m.
    #[serde(default = "default_interval")]
    #[schemars(length(max = 32), regex(pattern = super::duration::PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("validation.interval must be between 1m and 24h"))]
    pub interval: String,

    /// How long one provider call may take before it counts as a transient failure (Go
    /// duration, 1s to 5m). Default 10s.
    #[serde(default = "default_timeout")]
    #[schemars(length(max = 32), regex(pattern = super::duration::PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('5m')").message("validation.timeout must be between 1s and 5m"))]
    pub timeout: String,

    /// Consecutive transient failures (timeouts, 429, 5xx) tolerated before the credential is
    /// reported ConnectionLost. Default 3.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

impl Default for ValidationSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            timeout: default_timeout(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

/// The operator-owned Secret that holds the validated credential.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Name of the target Secret in this namespace. Default <metadata.name>-active. It must
    /// not be the source Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = super::DNS_SUBDOMAIN))]
    pub name: Option<String>,
}

/// What the operator last observed. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorCredentialStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Connected, ConnectionLost or PermissionMismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The provider account the active credential authenticates as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    /// Permissions the active account holds, in the provider's vocabulary (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// sha256 digest of the source Secret material now in the target Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<String>,
    /// The newest source revision that failed validation, and why. Cleared by a successful
    /// rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
    /// When the credential itself stops working unless renewed (refresh-token or API-token
    /// inactivity expiry, secret expiry), when the provider makes it known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the access token in the target Secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<Time>,
    /// When the active credential last passed validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_validated: Option<Time>,
    /// When a new revision was last swapped into the target Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated: Option<Time>,
    /// Consecutive transient failures since the last successful validation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: i32,
    /// The active credential's health as its last probe or refresh established it. Absent
    /// until a credential is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_health: Option<ActiveHealth>,
    /// Ready (the summary), Connected, PermissionMismatch, Rotating, ExpiringSoon,
    /// DeletionBlocked (deletion waits while Integrations use the credential), and Reconciling
    /// / Stalled (the same verdict for kstatus readers such as Flux).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::conditions::conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A provider account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// The provider's id for the account.
    pub id: String,
    /// A human-readable name: login, e-mail or display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Account {
    /// What to call the account in messages: its name, else its id.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }
}

/// The active credential's health.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveHealth {
    /// Healthy; Lost (the provider rejects it: re-authenticate); Unreachable
    /// (failureThreshold consecutive transient failures); PermissionMismatch (it no longer
    /// holds a required permission); Misconfigured (the provider refused the request as the
    /// spec configures it).
    pub state: HealthState,
    /// What the provider said, without any credential material; empty when Healthy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the state last changed.
    pub since: Time,
}

/// The states of [`ActiveHealth`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum HealthState {
    /// The last probe or refresh succeeded.
    Healthy,
    /// The provider rejects the credential.
    Lost,
    /// The provider could not be reached failureThreshold times in a row.
    Unreachable,
    /// The account no longer holds a required permission.
    PermissionMismatch,
    /// The provider refused the request as configured (endpoint, params).
    Misconfigured,
}

/// Why a source revision was refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub enum RejectionReason {
    /// The provider rejected the credential itself (dead, revoked, wrong secret).
    ConnectionLost,
    /// The account lacks a required or previously held permission.
    PermissionMismatch,
    /// The source Secret lacks a key the auth type needs.
    MissingKey,
    /// The spec cannot work with this credential as written.
    Misconfigured,
    /// A reason written by another version of the operator.
    #[serde(other)]
    Other,
}

impl RejectionReason {
    /// The reason as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::ConnectionLost => "ConnectionLost",
            RejectionReason::PermissionMismatch => "PermissionMismatch",
            RejectionReason::MissingKey => "MissingKey",
            RejectionReason::Misconfigured => "Misconfigured",
            RejectionReason::Other => "Other",
        }
    }
}

/// A source revision that failed validation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// sha256 digest of the rejected source Secret material.
    pub revision: String,
    /// ConnectionLost, PermissionMismatch, MissingKey or Misconfigured.
    pub reason: RejectionReason,
    /// What was wrong, without any credential material.
    pub message: String,
    /// When the revision was rejected.
    pub at: Time,
    /// The validation spent the revision's rotating refresh token (the provider issued a
    /// new one with the refusal): the revision is retried only when the source Secret or the
    /// spec changes, never with the spent token on the validation interval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spent: bool,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn default_interval() -> String {
    "15m".into()
}
fn default_timeout() -> String {
    "10s".into()
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_refresh_before() -> String {
    "10m".into()
}
fn default_expiry_warning() -> String {
    "336h".into()
}

impl ConnectorCredential {
    /// The name of the target Secret: `spec.target.name`, or `<name>-active`.
    pub fn target_secret_name(&self) -> String {
        match &self.spec.target.name {
            Some(name) => name.clone(),
            None => format!("{}-active", kube::ResourceExt::name_any(self)),
        }
    }
}
