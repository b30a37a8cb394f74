//! The staging Secret: the write-ahead for refresh tokens a provider rotated while a new
//! source revision was being validated.
//!
//! A rotating provider spends the refresh token it is given and answers with a new one. When
//! that happens in the exchange that starts a validation, the new token is the only live one
//! of its lineage, and the probes that follow still have to pass before the target Secret may
//! hold it (the target only ever holds validated material, and consumers mount it whole). The
//! source Secret is the user's (GitOps owns it). So the token is written here first, to an
//! operator-owned Secret per credential (`<name>.reconnect-staging`, owned by the
//! ConnectorCredential so it is collected with it, labelled as the operator's), together
//! with the source revision it belongs to; only then is the access token used. A process
//! that dies before the swap finds it on its next attempt and continues the lineage from the
//! staged token instead of presenting the spent one again.
//!
//! The Secret is created only when a provider rotates a token during a validation, and
//! emptied (never deleted: the operator holds no delete permission on Secrets) once the swap
//! or the rejection is settled. A credential whose refresh tokens do not rotate never has
//! one, and the steady state never touches it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::owned;
use super::target::REVISION_ANNOTATION;
use crate::api::ConnectorCredential;
use crate::secret::Redacted;

/// Label naming what an operator-written Secret is for (`staging` here).
pub const ROLE_LABEL: &str = "reconnect.dev/role";
/// The role of a staging Secret.
pub const ROLE: &str = "staging";
/// The suffix of a staging Secret's name.
const SUFFIX: &str = ".reconnect-staging";
/// The data key the staged refresh token is kept under.
const TOKEN_KEY: &str = "refresh_token";
/// The longest Secret name (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The staging Secret's name for `cred`: `<name>.reconnect-staging`, or a shortened name with
/// a stable hash when that would be too long.
pub(crate) fn name(cred: &ConnectorCredential) -> String {
    let base = cred.name_any();
    if base.len() + SUFFIX.len() <= MAX_NAME {
        return format!("{base}{SUFFIX}");
    }
    let hash = format!("{:016x}", crate::controller::fnv1a(base.bytes()));
    let keep = MAX_NAME - SUFFIX.len() - hash.len() - 1;
    let cut = base[..keep].trim_end_matches(['-', '.']);
    format!("{cut}-{hash}{SUFFIX}")
}

/// A refresh token staged for a source revision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Staged {
    pub revision: String,
    pub token: Redacted,
}

/// The staging Secret as read.
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// The Secret, when it exists and is this credential's (for write preconditions).
    pub secret: Option<Secret>,
    /// A Secret of that name that this credential does not own: never read or written.
    pub foreign: bool,
}

impl Read {
    /// The token it holds, if any.
    pub fn staged(&self) -> Option<Staged> {
        let secret = self.secret.as_ref()?;
        let revision = secret.annotations().get(REVISION_ANNOTATION)?.clone();
        let token = secret.data.as_ref()?.get(TOKEN_KEY)?;
        let token = std::str::from_utf8(&token.0)
            .ok()
            .filter(|t| !t.is_empty())?;
        Some(Staged {
            revision,
            token: Redacted::new(token),
        })
    }
}

fn owned_by(secret: &Secret, cred: &ConnectorCredential) -> bool {
    cred.meta().uid.as_deref().is_some_and(|uid| {
        secret
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    })
}

/// Reads `cred`'s staging Secret.
pub(crate) async fn read(
    api: &Api<Secret>,
    cred: &ConnectorCredential,
) -> Result<Read, kube::Error> {
    Ok(match api.get_opt(&name(cred)).await? {
        None => Read::default(),
        Some(secret) if owned_by(&secret, cred) => Read {
            secret: Some(secret),
            foreign: false,
        },
        Some(_) => Read {
            secret: None,
            foreign: true,
        },
    })
}

/// The staging Secret holding `staged` (or nothing, with `None`).
fn build(cred: &ConnectorCredential, existing: Option<&Secret>, staged: Option<&Staged>) -> Secret {
    let mut annotations = existing
        .map(|s| s.annotations().clone())
        .unwrap_or_default();
    annotations.remove(REVISION_ANNOTATION);
    let mut data = BTreeMap::new();
    if let Some(staged) = staged {
        annotations.insert(REVISION_ANNOTATION.into(), staged.revision.clone());
        data.insert(
            TOKEN_KEY.to_owned(),
            ByteString(staged.token.expose().as_bytes().to_vec()),
        );
    }
    owned::secret(
        cred,
        name(cred),
        existing,
        &[(ROLE_LABEL, ROLE)],
        annotations,
        data,
    )
}

/// Why the staging Secret could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(
        "Secret {0} exists and is not this ConnectorCredential's; it cannot stage refresh tokens there"
    )]
    Foreign(String),
}

/// Writes `staged` (or empties the Secret, with `None`): create, or replace with the
/// resourceVersion of `existing`; a conflict reads the Secret again and retries once.
/// Returns the Secret as written, for the next write's precondition.
pub(crate) async fn write(
    api: &Api<Secret>,
    cred: &ConnectorCredential,
    existing: Option<&Secret>,
    staged: Option<&Staged>,
) -> Result<Secret, WriteError> {
    let attempt = |existing: Option<&Secret>| {
        let secret = build(cred, existing, staged);
        let exists = existing.is_some();
        async move { owned::write(api, &secret, exists).await }
    };
    match attempt(existing).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let again = read(api, cred).await?;
            if again.foreign {
                return Err(WriteError::Foreign(name(cred)));
            }
            if again.secret.is_none() && staged.is_none() {
                return Ok(build(cred, None, None));
            }
            Ok(attempt(again.secret.as_ref()).await?)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(name: &str) -> ConnectorCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
            "metadata": {"name": name, "namespace": "acme", "uid": "u-1"},
            "spec": {"provider": "procore", "auth": "RefreshToken", "secretRef": {"name": "src"}},
        }))
        .unwrap()
    }

    #[test]
    fn the_name_is_the_credentials_with_a_suffix_and_fits_when_long() {
        assert_eq!(name(&cred("procore")), "procore.reconnect-staging");
        let long = "a".repeat(250);
        let n = name(&cred(&long));
        assert!(n.len() <= MAX_NAME, "{}", n.len());
        assert!(n.ends_with(SUFFIX));
        assert_ne!(n, name(&cred(&"a".repeat(249))));
    }

    #[test]
    fn a_staged_token_reads_back_with_its_revision_and_an_emptied_one_reads_as_none() {
        let c = cred("procore");
        let staged = Staged {
            revision: "sha256:ab".into(),
            token: Redacted::new("rt-2"),
        };
        let secret = build(&c, None, Some(&staged));
        assert_eq!(
            secret.labels().get(ROLE_LABEL).map(String::as_str),
            Some(ROLE)
        );
        assert!(secret.owner_references().iter().any(|o| o.uid == "u-1"));
        let read = Read {
            secret: Some(secret.clone()),
            foreign: false,
        };
        assert_eq!(read.staged(), Some(staged));
        let emptied = Read {
            secret: Some(build(&c, Some(&secret), None)),
            foreign: false,
        };
        assert_eq!(emptied.staged(), None);
        assert!(
            !emptied
                .secret
                .unwrap()
                .annotations()
                .contains_key(REVISION_ANNOTATION)
        );
    }
}
