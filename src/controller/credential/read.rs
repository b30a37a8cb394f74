//! The read step: the source Secret as a [`Source`], whose complete material travels with
//! its revision as one [`Candidate`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::Resource;
use kube::api::Api;

use super::revision;
use crate::api::ConnectorCredential;
use crate::controller::{Error, kube_err};
use crate::providers::{CredentialMaterial, MissingKey};

/// Complete credential material from the source Secret, with the revision that names it.
/// The two are computed together and cannot be separated or re-paired.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    revision: String,
    material: CredentialMaterial,
}

impl Candidate {
    /// The candidate for `material`: its revision is the digest of exactly this material.
    pub fn new(material: CredentialMaterial) -> Self {
        Self {
            revision: revision::of(&material),
            material,
        }
    }

    /// A restore of this candidate's lineage after the target Secret was altered: fields the
    /// operator wrote and that are still intact in the target replace the source's (a
    /// refresh token the provider rotated is newer than the one in the source). The revision
    /// stays the source's: it names the lineage, not the bytes.
    pub fn restoring(&self, intact: &CredentialMaterial) -> Self {
        let mut material = self.material.clone();
        for (field, value) in intact.fields() {
            if let Some(value) = value {
                *material.field_mut(field) = Some(value.clone());
            }
        }
        Self {
            revision: self.revision.clone(),
            material,
        }
    }

    /// The revision (a digest, never the material).
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The secret values.
    pub fn material(&self) -> &CredentialMaterial {
        &self.material
    }
}

/// The source Secret as read.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one Source per reconcile, read once and moved; boxing buys nothing"
)]
pub(crate) enum Source {
    /// No such Secret.
    Missing,
    /// The Secret lacks a key the auth type needs.
    MissingKey(MissingKey),
    /// The Secret is another ConnectorCredential's target: the operator writes it, and its
    /// refresh token is that credential's to spend (a rotating one spent here would cut the
    /// other credential off). Never read as a source.
    Managed {
        /// The Secret.
        secret: String,
        /// The ConnectorCredential that owns it.
        owner: String,
    },
    /// The Secret holds a complete credential.
    Ready {
        /// The credential.
        candidate: Candidate,
        /// The Secret's version, so events about this revision can point at it.
        reference: ObjectReference,
    },
}

impl Source {
    /// The candidate revision, when the Secret is complete.
    pub fn revision(&self) -> Option<&str> {
        match self {
            Source::Ready { candidate, .. } => Some(candidate.revision()),
            _ => None,
        }
    }
}

/// Reads the source Secret `cred` names.
pub(crate) async fn source(
    secrets: &Api<Secret>,
    cred: &ConnectorCredential,
) -> Result<Source, Error> {
    let Some(secret) = secrets
        .get_opt(&cred.spec.secret_ref.name)
        .await
        .map_err(kube_err("get source Secret"))?
    else {
        return Ok(Source::Missing);
    };
    if let Some(owner) = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == ConnectorCredential::kind(&()))
    {
        return Ok(Source::Managed {
            secret: cred.spec.secret_ref.name.clone(),
            owner: owner.name.clone(),
        });
    }
    let reference = secret.object_ref(&());
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Ok(
        match CredentialMaterial::from_secret_data(
            cred.spec.auth,
            &cred.spec.secret_ref.keys,
            &data,
        ) {
            Ok(material) => Source::Ready {
                candidate: Candidate::new(material),
                reference,
            },
            Err(missing) => Source::MissingKey(missing),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Redacted;

    fn material(rt: &str) -> CredentialMaterial {
        CredentialMaterial {
            client_id: Some(Redacted::new("id")),
            refresh_token: Some(Redacted::new(rt)),
            ..Default::default()
        }
    }

    #[test]
    fn a_candidate_is_named_by_the_digest_of_its_material() {
        let a = Candidate::new(material("rt-1"));
        assert_eq!(a.revision(), revision::of(a.material()));
        assert_ne!(a.revision(), Candidate::new(material("rt-2")).revision());
    }

    #[test]
    fn a_restore_takes_intact_target_fields_and_keeps_the_lineage() {
        let source = Candidate::new(material("spent"));
        let intact = CredentialMaterial {
            refresh_token: Some(Redacted::new("rotated")),
            ..Default::default()
        };
        let restored = source.restoring(&intact);
        assert_eq!(restored.revision(), source.revision());
        assert_eq!(
            restored
                .material()
                .refresh_token
                .as_ref()
                .map(Redacted::expose),
            Some("rotated")
        );
        assert_eq!(
            restored.material().client_id.as_ref().map(Redacted::expose),
            Some("id")
        );
    }
}
