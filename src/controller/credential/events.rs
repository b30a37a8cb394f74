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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::set;
    use jiff::Timestamp;

    fn status(conds: &[(&str, bool, &str)]) -> ConnectorCredentialStatus {
        let mut s = ConnectorCredentialStatus::default();
        for (t, v, r) in conds {
            set(
                &mut s.conditions,
                t,
                *v,
                r,
                format!("{t} {r}"),
                Some(1),
                Timestamp::UNIX_EPOCH,
            );
        }
        s
    }

    fn reasons_of(events: &[(EventType, &'static str, String)]) -> Vec<&'static str> {
        events.iter().map(|(_, r, _)| *r).collect()
    }

    #[test]
    fn losing_and_regaining_the_connection_each_emit_once() {
        let ok = status(&[
            (types::CONNECTED, true, reasons::CONNECTED),
            (types::READY, true, reasons::CONNECTED),
        ]);
        let lost = status(&[
            (types::CONNECTED, false, reasons::CONNECTION_LOST),
            (types::READY, false, reasons::CONNECTION_LOST),
        ]);
        let lost_events = transitions(&ok, &lost);
        assert_eq!(reasons_of(&lost_events), [reasons::CONNECTION_LOST]);
        assert_eq!(lost_events[0].0, EventType::Warning);
        // Still lost: nothing new to say, however often it is reconciled.
        assert!(transitions(&lost, &lost).is_empty());
        let back = transitions(&lost, &ok);
        assert_eq!(reasons_of(&back), [reasons::CONNECTED]);
        assert_eq!(back[0].0, EventType::Normal);
    }

    #[test]
    fn expiring_soon_and_source_problems_are_announced_on_the_flip() {
        let ok = status(&[(types::READY, true, reasons::CONNECTED)]);
        let expiring = status(&[
            (types::READY, true, reasons::CONNECTED),
            (types::EXPIRING_SOON, true, reasons::EXPIRING_SOON),
        ]);
        assert_eq!(
            reasons_of(&transitions(&ok, &expiring)),
            [reasons::EXPIRING_SOON]
        );
        assert!(transitions(&expiring, &expiring).is_empty());
        let missing = status(&[(types::READY, false, reasons::SECRET_NOT_FOUND)]);
        assert_eq!(
            reasons_of(&transitions(&ok, &missing)),
            [reasons::SECRET_NOT_FOUND]
        );
        assert!(transitions(&missing, &missing).is_empty());
    }

    #[test]
    fn a_rejected_rotation_is_not_announced_twice_as_permission_mismatch() {
        let ok = status(&[(
            types::PERMISSION_MISMATCH,
            false,
            reasons::PERMISSIONS_SATISFIED,
        )]);
        let mut rejected = status(&[(
            types::PERMISSION_MISMATCH,
            true,
            reasons::PERMISSION_MISMATCH,
        )]);
        rejected.rejected = Some(crate::api::Rejection {
            revision: "sha256:b".into(),
            reason: reasons::PERMISSION_MISMATCH.into(),
            message: "m".into(),
            at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        });
        assert!(
            transitions(&ok, &rejected).is_empty(),
            "RotationRejected is published where it happens"
        );
        let mut lost_perm = rejected.clone();
        lost_perm.rejected = None;
        assert_eq!(
            reasons_of(&transitions(&ok, &lost_perm)),
            [reasons::PERMISSION_MISMATCH]
        );
    }
}
