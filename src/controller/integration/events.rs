//! Events for Integrations, derived from status transitions only (old status vs new), so a
//! flapping provider or a requeue loop cannot flood the API: each phase change is said once.

use crate::api::conditions::{reasons, types};
use crate::api::{IntegrationStatus, Phase};
use crate::controller::conditions::get;
use crate::controller::events::Note;

fn message(status: &IntegrationStatus, type_: &str) -> String {
    get(&status.conditions, type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn reason<'a>(status: &'a IntegrationStatus, type_: &str) -> Option<&'a str> {
    get(&status.conditions, type_).map(|c| c.reason.as_str())
}

/// The events a status change deserves.
pub(crate) fn transitions(old: &IntegrationStatus, new: &IntegrationStatus) -> Vec<Note> {
    const ACTION: &str = "Aggregate";
    let mut out = Vec::new();
    if old.phase != new.phase {
        match new.phase {
            Some(Phase::ConnectionLost) => out.push(Note::warning(
                reasons::CONNECTION_LOST,
                ACTION,
                message(new, types::CONNECTED),
            )),
            Some(Phase::PermissionMismatch) => out.push(Note::warning(
                reasons::PERMISSION_MISMATCH,
                ACTION,
                message(new, types::PERMISSION_MISMATCH),
            )),
            Some(Phase::RotationRejected) => out.push(Note::warning(
                reasons::ROTATION_REJECTED,
                ACTION,
                message(new, types::READY),
            )),
            Some(Phase::Misconfigured) => out.push(Note::warning(
                reasons::MISCONFIGURED,
                ACTION,
                message(new, types::READY),
            )),
            Some(Phase::Connected) => {
                let note = if old.phase.is_some_and(|p| p != Phase::Pending) {
                    format!("recovered: {}", message(new, types::CONNECTED))
                } else {
                    message(new, types::CONNECTED)
                };
                out.push(Note::normal(reasons::CONNECTED, ACTION, note));
            }
            Some(Phase::Pending) | None => {}
        }
    }
    let not_found =
        |s: &IntegrationStatus| reason(s, types::CONNECTED) == Some(reasons::CREDENTIAL_NOT_FOUND);
    if not_found(new) && !not_found(old) {
        out.push(Note::warning(
            reasons::CREDENTIAL_NOT_FOUND,
            ACTION,
            message(new, types::CONNECTED),
        ));
    }
    let targets = |s: &IntegrationStatus| {
        get(&s.conditions, types::RESTART_TARGETS_FOUND)
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone())
    };
    if let Some(missing) = targets(new)
        && targets(old).as_ref() != Some(&missing)
    {
        out.push(Note::warning(
            reasons::RESTART_TARGET_NOT_FOUND,
            ACTION,
            missing,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::conditions::set;
    use jiff::Timestamp;

    fn status(
        phase: Option<Phase>,
        connected: (&str, &str),
        targets: Option<&str>,
    ) -> IntegrationStatus {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut s = IntegrationStatus {
            phase,
            ..Default::default()
        };
        let ok = connected.0 == reasons::CONNECTED;
        set(
            &mut s.conditions,
            types::CONNECTED,
            ok,
            connected.0,
            connected.1,
            None,
            now,
        );
        set(
            &mut s.conditions,
            types::PERMISSION_MISMATCH,
            phase == Some(Phase::PermissionMismatch),
            "R",
            "lacks x",
            None,
            now,
        );
        let (found, msg) = match targets {
            Some(m) => (false, m),
            None => (true, "all there"),
        };
        set(
            &mut s.conditions,
            types::RESTART_TARGETS_FOUND,
            found,
            "R",
            msg,
            None,
            now,
        );
        s
    }

    #[test]
    fn events_follow_transitions_only() {
        let connected = status(
            Some(Phase::Connected),
            ("Connected", "all 2 connected"),
            None,
        );
        let lost = status(
            Some(Phase::ConnectionLost),
            ("ConnectionLost", "procore: a@b must re-authenticate"),
            None,
        );
        let mismatch = status(Some(Phase::PermissionMismatch), ("Connected", "ok"), None);
        let not_found = status(
            Some(Phase::Pending),
            ("CredentialNotFound", "ConnectorCredential x not found"),
            None,
        );
        let no_target = status(
            Some(Phase::Connected),
            ("Connected", "ok"),
            Some("Deployment/sync not found"),
        );
        let fresh = IntegrationStatus::default();
        let reasons_of = |old: &IntegrationStatus, new: &IntegrationStatus| {
            transitions(old, new)
                .into_iter()
                .map(|n| format!("{:?}/{}", n.type_, n.reason))
                .collect::<Vec<_>>()
        };
        let table: [(&str, &IntegrationStatus, &IntegrationStatus, &[&str]); 9] = [
            ("first connect", &fresh, &connected, &["Normal/Connected"]),
            ("steady", &connected, &connected, &[]),
            ("loss", &connected, &lost, &["Warning/ConnectionLost"]),
            ("still lost", &lost, &lost, &[]),
            ("recovery", &lost, &connected, &["Normal/Connected"]),
            (
                "mismatch",
                &connected,
                &mismatch,
                &["Warning/PermissionMismatch"],
            ),
            (
                "credential gone",
                &connected,
                &not_found,
                &["Warning/CredentialNotFound"],
            ),
            (
                "target gone",
                &connected,
                &no_target,
                &["Warning/RestartTargetNotFound"],
            ),
            ("target still gone", &no_target, &no_target, &[]),
        ];
        for (name, old, new, want) in table {
            assert_eq!(reasons_of(old, new), want, "{name}");
        }
        let note = &transitions(&connected, &lost)[0].note;
        assert_eq!(note, "procore: a@b must re-authenticate");
    }
}
