//! The target Secret: the only Secret the operator writes, and the home of the invariant
//! "it only ever holds material that passed validation".
//!
//! What the types enforce: [`write`] takes a [`Validated`], and this module makes a
//! `Validated` only from a provider verdict on a [`Candidate`] ([`Validated::verified`]) or
//! from an [`Active`] credential plus tokens the provider minted for it
//! ([`Validated::refreshed`], [`Validated::revalidated`]). `Verified` and `Tokens` come only
//! from `providers` (their fields are private there; unit tests have `#[cfg(test)]`
//! builders), and a `Candidate`'s revision is computed from its own material. An `Active` comes only from
//! [`inspect`], and only when the target Secret still holds exactly what the operator wrote:
//! every data key and the operator's annotations are checked against the
//! `reconnect.dev/integrity` digests written with them. A Secret edited by hand (or by
//! another controller, or a restore) reads as [`Altered`], and nothing in it is probed,
//! refreshed or trusted, except the fields whose digests still match.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::owned;
use super::read::Candidate;
use crate::api::{Account, ConnectorCredential};
use crate::providers::{CredentialMaterial, Field, Tokens, Verified};
use crate::secret::Redacted;

/// Annotation holding the revision of the source material in the target Secret.
pub const REVISION_ANNOTATION: &str = "reconnect.dev/revision";
/// Annotation holding the digests that prove the Secret is as the operator wrote it.
pub const INTEGRITY_ANNOTATION: &str = "reconnect.dev/integrity";
const ACCOUNT_ID_ANNOTATION: &str = "reconnect.dev/account-id";
const ACCOUNT_NAME_ANNOTATION: &str = "reconnect.dev/account-name";
const PERMISSIONS_ANNOTATION: &str = "reconnect.dev/permissions";
const CREDENTIAL_EXPIRES_ANNOTATION: &str = "reconnect.dev/credential-expires-at";
const VALIDATED_AT_ANNOTATION: &str = "reconnect.dev/validated-at";
const TOKEN_ISSUED_AT_ANNOTATION: &str = "reconnect.dev/token-issued-at";
/// The annotations [`ActiveRecord`] lives in; the integrity digest covers them.
const RECORD_ANNOTATIONS: [&str; 7] = [
    REVISION_ANNOTATION,
    ACCOUNT_ID_ANNOTATION,
    ACCOUNT_NAME_ANNOTATION,
    PERMISSIONS_ANNOTATION,
    CREDENTIAL_EXPIRES_ANNOTATION,
    VALIDATED_AT_ANNOTATION,
    TOKEN_ISSUED_AT_ANNOTATION,
];
/// The integrity entry for the record annotations (a data key can never contain `@`).
const RECORD_ENTRY: &str = "@record";

/// The access token's window, as the target Secret records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessWindow {
    /// When the operator received the token (absent in Secrets written by older versions).
    pub issued_at: Option<Timestamp>,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// What the target Secret records about the credential it holds, so a status lost in a
/// crash can be rebuilt without asking the provider again.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ActiveRecord {
    pub account: Account,
    pub permissions: BTreeSet<String>,
    pub credential_expires_at: Option<Timestamp>,
    pub access: Option<AccessWindow>,
    pub validated_at: Option<Timestamp>,
}

impl ActiveRecord {
    /// What a provider verdict at `now` establishes about a credential.
    fn of(verified: &Verified, now: Timestamp) -> Self {
        Self {
            account: verified.account().clone(),
            permissions: verified.permissions().clone(),
            credential_expires_at: verified.credential_expires_at(),
            access: window(verified.tokens(), now),
            validated_at: Some(now),
        }
    }
}

fn window(tokens: &Tokens, now: Timestamp) -> Option<AccessWindow> {
    tokens.expires_at().map(|expires_at| AccessWindow {
        issued_at: Some(now),
        expires_at,
    })
}

