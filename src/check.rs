//! `reconnect-operator check`: an offline preflight for CI. Given a ConnectorCredential
//! manifest and the Secret it references, verify the credential against the provider exactly
//! as the operator would, and report the verdict without a cluster.
//!
//! Exit codes (stable; scripts key on them):
//!
//! | code | verdict | meaning |
//! |---|---|---|
//! | 0 | Connected | the credential works and holds every required permission |
//! | 2 | InvalidInput | a file is unreadable, not YAML, or not the expected kind; a refresh token that may rotate without `--rotated-secret` (also clap's usage errors) |
//! | 3 | ConnectionLost | the provider rejected the credential: re-authenticate the account |
//! | 4 | PermissionMismatch | the account lacks required permissions |
//! | 5 | ProviderUnreachable | timeout, rate limit, 5xx, malformed answer: try again later |
//! | 6 | Misconfigured | the spec or Secret cannot work (missing key, params, endpoint, auth type) |
//!
//! Checking a refresh-token credential spends the refresh token. For providers that rotate
//! (or may rotate) refresh tokens the check insists on `--rotated-secret FILE`, where it
//! writes the source Secret with the new token (mode 0600) for the user to apply.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use crate::api::conditions::Reason;
use crate::api::{Account, AuthType, ConnectorCredential, Provider};
use crate::providers::{
    CredentialMaterial, Misconfiguration, Providers, Verified, VerifyError, VerifyRequest,
    may_rotate_refresh_tokens,
};

/// Exit code: the credential works.
pub const EXIT_OK: u8 = 0;
/// Exit code: an input file is unusable.
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit code: the provider rejected the credential.
pub const EXIT_CONNECTION_LOST: u8 = 3;
/// Exit code: required permissions are missing.
pub const EXIT_PERMISSION_MISMATCH: u8 = 4;
/// Exit code: the provider could not answer now.
pub const EXIT_PROVIDER_UNREACHABLE: u8 = 5;
/// Exit code: the spec or Secret cannot work as written.
pub const EXIT_MISCONFIGURED: u8 = 6;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The ConnectorCredential manifest (YAML).
    pub credential: PathBuf,
    /// The Secret manifest (YAML) the credential's `secretRef` names.
    pub secret: PathBuf,
    /// Permissions required on top of `spec.requiredPermissions` (for example those the
    /// active account holds, to check a Superset rotation offline).
    pub require: Vec<String>,
    /// Overrides `spec.validation.timeout` for each provider call.
    pub timeout: Option<Duration>,
    /// Where to write the source Secret with the new refresh token when the provider rotates
    /// it during the check (file mode 0600). Required for refresh-token credentials of
    /// providers that rotate or may rotate (procore, salesforce, oauth2): checking spends the
    /// refresh token, and without this file the new one would be lost.
    pub rotated_secret: Option<PathBuf>,
}

