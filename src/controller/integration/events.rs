//! Events for Integrations, derived from status transitions only (old status vs new), so a
//! flapping provider or a requeue loop cannot flood the API: each phase change is said once.

use crate::api::conditions::{Reason, types};
use crate::api::{IntegrationStatus, Phase};
use crate::controller::conditions::get;
use crate::controller::events::Note;

fn message(status: &IntegrationStatus, type_: &str) -> String {
    get(&status.conditions, type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// What [`transitions`] needs to know of the new status beyond what it says, typed (never
/// parsed back from a condition): the connectors whose ConnectorCredential does not exist,
/// and whether a restart target is missing.
#[derive(Debug, Default)]
pub(crate) struct Facts<'a> {
    pub missing_credentials: Vec<&'a str>,
    pub targets_missing: bool,
}

/// The events a status change deserves.
pub(crate) fn transitions(
    old: &IntegrationStatus,
    new: &IntegrationStatus,
    facts: &Facts<'_>,
) -> Vec<Note> {
    const ACTION: &str = "Aggregate";
    let mut out = Vec::new();
    if old.phase != new.phase {
        match new.phase {
            Some(Phase::ConnectionLost) => out.push(Note::warning(
                Reason::ConnectionLost,
                ACTION,
                message(new, types::CONNECTED),
            )),
            Some(Phase::PermissionMismatch) => out.push(Note::warning(
                Reason::PermissionMismatch,
                ACTION,
                message(new, types::PERMISSION_MISMATCH),
            )),
            Some(Phase::RotationRejected) => out.push(Note::warning(
                Reason::RotationRejected,
                ACTION,
                message(new, types::READY),
            )),
            Some(Phase::Misconfigured) => out.push(Note::warning(
                Reason::Misconfigured,
                ACTION,
                message(new, types::READY),
            )),
            Some(Phase::Connected) => {
                let note = if old.phase.is_some_and(|p| p != Phase::Pending) {
                    format!("recovered: {}", message(new, types::CONNECTED))
                } else {
                    message(new, types::CONNECTED)
                };
                out.push(Note::normal(Reason::Connected, ACTION, note));
            }
            Some(Phase::Pending) | None => {}
        }
    }
    // A connector's credential newly missing: its entry said something else before.
    let entry = |s: &'_ IntegrationStatus, name: &str| {
        s.connectors
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.message.clone())
    };
    if facts
        .missing_credentials
        .iter()
        .any(|name| entry(old, name) != entry(new, name))
    {
        out.push(Note::warning(
            Reason::CredentialNotFound,
            ACTION,
            message(new, types::CONNECTED),
        ));
    }
    // A restart target missing, said when the condition as written changes.
    let targets = |s: &IntegrationStatus| {
        get(&s.conditions, types::RESTART_TARGETS_FOUND)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    if facts.targets_missing
        && let Some((_, missing)) = targets(new)
        && targets(old) != targets(new)
    {
        out.push(Note::warning(
            Reason::RestartTargetNotFound,
            ACTION,
            missing,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConnectorStatus;
    use crate::controller::conditions::set;
    use jiff::Timestamp;

    /// An Integration status with one connector, `x`, whose entry says `says`.
    fn status(
        phase: Option<Phase>,
        connected: (Reason, &str),
        says: Option<&str>,
        targets: Option<&str>,
    ) -> IntegrationStatus {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut s = IntegrationStatus {
            phase,
            connectors: vec![ConnectorStatus {
                name: "x".into(),
                message: says.map(str::to_owned),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ok = connected.0 == Reason::Connected;
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
            Reason::PermissionMismatch,
            "lacks x",
            None,
            now,
        );
        let (found, reason, msg) = match targets {
            Some(m) => (false, Reason::RestartTargetNotFound, m),
            None => (true, Reason::RestartTargetsFound, "all there"),
        };
        set(
            &mut s.conditions,
            types::RESTART_TARGETS_FOUND,
            found,
            reason,
            msg,
            None,
            now,
        );
        s
    }

    #[test]
    fn events_follow_transitions_only() {
        let gone = "ConnectorCredential x not found";
        let connected = status(
            Some(Phase::Connected),
            (Reason::Connected, "all 2 connected"),
            None,
            None,
        );
        let lost = status(
            Some(Phase::ConnectionLost),
            (Reason::ConnectionLost, "procore: a@b must re-authenticate"),
            Some("procore: a@b must re-authenticate"),
            None,
        );
        let mismatch = status(
            Some(Phase::PermissionMismatch),
            (Reason::Connected, "ok"),
            None,
            None,
        );
        let not_found = status(
            Some(Phase::Pending),
            (Reason::CredentialNotFound, gone),
            Some(gone),
            None,
        );
        let no_target = status(
            Some(Phase::Connected),
            (Reason::Connected, "ok"),
            None,
            Some("Deployment/sync not found"),
        );
        let other_target = status(
            Some(Phase::Connected),
            (Reason::Connected, "ok"),
            None,
            Some("Deployment/other not found"),
        );
        let fresh = IntegrationStatus::default();
        let none = Facts::default();
        let missing = Facts {
            missing_credentials: vec!["x"],
            ..Facts::default()
        };
        let targets = Facts {
            targets_missing: true,
            ..Facts::default()
        };
        let reasons_of = |old: &IntegrationStatus, new: &IntegrationStatus, facts: &Facts| {
            transitions(old, new, facts)
                .into_iter()
                .map(|n| format!("{:?}/{}", n.type_, n.reason))
                .collect::<Vec<_>>()
        };
        #[allow(clippy::type_complexity)]
        let table: [(
            &str,
            &IntegrationStatus,
            &IntegrationStatus,
            &Facts,
            &[&str],
        ); 12] = [
            (
                "first connect",
                &fresh,
                &connected,
                &none,
                &["Normal/Connected"],
            ),
            ("steady", &connected, &connected, &none, &[]),
            (
                "loss",
                &connected,
                &lost,
                &none,
                &["Warning/ConnectionLost"],
            ),
            ("still lost", &lost, &lost, &none, &[]),
            ("recovery", &lost, &connected, &none, &["Normal/Connected"]),
            (
                "mismatch",
                &connected,
                &mismatch,
                &none,
                &["Warning/PermissionMismatch"],
            ),
            (
                "credential gone",
                &connected,
                &not_found,
                &missing,
                &["Warning/CredentialNotFound"],
            ),
            (
                "credential gone after a loss",
                &lost,
                &not_found,
                &missing,
                &["Warning/CredentialNotFound"],
            ),
            (
                "credential still gone",
                &not_found,
                &not_found,
                &missing,
                &[],
            ),
            (
                "target gone",
                &connected,
                &no_target,
                &targets,
                &["Warning/RestartTargetNotFound"],
            ),
            ("target still gone", &no_target, &no_target, &targets, &[]),
            (
                "another target gone",
                &no_target,
                &other_target,
                &targets,
                &["Warning/RestartTargetNotFound"],
            ),
        ];
        for (name, old, new, facts, want) in table {
            assert_eq!(reasons_of(old, new, facts), want, "{name}");
        }
        let note = &transitions(&connected, &lost, &none)[0].note;
        assert_eq!(note, "procore: a@b must re-authenticate");
    }
}