/// The credential an intact target Secret holds: validated when it was written.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    revision: String,
    material: CredentialMaterial,
    record: ActiveRecord,
}

impl Active {
    /// The source revision this credential descends from.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The material, for probing and refreshing.
    pub fn material(&self) -> &CredentialMaterial {
        &self.material
    }

    /// What was validated about it.
    pub fn record(&self) -> &ActiveRecord {
        &self.record
    }

    /// This credential with a refresh token the provider rotated and the target Secret does
    /// not hold yet: the one in the Secret is spent.
    pub fn with_refresh_token(&self, token: &Redacted) -> Self {
        let mut active = self.clone();
        active.material.refresh_token = Some(token.clone());
        active
    }
}

/// A target Secret whose content differs from what the operator wrote.
#[derive(Debug, Clone)]
pub(crate) struct Altered {
    /// Data keys (and `annotations`) that differ from what was written, for messages.
    pub changed: Vec<String>,
    /// Credential fields whose content is still exactly what the operator wrote.
    intact: CredentialMaterial,
}

impl Altered {
    /// The credential fields still intact (a rotated refresh token survives a hand edit of
    /// the client secret, for instance).
    pub fn intact(&self) -> &CredentialMaterial {
        &self.intact
    }
}

/// The target Secret as read.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// No such Secret.
    Missing,
    /// A Secret of that name exists but this ConnectorCredential does not own it.
    Foreign,
    /// Ours, but not as we wrote it.
    Altered(Altered),
    /// Ours and exactly as we wrote it.
    Intact(Active),
}

/// The target Secret: what it holds, and the object itself (for the write precondition).
pub(crate) struct Read {
    pub state: Target,
    pub secret: Option<Secret>,
}

/// Material cleared for the target Secret.
#[derive(Debug, Clone)]
pub(crate) struct Validated {
    revision: String,
    material: CredentialMaterial,
    record: ActiveRecord,
    tokens: Tokens,
}

impl Validated {
    /// A candidate the provider verified at `now`. If the exchange rotated the refresh token,
    /// the new one replaces the spent one.
    pub fn verified(candidate: &Candidate, verified: &Verified, now: Timestamp) -> Self {
        let mut material = candidate.material().clone();
        if let Some(rt) = verified.tokens().refresh_token() {
            material.refresh_token = Some(rt.clone());
        }
        Self {
            revision: candidate.revision().to_owned(),
            material,
            record: ActiveRecord::of(verified, now),
            tokens: verified.tokens().clone(),
        }
    }

    /// The active credential with tokens the provider just minted for it.
    pub fn refreshed(active: &Active, tokens: &Tokens, now: Timestamp) -> Self {
        let mut material = active.material.clone();
        if let Some(rt) = tokens.refresh_token() {
            material.refresh_token = Some(rt.clone());
        }
        let mut record = active.record.clone();
        record.access = window(tokens, now);
        Self {
            revision: active.revision.clone(),
            material,
            record,
            tokens: tokens.clone(),
        }
    }

    /// The active credential after a successful probe that minted tokens.
    pub fn revalidated(active: &Active, verified: &Verified, now: Timestamp) -> Self {
        let mut v = Self::refreshed(active, verified.tokens(), now);
        v.record = ActiveRecord::of(verified, now);
        v
    }

    /// The revision this material descends from.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// What was validated about it.
    pub fn record(&self) -> &ActiveRecord {
        &self.record
    }

    /// The refresh token to persist, if the credential has one.
    pub fn refresh_token(&self) -> Option<&Redacted> {
        self.material.refresh_token.as_ref()
    }
}

