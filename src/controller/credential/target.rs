//! The target Secret: the only Secret the operator writes, and the home of the invariant
//! "it only ever holds material that passed validation".
//!
//! The invariant is carried by types: [`write`] takes a [`Validated`], and a `Validated` can
//! only be made in this module, from a provider's verdict ([`validate`]) or from material
//! that is already in the target Secret plus tokens the provider just minted for it
//! ([`Validated::refreshed`], [`Validated::revalidated`]). Unvalidated source material has
//! no path to [`write`].

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use super::decide::Target;
use super::status::ActiveRecord;
use crate::api::{Account, ConnectorCredential};
use crate::providers::{
    CredentialMaterial, Providers, Tokens, Verified, VerifyError, VerifyRequest,
};
use crate::secret::Redacted;

/// Annotation holding the revision of the source material in the target Secret.
pub const REVISION_ANNOTATION: &str = "reconnect.dev/revision";
const ACCOUNT_ID_ANNOTATION: &str = "reconnect.dev/account-id";
const ACCOUNT_NAME_ANNOTATION: &str = "reconnect.dev/account-name";
const PERMISSIONS_ANNOTATION: &str = "reconnect.dev/permissions";
const CREDENTIAL_EXPIRES_ANNOTATION: &str = "reconnect.dev/credential-expires-at";
const VALIDATED_AT_ANNOTATION: &str = "reconnect.dev/validated-at";
/// Label on every Secret the operator writes.
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "reconnect-operator");
/// Label naming the ConnectorCredential a target Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "reconnect.dev/credential";

const FIELDS: [&str; 4] = ["client_id", "client_secret", "refresh_token", "api_key"];

fn field<'a>(m: &'a CredentialMaterial, name: &str) -> &'a Option<Redacted> {
    match name {
        "client_id" => &m.client_id,
        "client_secret" => &m.client_secret,
        "refresh_token" => &m.refresh_token,
        _ => &m.api_key,
    }
}

fn field_mut<'a>(m: &'a mut CredentialMaterial, name: &str) -> &'a mut Option<Redacted> {
    match name {
        "client_id" => &mut m.client_id,
        "client_secret" => &mut m.client_secret,
        "refresh_token" => &mut m.refresh_token,
        _ => &mut m.api_key,
    }
}

/// The credential held by the target Secret: validated when it was written.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    pub revision: String,
    material: CredentialMaterial,
    pub record: ActiveRecord,
}

impl Active {
    /// The material, for probing and refreshing the active credential.
    pub fn material(&self) -> &CredentialMaterial {
        &self.material
    }
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
    /// The active credential with freshly minted tokens. If the provider rotated the refresh
    /// token, the new one replaces the spent one.
    pub fn refreshed(active: &Active, tokens: Tokens, now: Timestamp) -> Self {
        let mut material = active.material.clone();
        if let Some(rt) = &tokens.refresh_token {
            material.refresh_token = Some(rt.clone());
        }
        let mut record = active.record.clone();
        record.access_token_expires_at = tokens.expires_at;
        record.validated_at = record.validated_at.or(Some(now));
        Self {
            revision: active.revision.clone(),
            material,
            record,
            tokens,
        }
    }

    /// The active credential after a successful scheduled probe that minted tokens.
    pub fn revalidated(active: &Active, verified: &Verified, now: Timestamp) -> Self {
        let mut v = Self::refreshed(active, verified.tokens.clone(), now);
        v.record = ActiveRecord::of(verified, now);
        v
    }

    /// The revision this material belongs to.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// What was validated about it.
    pub fn record(&self) -> &ActiveRecord {
        &self.record
    }
}

/// Validates candidate material with its provider. The only way from source material to
/// something [`write`] accepts.
pub(crate) async fn validate(
    providers: &Providers,
    req: &VerifyRequest<'_>,
    revision: &str,
    now: Timestamp,
) -> Result<(Validated, Verified), VerifyError> {
    let verified = providers.verify(req).await?;
    let mut material = req.material.clone();
    // The exchange may have spent the source's refresh token and issued a new one: only the
    // new one works from now on.
    if let Some(rt) = &verified.tokens.refresh_token {
        material.refresh_token = Some(rt.clone());
    }
    let validated = Validated {
        revision: revision.to_owned(),
        material,
        record: ActiveRecord::of(&verified, now),
        tokens: verified.tokens.clone(),
    };
    Ok((validated, verified))
}

