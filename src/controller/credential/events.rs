//! Events for ConnectorCredentials: what happened (the outcome of a provider step, said by
//! [`super::react`]) and what changed (health, problems that need a person, expiry), each
//! said once: a steady state, however often it is reconciled, publishes nothing.

use crate::api::conditions::{reasons, types};
use crate::api::{ConnectorCredentialStatus, HealthState, Phase};
use crate::controller::conditions::get;
use crate::controller::events::Note;

/// Ready reasons that describe a problem a person must fix in the object or its Secrets.
const PROBLEMS: [&str; 6] = [
    reasons::MISCONFIGURED,
    reasons::SECRET_NOT_FOUND,
    reasons::MISSING_KEY,
    reasons::TARGET_NOT_OWNED,
    reasons::TARGET_ALTERED,
    reasons::PROVIDER_UNREACHABLE,
];

fn health(status: &ConnectorCredentialStatus) -> Option<HealthState> {
    status
        .active_revision
        .as_ref()
        .and(status.active_health.as_ref())
        .map(|h| h.state)
}

fn ready(status: &ConnectorCredentialStatus) -> Option<(&str, &str)> {
    get(&status.conditions, types::READY).map(|c| (c.reason.as_str(), c.message.as_str()))
}

/// The events a status change deserves. `swapped`: this reconcile swapped a credential in
/// (its own event already says the connection works).
pub(crate) fn transitions(
    old: &ConnectorCredentialStatus,
    new: &ConnectorCredentialStatus,
    swapped: bool,
) -> Vec<Note> {
    const PROBE: &str = "Probe";
    let mut out = Vec::new();
    let message = new
        .active_health
        .as_ref()
        .map(|h| h.message.clone())
        .unwrap_or_default();
    match (health(old), health(new)) {
        (before, Some(now)) if before != Some(now) => match now {
            HealthState::Lost => out.push(Note::warning(reasons::CONNECTION_LOST, PROBE, message)),
            HealthState::Unreachable => {
                out.push(Note::warning(reasons::PROVIDER_UNREACHABLE, PROBE, message))
            }
            HealthState::PermissionMismatch => {
                out.push(Note::warning(reasons::PERMISSION_MISMATCH, PROBE, message))
            }
            HealthState::Misconfigured => {
                out.push(Note::warning(reasons::MISCONFIGURED, PROBE, message))
            }
            HealthState::Healthy if before.is_some() && !swapped => {
                let who = new.account.as_ref().map_or("the account", |a| a.label());
                out.push(Note::normal(
                    reasons::CONNECTED,
                    PROBE,
                    format!("connection restored: authenticated as {who}"),
                ));
            }
            HealthState::Healthy => {}
        },
        _ => {}
    }
    // A problem in the object or its Secrets, announced when it appears or changes. An
    // unreachable provider is announced once per outage: its message counts the attempts.
    let same = |old: Option<(&str, &str)>, reason: &str, message: &str| {
        old.is_some_and(|(r, m)| {
            r == reason && (m == message || r == reasons::PROVIDER_UNREACHABLE)
        })
    };
    if new.phase.is_some_and(Phase::needs_action)
        && let Some((reason, message)) = ready(new)
        && let Some(reason) = PROBLEMS.into_iter().find(|r| *r == reason)
        && !same(ready(old), reason, message)
        && !out.iter().any(|n| n.reason == reason)
    {
        out.push(Note::warning(reason, "Reconcile", message));
    }
    fn expiring(
        s: &ConnectorCredentialStatus,
    ) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        get(&s.conditions, types::EXPIRING_SOON).filter(|c| c.status == "True")
    }
    if let Some(c) = expiring(new)
        && expiring(old).is_none()
    {
        out.push(Note::warning(
            reasons::EXPIRING_SOON,
            "Reconcile",
            c.message.clone(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Account, ActiveHealth};
    use crate::controller::conditions::set;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(
        health: Option<HealthState>,
        phase: Phase,
        ready: (&str, &str),
    ) -> ConnectorCredentialStatus {
        let mut s = ConnectorCredentialStatus {
            phase: Some(phase),
            active_revision: health.map(|_| "sha256:a".to_owned()),
            account: Some(Account {
                id: "1".into(),
                name: "svc@acme.com".into(),
            }),
            active_health: health.map(|state| ActiveHealth {
                state,
                message: format!("{state:?} details"),
                since: Time(Timestamp::UNIX_EPOCH),
            }),
            ..Default::default()
        };
        set(
            &mut s.conditions,
            types::READY,
            phase == Phase::Connected,
            ready.0,
            ready.1,
            Some(1),
            Timestamp::UNIX_EPOCH,
        );
        s
    }

    fn said(notes: &[Note]) -> Vec<String> {
        notes
            .iter()
            .map(|n| format!("{:?}/{}", n.type_, n.reason))
            .collect()
    }

    #[test]
    fn each_change_is_said_once_and_a_steady_state_says_nothing() {
        use HealthState::*;
        let ok = status(Some(Healthy), Phase::Connected, ("Connected", "ok"));
        let lost = status(
            Some(Lost),
            Phase::ConnectionLost,
            ("ConnectionLost", "svc must re-authenticate"),
        );
        let unreachable = status(
            Some(Unreachable),
            Phase::ConnectionLost,
            ("ProviderUnreachable", "503 (3 failures)"),
        );
        let weak = status(
            Some(PermissionMismatch),
            Phase::PermissionMismatch,
            ("PermissionMismatch", "lacks x"),
        );
        let no_secret = status(
            Some(Healthy),
            Phase::Misconfigured,
            ("SecretNotFound", "the source Secret does not exist"),
        );
        let no_key = status(
            Some(Healthy),
            Phase::Misconfigured,
            ("MissingKey", "source Secret: lacks client_secret"),
        );
        let altered = status(
            Some(Healthy),
            Phase::ConnectionLost,
            ("TargetAltered", "target Secret x was changed"),
        );
        let fresh = ConnectorCredentialStatus::default();
        let down = |failures: u32| {
            status(
                None,
                Phase::ConnectionLost,
                ("ProviderUnreachable", &format!("503 ({failures} failures)")),
            )
        };
        let (down3, down4) = (down(3), down(4));
        let rows: Vec<(
            &str,
            &ConnectorCredentialStatus,
            &ConnectorCredentialStatus,
            &[&str],
        )> = vec![
            ("steady", &ok, &ok, &[]),
            ("lost", &ok, &lost, &["Warning/ConnectionLost"]),
            ("still lost", &lost, &lost, &[]),
            ("back", &lost, &ok, &["Normal/Connected"]),
            (
                "unreachable",
                &ok,
                &unreachable,
                &["Warning/ProviderUnreachable"],
            ),
            ("weaker", &ok, &weak, &["Warning/PermissionMismatch"]),
            (
                "source deleted",
                &ok,
                &no_secret,
                &["Warning/SecretNotFound"],
            ),
            ("still deleted", &no_secret, &no_secret, &[]),
            (
                "then a key missing",
                &no_secret,
                &no_key,
                &["Warning/MissingKey"],
            ),
            ("target altered", &ok, &altered, &["Warning/TargetAltered"]),
            ("first connect (said by the swap)", &fresh, &ok, &[]),
            (
                "never connected, provider down",
                &fresh,
                &down3,
                &["Warning/ProviderUnreachable"],
            ),
            ("one more failed attempt", &down3, &down4, &[]),
        ];
        for (name, old, new, want) in rows {
            assert_eq!(said(&transitions(old, new, false)), want, "{name}");
        }
        assert!(
            transitions(&lost, &ok, true).is_empty(),
            "a swap that fixes a lost connection says so itself"
        );
    }
}
