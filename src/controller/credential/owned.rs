//! The Secrets a ConnectorCredential owns (its target and its staging Secret): built and
//! written one way, so both carry the same labels, owner reference and precondition.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};

use crate::api::ConnectorCredential;

/// Label on every Secret the operator writes.
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "reconnect-operator");
/// Label naming the ConnectorCredential a Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "reconnect.dev/credential";

/// Secret `name`, owned (and collected with) `owner`: `existing`'s labels and annotations
/// kept, with the operator's labels, `labels` and `annotations` set over them, and
/// `existing`'s resourceVersion as the precondition of a replace.
pub(crate) fn secret(
    owner: &ConnectorCredential,
    name: String,
    existing: Option<&Secret>,
    labels: &[(&str, &str)],
    annotations: BTreeMap<String, String>,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    let mut all = existing.map(|s| s.labels().clone()).unwrap_or_default();
    all.insert(MANAGED_BY_LABEL.0.into(), MANAGED_BY_LABEL.1.into());
    all.insert(CREDENTIAL_LABEL.into(), owner.name_any());
    for (k, v) in labels {
        all.insert((*k).into(), (*v).into());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: owner.namespace(),
            labels: Some(all),
            annotations: Some(annotations),
            owner_references: owner.controller_owner_ref(&()).map(|o| vec![o]),
            resource_version: existing.and_then(|s| s.resource_version()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Creates `secret`, or replaces it when it `exists` (its resourceVersion the precondition,
/// so a concurrent writer makes this fail with 409 rather than be overwritten).
pub(crate) async fn write(
    api: &Api<Secret>,
    secret: &Secret,
    exists: bool,
) -> Result<Secret, kube::Error> {
    let pp = PostParams {
        field_manager: Some(crate::controller::FIELD_MANAGER.into()),
        ..Default::default()
    };
    if exists {
        api.replace(&secret.name_any(), &pp, secret).await
    } else {
        api.create(&pp, secret).await
    }
}