/// An input file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Unreadable file.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a manifest of the expected kind. The parser's message is not repeated: for the
    /// Secret it could quote a value.
    #[error("{path} is not a valid {kind} manifest")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The expected kind.
        kind: &'static str,
    },
    /// Manifest of the wrong kind or apiVersion.
    #[error("{path} has kind {found:?}, expected {expected}")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What it says.
        found: String,
        /// What it should say.
        expected: &'static str,
    },
    /// The Secret is not the one `secretRef` names.
    #[error(
        "the Secret is {found:?} but spec.secretRef.name is {expected:?} (in namespace {namespace:?})"
    )]
    SecretMismatch {
        /// secretRef.name.
        expected: String,
        /// The Secret's name.
        found: String,
        /// The namespace compared.
        namespace: String,
    },
    /// Checking would spend a refresh token that may rotate, with nowhere to put the new one.
    #[error(
        "checking a {provider} refresh token spends it and {provider} may rotate it (the old one then dies): pass --rotated-secret FILE to receive the new one"
    )]
    RotationNeedsOutput {
        /// The provider.
        provider: Provider,
    },
    /// The rotated Secret could not be written.
    #[error("cannot write the rotated Secret to {path}: {source}")]
    WriteRotated {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `spec.validation.timeout` does not parse.
    #[error("spec.validation.timeout: {0}")]
    Timeout(#[from] crate::api::duration::InvalidDuration),
}

/// The verdict, ready to print.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `namespace/name` of the credential.
    pub credential: String,
    /// The provider, when the manifest could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Connected, ConnectionLost, PermissionMismatch, ProviderUnreachable, Misconfigured,
    /// MissingKey or InvalidInput.
    pub verdict: &'static str,
    /// The process exit code for this verdict.
    pub exit_code: u8,
    /// The account, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    /// Permissions the account holds (sorted), when known.
    pub permissions: Vec<String>,
    /// Required permissions the account lacks (sorted).
    pub missing_permissions: Vec<String>,
    /// When the access token minted during the check expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<jiff::Timestamp>,
    /// When the credential itself expires unless used or renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_expires_at: Option<jiff::Timestamp>,
    /// Seconds the provider asked us to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// Where the Secret with the rotated refresh token was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_secret: Option<PathBuf>,
    /// What went wrong, for humans; never credential material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reads both manifests, verifies the credential and builds the report.
pub async fn check(options: &CheckOptions, providers: &Providers) -> Report {
    let (credential, secret) = match load(&options.credential, &options.secret) {
        Ok(loaded) => loaded,
        Err(e) => return Report::invalid_input(&e),
    };
    let key = format!(
        "{}/{}",
        credential
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default"),
        credential.metadata.name.as_deref().unwrap_or_default()
    );
    let spec = &credential.spec;
    if spec.auth == AuthType::RefreshToken
        && may_rotate_refresh_tokens(spec.provider)
        && options.rotated_secret.is_none()
    {
        return Report::invalid_input(&InputError::RotationNeedsOutput {
            provider: spec.provider,
        });
    }
    let timeout = match options.timeout {
        Some(t) => t,
        None => match crate::api::duration::parse(&spec.validation.timeout) {
            Ok(t) => t,
            Err(e) => return Report::invalid_input(&InputError::Timeout(e)),
        },
    };
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // The API server merges stringData over data; so does the preflight.
    for (k, v) in secret.string_data.clone().unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    let result = match CredentialMaterial::from_secret_data(spec.auth, &spec.secret_ref.keys, &data)
    {
        Ok(material) => {
            let required: BTreeSet<String> = spec
                .required_permissions
                .iter()
                .chain(&options.require)
                .cloned()
                .collect();
            providers
                .verify(&VerifyRequest {
                    key: &key,
                    spec,
                    material: &material,
                    required: &required,
                    timeout,
                })
                .await
        }
        Err(missing) => Err(VerifyError::misconfigured(
            spec.provider,
            Misconfiguration::MissingKey(missing),
        ))
        .into(),
    };
    let (result, rotated_on_failure) = result.into_parts();
    let rotated = match &result {
        Ok(verified) => verified.tokens().refresh_token(),
        Err(_) => rotated_on_failure.as_ref().and_then(|t| t.refresh_token()),
    };
    let mut written = None;
    if let (Some(token), Some(path)) = (rotated, &options.rotated_secret) {
        let key = spec
            .secret_ref
            .keys
            .refresh_token
            .clone()
            .unwrap_or_else(|| "refresh_token".into());
        data.insert(key, token.expose().as_bytes().to_vec());
        if let Err(e) = write_secret(path, &secret, data) {
            return Report::invalid_input(&e);
        }
        written = Some(path.clone());
    }
    let mut report = Report::new(key, spec.provider, result);
    report.rotated_secret = written;
    report
}

/// Writes the source Secret with `data` (including the new refresh token), readable only by
/// the owner.
fn write_secret(
    path: &Path,
    original: &Secret,
    data: BTreeMap<String, Vec<u8>>,
) -> Result<(), InputError> {
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: original.metadata.name.clone(),
            namespace: original.metadata.namespace.clone(),
            ..Default::default()
        },
        type_: original.type_.clone(),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    };
    let failed = |source| InputError::WriteRotated {
        path: path.to_owned(),
        source,
    };
    let yaml = serde_saphyr::to_string(&secret).map_err(|e| failed(std::io::Error::other(e)))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(failed)?;
    std::io::Write::write_all(&mut file, yaml.as_bytes()).map_err(failed)
}