/// The target Secret as read, reduced to what the decision and the maintenance need.
pub(crate) struct Read {
    pub state: Target,
    pub secret: Option<Secret>,
    pub active: Option<Active>,
}

fn ts(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// Interprets the target Secret: is it ours, which revision does it hold, what is in it.
pub(crate) fn inspect(secret: Option<Secret>, owner: &ConnectorCredential) -> Read {
    let Some(secret) = secret else {
        return Read {
            state: Target::Missing,
            secret: None,
            active: None,
        };
    };
    let owned = owner.meta().uid.as_deref().is_some_and(|uid| {
        secret
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    });
    if !owned {
        return Read {
            state: Target::Foreign,
            secret: Some(secret),
            active: None,
        };
    }
    let ann = secret.annotations();
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut material = CredentialMaterial::default();
    for name in FIELDS {
        *field_mut(&mut material, name) = text(name).map(Redacted::new);
    }
    let access_expiry = text("expires_at").as_deref().and_then(ts);
    let revision = ann.get(REVISION_ANNOTATION).cloned();
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
        access_token_expires_at: access_expiry,
        validated_at: ann.get(VALIDATED_AT_ANNOTATION).and_then(|t| ts(t)),
    };
    let active = revision.clone().map(|revision| Active {
        revision,
        material,
        record,
    });
    Read {
        state: Target::Present {
            revision,
            access_token_expires_at: access_expiry,
        },
        secret: Some(secret),
        active,
    }
}

/// Writes validated material to the target Secret. An existing Secret is replaced with its
/// resourceVersion as precondition, so a concurrent writer makes this fail with 409 rather
/// than be overwritten.
pub(crate) async fn write(
    api: &Api<Secret>,
    owner: &ConnectorCredential,
    existing: Option<&Secret>,
    v: &Validated,
) -> Result<Secret, kube::Error> {
    let mut data = BTreeMap::new();
    for name in FIELDS {
        if let Some(value) = field(&v.material, name) {
            data.insert(
                name.to_owned(),
                ByteString(value.expose().as_bytes().to_vec()),
            );
        }
    }
    if let Some(token) = &v.tokens.access_token {
        data.insert(
            "access_token".into(),
            ByteString(token.expose().as_bytes().to_vec()),
        );
        let token_type = v
            .tokens
            .token_type
            .clone()
            .unwrap_or_else(|| "Bearer".into());
        data.insert("token_type".into(), ByteString(token_type.into_bytes()));
        if let Some(exp) = v.tokens.expires_at {
            data.insert(
                "expires_at".into(),
                ByteString(exp.to_string().into_bytes()),
            );
        }
    } else if let Some(prev) = existing.and_then(|s| s.data.as_ref()) {
        // A write without new tokens (none are minted for API keys) keeps the token fields.
        for key in ["access_token", "token_type", "expires_at"] {
            if let Some(value) = prev.get(key) {
                data.insert(key.to_owned(), value.clone());
            }
        }
    }

    let mut annotations = existing
        .map(|s| s.annotations().clone())
        .unwrap_or_default();
    let r = &v.record;
    annotations.insert(REVISION_ANNOTATION.into(), v.revision.clone());
    annotations.insert(ACCOUNT_ID_ANNOTATION.into(), r.account.id.clone());
    annotations.insert(ACCOUNT_NAME_ANNOTATION.into(), r.account.name.clone());
    annotations.insert(
        PERMISSIONS_ANNOTATION.into(),
        serde_json::to_string(&r.permissions).unwrap_or_else(|_| "[]".into()),
    );
    match r.credential_expires_at {
        Some(t) => annotations.insert(CREDENTIAL_EXPIRES_ANNOTATION.into(), t.to_string()),
        None => annotations.remove(CREDENTIAL_EXPIRES_ANNOTATION),
    };
    if let Some(t) = r.validated_at {
        annotations.insert(VALIDATED_AT_ANNOTATION.into(), t.to_string());
    }
    let mut labels = existing.map(|s| s.labels().clone()).unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    labels.insert(CREDENTIAL_LABEL.into(), owner.name_any());

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(owner.target_secret_name()),
            namespace: owner.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version: existing.and_then(|s| s.resource_version()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let pp = PostParams {
        field_manager: Some(super::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match existing {
        Some(_) => api.replace(&owner.target_secret_name(), &pp, &secret).await,
        None => api.create(&pp, &secret).await,
    }
}