/// A digest of one entry, salted with the credential's name so the same value under another
/// credential digests differently. 128 bits of sha256, hex.
fn digest(owner: &str, revision: &str, key: &str, value: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [owner.as_bytes(), revision.as_bytes(), key.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update((value.len() as u64).to_be_bytes());
    h.update(value);
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn owner_key(owner: &ConnectorCredential) -> String {
    format!(
        "{}/{}",
        owner.namespace().unwrap_or_default(),
        owner.name_any()
    )
}

/// The record annotations, in a fixed order, as one byte string.
fn record_bytes(annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in RECORD_ANNOTATIONS {
        if let Some(value) = annotations.get(key) {
            out.extend_from_slice(key.as_bytes());
            out.push(0);
            out.extend_from_slice(&(value.len() as u64).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
    }
    out
}

/// The integrity entries for a Secret's data and record annotations.
fn integrity(
    owner: &str,
    revision: &str,
    data: &BTreeMap<String, ByteString>,
    annotations: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| (k.clone(), digest(owner, revision, k, &v.0)))
        .collect();
    out.insert(
        RECORD_ENTRY.to_owned(),
        digest(owner, revision, RECORD_ENTRY, &record_bytes(annotations)),
    );
    out
}

fn ts(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// Interprets the target Secret: is it ours, is it as we wrote it, what does it hold.
pub(crate) fn inspect(secret: Option<Secret>, owner: &ConnectorCredential) -> Read {
    let Some(secret) = secret else {
        return Read {
            state: Target::Missing,
            secret: None,
        };
    };
    let owned = owner.meta().uid.as_deref().is_some_and(|uid| {
        secret
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    });
    let state = if owned {
        read_owned(&secret, owner)
    } else {
        Target::Foreign
    };
    Read {
        state,
        secret: Some(secret),
    }
}

fn read_owned(secret: &Secret, owner: &ConnectorCredential) -> Target {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let ann = secret.annotations();
    let revision = ann.get(REVISION_ANNOTATION).cloned();
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let recorded: Option<BTreeMap<String, String>> = ann
        .get(INTEGRITY_ANNOTATION)
        .and_then(|i| serde_json::from_str(i).ok());
    let changed: Vec<String> = match (&recorded, &revision) {
        (Some(recorded), Some(revision)) => {
            let now = integrity(&owner_key(owner), revision, data, ann);
            let mut keys: BTreeSet<&String> = recorded.keys().collect();
            keys.extend(now.keys());
            keys.into_iter()
                .filter(|k| recorded.get(*k) != now.get(*k))
                .map(|k| {
                    if k == RECORD_ENTRY {
                        "annotations".to_owned()
                    } else {
                        k.clone()
                    }
                })
                .collect()
        }
        // Written by a version before integrity digests: trusted as it is, and given
        // digests with its next write.
        (None, Some(_)) if !ann.contains_key(INTEGRITY_ANNOTATION) => Vec::new(),
        (None, Some(_)) => vec![INTEGRITY_ANNOTATION.to_owned()],
        (_, None) => vec![REVISION_ANNOTATION.to_owned()],
    };
    let mut material = CredentialMaterial::default();
    for field in Field::ALL {
        *material.field_mut(field) = text(field.key()).map(Redacted::new);
    }
    let Some(revision) = revision.filter(|_| changed.is_empty()) else {
        // A field is intact only if its digest was checked and matched.
        let checked = recorded.is_some() && ann.contains_key(REVISION_ANNOTATION);
        let mut intact = CredentialMaterial::default();
        for field in Field::ALL {
            if checked && !changed.iter().any(|k| k == field.key()) {
                *intact.field_mut(field) = material.get(field).clone();
            }
        }
        return Target::Altered(Altered { changed, intact });
    };
    let access = text("expires_at")
        .as_deref()
        .and_then(ts)
        .map(|expires_at| AccessWindow {
            issued_at: ann.get(TOKEN_ISSUED_AT_ANNOTATION).and_then(|t| ts(t)),
            expires_at,
        });
    let record = ActiveRecord {
        account: Account {
            id: ann.get(ACCOUNT_ID_ANNOTATION).cloned().unwrap_or_default(),
            name: ann
                .get(ACCOUNT_NAME_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        },
        permissions: ann
            .get(PERMISSIONS_ANNOTATION)
            .and_then(|p| serde_json::from_str::<BTreeSet<String>>(p).ok())
            .unwrap_or_default(),
        credential_expires_at: ann.get(CREDENTIAL_EXPIRES_ANNOTATION).and_then(|t| ts(t)),
        access,
        validated_at: ann.get(VALIDATED_AT_ANNOTATION).and_then(|t| ts(t)),
    };
    Target::Intact(Active {
        revision,
        material,
        record,
    })
}

/// The Secret [`write`] would store: data, labels, annotations (integrity included).
fn build(owner: &ConnectorCredential, existing: Option<&Secret>, v: &Validated) -> Secret {
    let mut data = BTreeMap::new();
    for (field, value) in v.material.fields() {
        if let Some(value) = value {
            data.insert(
                field.key().to_owned(),
                ByteString(value.expose().as_bytes().to_vec()),
            );
        }
    }
    let r = &v.record;
    if let Some(token) = &v.tokens.access_token() {
        data.insert(
            "access_token".into(),
            ByteString(token.expose().as_bytes().to_vec()),
        );
        let token_type = v.tokens.token_type().unwrap_or("Bearer").to_owned();
        data.insert("token_type".into(), ByteString(token_type.into_bytes()));
        if let Some(access) = r.access {
            data.insert(
                "expires_at".into(),
                ByteString(access.expires_at.to_string().into_bytes()),
            );
        }
    }

    // Annotations others put on the Secret survive; ours are rewritten from the record.
    let mut annotations = existing
        .map(|s| s.annotations().clone())
        .unwrap_or_default();
    for key in RECORD_ANNOTATIONS {
        annotations.remove(key);
    }
    let mut put = |k: &str, v: String| {
        annotations.insert(k.to_owned(), v);
    };
    put(REVISION_ANNOTATION, v.revision.clone());
    put(ACCOUNT_ID_ANNOTATION, r.account.id.clone());
    put(ACCOUNT_NAME_ANNOTATION, r.account.name.clone());
    put(
        PERMISSIONS_ANNOTATION,
        serde_json::to_string(&r.permissions).unwrap_or_else(|_| "[]".into()),
    );
    if let Some(t) = r.credential_expires_at {
        put(CREDENTIAL_EXPIRES_ANNOTATION, t.to_string());
    }
    if let Some(t) = r.validated_at {
        put(VALIDATED_AT_ANNOTATION, t.to_string());
    }
    if let Some(t) = r.access.and_then(|a| a.issued_at) {
        put(TOKEN_ISSUED_AT_ANNOTATION, t.to_string());
    }
    let entries = integrity(&owner_key(owner), &v.revision, &data, &annotations);
    annotations.insert(
        INTEGRITY_ANNOTATION.into(),
        serde_json::to_string(&entries).unwrap_or_default(),
    );
    owned::secret(
        owner,
        owner.target_secret_name(),
        existing,
        &[],
        annotations,
        data,
    )
}

/// Writes validated material to the target Secret. An existing Secret is replaced with its
/// resourceVersion as precondition, so a concurrent writer makes this fail with 409 rather
/// than be overwritten. The whole data is replaced: keys someone added by hand are dropped.
pub(crate) async fn write(
    api: &Api<Secret>,
    owner: &ConnectorCredential,
    existing: Option<&Secret>,
    v: &Validated,
) -> Result<Secret, kube::Error> {
    owned::write(api, &build(owner, existing, v), existing.is_some()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owner() -> ConnectorCredential {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
            "metadata": {"name": "procore", "namespace": "acme", "uid": "u-1"},
            "spec": {"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "src"}},
        }))
        .unwrap()
    }

    fn candidate() -> Candidate {
        Candidate::new(CredentialMaterial {
            client_id: Some(Redacted::new("id")),
            client_secret: Some(Redacted::new("secret")),
            ..Default::default()
        })
    }

    fn verified() -> Verified {
        Verified::scripted(
            Account {
                id: "7".into(),
                name: "svc@acme.com".into(),
            },
            ["company:1".to_owned()].into(),
            Tokens::scripted(
                Some(Redacted::new("at-1")),
                Some(Timestamp::from_second(2_000_000_000).unwrap()),
                None,
            ),
            None,
        )
    }

    /// The Secret as the API server would return it after a write (ownerReference set).
    fn written() -> Secret {
        let v = Validated::verified(
            &candidate(),
            &verified(),
            Timestamp::from_second(1_999_996_400).unwrap(),
        );
        let mut s = build(&owner(), None, &v);
        s.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "reconnect.dev/v1alpha1".into(),
            kind: "ConnectorCredential".into(),
            name: "procore".into(),
            uid: "u-1".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        s
    }

    fn state(secret: Secret) -> Target {
        inspect(Some(secret), &owner()).state
    }

    #[test]
    fn what_the_operator_wrote_reads_back_intact() {
        let Target::Intact(active) = state(written()) else {
            panic!("not intact")
        };
        assert_eq!(active.revision(), candidate().revision());
        assert_eq!(active.record().account.name, "svc@acme.com");
        let access = active.record().access.unwrap();
        assert_eq!(
            access.issued_at,
            Some(Timestamp::from_second(1_999_996_400).unwrap())
        );
    }

    #[test]
    fn a_hand_edited_value_is_altered_and_untouched_fields_stay_intact() {
        let mut s = written();
        s.data
            .as_mut()
            .unwrap()
            .insert("client_secret".into(), ByteString(b"wrong".to_vec()));
        let Target::Altered(altered) = state(s) else {
            panic!("not altered")
        };
        assert_eq!(altered.changed, ["client_secret"]);
        assert!(altered.intact().client_secret.is_none());
        assert_eq!(
            altered.intact().client_id.as_ref().map(Redacted::expose),
            Some("id")
        );
    }

    #[test]
    fn added_removed_keys_and_edited_annotations_are_alterations() {
        let mut added = written();
        added
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        let mut removed = written();
        removed.data.as_mut().unwrap().remove("access_token");
        let mut relabelled = written();
        relabelled
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(PERMISSIONS_ANNOTATION.into(), "[\"company:9\"]".into());
        let mut revision = written();
        revision
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REVISION_ANNOTATION.into(), "sha256:other".into());
        for (name, s, want) in [
            ("added key", added, "extra"),
            ("removed key", removed, "access_token"),
            ("edited record annotation", relabelled, "annotations"),
        ] {
            let Target::Altered(altered) = state(s) else {
                panic!("{name}: not altered")
            };
            assert!(
                altered.changed.iter().any(|c| c == want),
                "{name}: {:?}",
                altered.changed
            );
        }
        assert!(
            matches!(state(revision), Target::Altered(_)),
            "a changed revision annotation invalidates every digest"
        );
    }

    #[test]
    fn unrelated_annotations_and_labels_are_not_alterations() {
        let mut s = written();
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("argocd.argoproj.io/tracking-id".into(), "x".into());
        s.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "sync".into());
        assert!(matches!(state(s), Target::Intact(_)));
    }

    #[test]
    fn a_secret_from_before_integrity_digests_is_trusted_once() {
        let mut s = written();
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(INTEGRITY_ANNOTATION);
        assert!(matches!(state(s), Target::Intact(_)));
        let mut garbled = written();
        garbled
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(INTEGRITY_ANNOTATION.into(), "not json".into());
        assert!(matches!(state(garbled), Target::Altered(_)));
    }

    #[test]
    fn the_same_material_under_another_credential_digests_differently() {
        let a = digest("acme/a", "sha256:1", "client_secret", b"s");
        let b = digest("acme/b", "sha256:1", "client_secret", b"s");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