fn load(credential: &Path, secret: &Path) -> Result<(ConnectorCredential, Secret), InputError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| InputError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let credential_yaml = read(credential)?;
    let secret_yaml = read(secret)?;

    let kind_of = |yaml: &str, path: &Path, kind: &'static str| -> Result<(), InputError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct TypeMeta {
            #[serde(default)]
            api_version: String,
            #[serde(default)]
            kind: String,
        }
        let meta: TypeMeta = serde_saphyr::from_str(yaml).map_err(|_| InputError::Parse {
            path: path.to_owned(),
            kind,
        })?;
        let api_ok = match kind {
            "ConnectorCredential" => meta.api_version == "reconnect.dev/v1alpha1",
            _ => meta.api_version == "v1",
        };
        if meta.kind != kind || !api_ok {
            return Err(InputError::WrongKind {
                path: path.to_owned(),
                found: format!("{}/{}", meta.api_version, meta.kind),
                expected: kind,
            });
        }
        Ok(())
    };
    kind_of(&credential_yaml, credential, "ConnectorCredential")?;
    kind_of(&secret_yaml, secret, "Secret")?;
    let cc: ConnectorCredential =
        serde_saphyr::from_str(&credential_yaml).map_err(|_| InputError::Parse {
            path: credential.to_owned(),
            kind: "ConnectorCredential",
        })?;
    let s: Secret = serde_saphyr::from_str(&secret_yaml).map_err(|_| InputError::Parse {
        path: secret.to_owned(),
        kind: "Secret",
    })?;
    let namespace = cc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let secret_namespace = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let secret_name = s.metadata.name.clone().unwrap_or_default();
    if secret_name != cc.spec.secret_ref.name || secret_namespace != namespace {
        return Err(InputError::SecretMismatch {
            expected: cc.spec.secret_ref.name.clone(),
            found: format!("{secret_namespace}/{secret_name}"),
            namespace,
        });
    }
    Ok((cc, s))
}

impl Report {
    fn invalid_input(error: &InputError) -> Self {
        Self {
            verdict: "InvalidInput",
            exit_code: EXIT_INVALID_INPUT,
            message: Some(error.to_string()),
            ..Self::default()
        }
    }

    fn new(credential: String, provider: Provider, result: Result<Verified, VerifyError>) -> Self {
        let mut report = Self {
            credential,
            provider: Some(provider),
            verdict: Reason::Connected.as_str(),
            exit_code: EXIT_OK,
            ..Self::default()
        };
        match result {
            Ok(verified) => {
                report.account = Some(verified.account().clone());
                report.permissions = verified.permissions().iter().cloned().collect();
                report.access_token_expires_at = verified.tokens().expires_at();
                report.credential_expires_at = verified.credential_expires_at();
            }
            Err(error) => {
                report.verdict = error.reason();
                report.message = Some(error.to_string());
                report.retry_after_seconds = error.retry_after().map(|d| d.as_secs());
                report.exit_code = match &error {
                    VerifyError::Dead { .. } => EXIT_CONNECTION_LOST,
                    VerifyError::PermissionDenied { .. } => EXIT_PERMISSION_MISMATCH,
                    VerifyError::Transient { .. } => EXIT_PROVIDER_UNREACHABLE,
                    VerifyError::Misconfigured { .. } => EXIT_MISCONFIGURED,
                };
                if let VerifyError::PermissionDenied {
                    account,
                    missing,
                    granted,
                    ..
                } = error
                {
                    report.account = account;
                    report.missing_permissions = missing;
                    report.permissions = granted.into_iter().collect();
                }
            }
        }
        report
    }

    /// The report as JSON (one object).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The report as text for humans.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        match self.provider {
            Some(provider) => {
                let _ = writeln!(out, "{provider} {}: {}", self.credential, self.verdict);
            }
            None => {
                let _ = writeln!(out, "check: {}", self.verdict);
            }
        }
        if let Some(account) = &self.account {
            let _ = writeln!(out, "  account:     {} (id {})", account.name, account.id);
        }
        if !self.permissions.is_empty() {
            let _ = writeln!(out, "  permissions: {}", self.permissions.join(", "));
        }
        if !self.missing_permissions.is_empty() {
            let _ = writeln!(
                out,
                "  missing:     {}",
                self.missing_permissions.join(", ")
            );
        }
        if let Some(at) = self.access_token_expires_at {
            let _ = writeln!(out, "  access token expires: {at}");
        }
        if let Some(at) = self.credential_expires_at {
            let _ = writeln!(out, "  credential expires:   {at}");
        }
        if let Some(secs) = self.retry_after_seconds {
            let _ = writeln!(out, "  retry after: {secs}s");
        }
        if let Some(path) = &self.rotated_secret {
            let _ = writeln!(
                out,
                "  the provider rotated the refresh token: the Secret with the new one is in {}",
                path.display()
            );
        }
        if let Some(message) = &self.message {
            let _ = writeln!(out, "  {message}");
        }
        out
    }
}
