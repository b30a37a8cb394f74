//! Events for ConnectorCredentials: what happened (the outcome of a provider step, said by
//! [`super::react`]) and what changed (health, problems that need a person, expiry), each
//! said once: a steady state, however often it is reconciled, publishes nothing.

use super::status::Rendered;
use crate::api::conditions::{Reason, types};
use crate::api::{ConnectorCredentialStatus, HealthState, Phase};
use crate::controller::conditions::get;
use crate::controller::events::Note;

/// Ready reasons that describe a problem a person must fix in the object or its Secrets.
const PROBLEMS: [Reason; 6] = [
    Reason::Misconfigured,
    Reason::SecretNotFound,
    Reason::MissingKey,
    Reason::TargetNotOwned,
    Reason::TargetAltered,
    Reason::ProviderUnreachable,
];

fn health(status: &ConnectorCredentialStatus) -> Option<HealthState> {
    status
        .active_revision
        .as_ref()
        .and(status.active_health.as_ref())
        .map(|h| h.state)
}

/// The ExpiringSoon condition as written: its status and message.
fn expiring(status: &ConnectorCredentialStatus) -> Option<(&str, &str)> {
    get(&status.conditions, types::EXPIRING_SOON).map(|c| (c.status.as_str(), c.message.as_str()))
}

/// The Ready condition as written: its reason and message.
fn ready(status: &ConnectorCredentialStatus) -> Option<(&str, &str)> {
    get(&status.conditions, types::READY).map(|c| (c.reason.as_str(), c.message.as_str()))
}

/// The events a status change deserves. `rendered`: what [`super::status::render`]
/// concluded for `new`; `swapped`: this reconcile swapped a credential in (its own event
/// already says the connection works).
pub(crate) fn transitions(
    old: &ConnectorCredentialStatus,
    new: &ConnectorCredentialStatus,
    rendered: Rendered,
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
            HealthState::Lost => out.push(Note::warning(Reason::ConnectionLost, PROBE, message)),
            HealthState::Unreachable => {
                out.push(Note::warning(Reason::ProviderUnreachable, PROBE, message))
            }
            HealthState::PermissionMismatch => {
                out.push(Note::warning(Reason::PermissionMismatch, PROBE, message))
            }
            HealthState::Misconfigured => {
                out.push(Note::warning(Reason::Misconfigured, PROBE, message))
            }
            HealthState::Healthy if before.is_some() && !swapped => {
                let who = new.account.as_ref().map_or("the account", |a| a.label());
                out.push(Note::normal(
                    Reason::Connected,
                    PROBE,
                    format!("connection restored: authenticated as {who}"),
                ));
            }
            HealthState::Healthy => {}
        },
        _ => {}
    }
    // A problem in the object or its Secrets, announced when it appears or changes (when
    // Ready as written before differs from Ready as written now). An unreachable provider
    // is announced once per outage: its message counts the attempts.
    let reason = rendered.ready;
    if new.phase.is_some_and(Phase::needs_action)
        && PROBLEMS.contains(&reason)
        && let Some((now_reason, message)) = ready(new)
        && !ready(old).is_some_and(|(r, m)| {
            r == now_reason && (m == message || reason == Reason::ProviderUnreachable)
        })
        && !out.iter().any(|n| n.reason == reason)
    {
        out.push(Note::warning(reason, "Reconcile", message));
    }
    // Expiry, said when the credential enters its warning window (or its expiry moves
    // while inside it): when ExpiringSoon as written changes.
    if rendered.expiring
        && let Some((_, message)) = expiring(new)
        && expiring(old) != expiring(new)
    {
        out.push(Note::warning(Reason::ExpiringSoon, "Reconcile", message));
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
        ready: (Reason, &str),
    ) -> (ConnectorCredentialStatus, Reason) {
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
        (s, ready.0)
    }

    fn rendered(ready: Reason) -> Rendered {
        Rendered {
            ready,
            expiring: false,
        }
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
        let ok = status(Some(Healthy), Phase::Connected, (Reason::Connected, "ok"));
        let lost = status(
            Some(Lost),
            Phase::ConnectionLost,
            (Reason::ConnectionLost, "svc must re-authenticate"),
        );
        let unreachable = status(
            Some(Unreachable),
            Phase::ConnectionLost,
            (Reason::ProviderUnreachable, "503 (3 failures)"),
        );
        let weak = status(
            Some(PermissionMismatch),
            Phase::PermissionMismatch,
            (Reason::PermissionMismatch, "lacks x"),
        );
        let no_secret = status(
            Some(Healthy),
            Phase::Misconfigured,
            (Reason::SecretNotFound, "the source Secret does not exist"),
        );
        let no_key = status(
            Some(Healthy),
            Phase::Misconfigured,
            (Reason::MissingKey, "source Secret: lacks client_secret"),
        );
        let altered = status(
            Some(Healthy),
            Phase::ConnectionLost,
            (Reason::TargetAltered, "target Secret x was changed"),
        );
        let fresh = (ConnectorCredentialStatus::default(), Reason::Pending);
        let down = |failures: u32| {
            status(
                None,
                Phase::ConnectionLost,
                (
                    Reason::ProviderUnreachable,
                    &format!("503 ({failures} failures)"),
                ),
            )
        };
        let (down3, down4) = (down(3), down(4));
        type Row<'a> = (
            &'a str,
            &'a (ConnectorCredentialStatus, Reason),
            &'a (ConnectorCredentialStatus, Reason),
            &'a [&'a str],
        );
        let rows: Vec<Row<'_>> = vec![
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
            assert_eq!(
                said(&transitions(&old.0, &new.0, rendered(new.1), false)),
                want,
                "{name}"
            );
        }
        assert!(
            transitions(&lost.0, &ok.0, rendered(ok.1), true).is_empty(),
            "a swap that fixes a lost connection says so itself"
        );
    }

    #[test]
    fn expiry_is_said_when_the_window_opens_and_again_only_if_the_expiry_moves() {
        let (ok, _) = status(
            Some(HealthState::Healthy),
            Phase::Connected,
            (Reason::Connected, "ok"),
        );
        let soon = |at: &str| {
            let mut s = ok.clone();
            set(
                &mut s.conditions,
                types::EXPIRING_SOON,
                true,
                Reason::ExpiringSoon,
                format!("expires at {at}"),
                Some(1),
                Timestamp::UNIX_EPOCH,
            );
            s
        };
        let (a, b) = (soon("2027-01-01"), soon("2027-02-01"));
        let expiring = Rendered {
            ready: Reason::Connected,
            expiring: true,
        };
        assert_eq!(
            said(&transitions(&ok, &a, expiring, false)),
            ["Warning/ExpiringSoon"]
        );
        assert!(transitions(&a, &a, expiring, false).is_empty(), "steady");
        assert_eq!(
            said(&transitions(&a, &b, expiring, false)),
            ["Warning/ExpiringSoon"]
        );
        let renewed = Rendered {
            expiring: false,
            ..expiring
        };
        assert!(transitions(&a, &ok, renewed, false).is_empty(), "renewed");
    }
}
