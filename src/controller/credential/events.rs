//! Events for ConnectorCredentials: what changed, said once.
//!
//! Events are derived from condition transitions, not from each reconcile, so a flapping
//! provider or a requeue loop cannot flood the API; kube's recorder folds repeats of the
//! same event into a series.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use crate::api::ConnectorCredentialStatus;
use crate::api::conditions::{reasons, types};
use crate::controller::Context;
use crate::controller::conditions::get;

/// Publishes one event; a failure to publish is logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        // The Events API caps notes at 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        warn!(error = %err, reason, "could not publish event");
    }
}

fn lost(status: &ConnectorCredentialStatus) -> Option<(&'static str, String)> {
    let c = get(&status.conditions, types::CONNECTED)?;
    let reason = [reasons::CONNECTION_LOST, reasons::PROVIDER_UNREACHABLE]
        .into_iter()
        .find(|r| c.status == "False" && c.reason == *r)?;
    Some((reason, c.message.clone()))
}

fn flipped_true(
    old: &ConnectorCredentialStatus,
    new: &ConnectorCredentialStatus,
    type_: &str,
) -> Option<String> {
    let was = get(&old.conditions, type_).is_some_and(|c| c.status == "True");
    let now = get(&new.conditions, type_).filter(|c| c.status == "True")?;
    (!was).then(|| now.message.clone())
}

/// The events a status change deserves (rotation outcomes are published where they happen).
pub(crate) fn transitions(
    old: &ConnectorCredentialStatus,
    new: &ConnectorCredentialStatus,
) -> Vec<(EventType, &'static str, String)> {
    let mut out = Vec::new();
    match (lost(old), lost(new)) {
        (None, Some((reason, msg))) => out.push((EventType::Warning, reason, msg)),
        (Some(_), None) if flipped_true(old, new, types::CONNECTED).is_some() => {
            let msg = get(&new.conditions, types::CONNECTED)
                .map(|c| format!("connection restored: {}", c.message))
                .unwrap_or_default();
            out.push((EventType::Normal, reasons::CONNECTED, msg));
        }
        _ => {}
    }
    let rejected_for_permissions = new
        .rejected
        .as_ref()
        .is_some_and(|r| r.reason == reasons::PERMISSION_MISMATCH);
    if !rejected_for_permissions
        && let Some(msg) = flipped_true(old, new, types::PERMISSION_MISMATCH)
    {
        out.push((EventType::Warning, reasons::PERMISSION_MISMATCH, msg));
    }
    if let Some(msg) = flipped_true(old, new, types::EXPIRING_SOON) {
        out.push((EventType::Warning, reasons::EXPIRING_SOON, msg));
    }
    let ready_reason = |s: &ConnectorCredentialStatus| {
        get(&s.conditions, types::READY).map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, msg)) = ready_reason(new) {
        let source_reason = [
            reasons::SECRET_NOT_FOUND,
            reasons::MISSING_KEY,
            reasons::MISCONFIGURED,
        ]
        .into_iter()
        .find(|r| *r == reason);
        let was = ready_reason(old).map(|(r, _)| r);
        if let Some(r) = source_reason
            && was.as_deref() != Some(r)
        {
            out.push((EventType::Warning, r, msg));
        }
    }
    out
}
