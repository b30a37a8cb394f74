//! Status aggregation, pure: each connector's ConnectorCredential as this Integration sees
//! it, then the Integration's phase, `readyConnectors` and conditions derived from them.
//!
//! A connector's phase is its credential's phase, except that a Connected credential whose
//! account lacks the Integration's own `requiredPermissions` is PermissionMismatch here. The
//! Integration's phase is the worst of its connectors.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::conditions::{Reason, types};
use crate::api::{
    Connector, ConnectorCredential, ConnectorCredentialStatus, ConnectorStatus, HealthState, Phase,
};
use crate::controller::conditions::{self, get};
use crate::providers::missing_permissions;

/// What a GET of a connector's ConnectorCredential found.
pub(crate) enum Found<'a> {
    /// No such ConnectorCredential in the namespace.
    Missing,
    /// It exists but does not match the schema (the deserialisation error).
    Malformed(&'a str),
    /// It exists.
    Credential(&'a ConnectorCredential),
}

/// One connector as observed: the status entry plus the reason behind its phase (for
/// conditions), whether its credential connects now, whether a person must act, and the
/// credential's current active revision (for restarts).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Observed {
    pub status: ConnectorStatus,
    pub reason: Reason,
    pub connected: bool,
    pub needs_action: bool,
    pub revision: Option<String>,
}

impl Observed {
    fn phase(&self) -> Phase {
        self.status.phase.unwrap_or_default()
    }
}

/// The credential's Ready message: what it says about itself.
fn ready_message(status: &ConnectorCredentialStatus) -> Option<String> {
    get(&status.conditions, types::READY)
        .map(|c| c.message.clone())
        .filter(|m| !m.is_empty())
}

/// One connector's status from its credential.
pub(crate) fn connector(connector: &Connector, found: Found<'_>) -> Observed {
    let name = &connector.name;
    let credential = &connector.credential_ref.name;
    let mut status = ConnectorStatus {
        name: name.clone(),
        credential: credential.clone(),
        ..ConnectorStatus::default()
    };
    let cred = match found {
        Found::Missing => {
            // Pending, not failed: GitOps may create the credential after the Integration.
            status.phase = Some(Phase::Pending);
            status.message = Some(format!("ConnectorCredential {credential} not found"));
            return Observed {
                status,
                reason: Reason::CredentialNotFound,
                connected: false,
                needs_action: true,
                revision: None,
            };
        }
        Found::Malformed(error) => {
            status.phase = Some(Phase::Misconfigured);
            status.message = Some(format!(
                "ConnectorCredential {credential} does not match its schema: {error}"
            ));
            return Observed {
                status,
                reason: Reason::Misconfigured,
                connected: false,
                needs_action: true,
                revision: None,
            };
        }
        Found::Credential(cred) => cred,
    };

    let cred_status = cred.status.clone().unwrap_or_default();
    let account = cred_status.account.as_ref().map(|a| a.label().to_owned());
    status.account = account.clone();
    if account.is_some() {
        let granted: BTreeSet<String> = cred_status.permissions.iter().cloned().collect();
        let required: BTreeSet<String> = connector.required_permissions.iter().cloned().collect();
        status.missing_permissions = missing_permissions(cred.spec.provider, &granted, &required);
    }
    let who = account
        .clone()
        .unwrap_or_else(|| format!("the account of ConnectorCredential {credential}"));
    let health = cred_status
        .active_health
        .as_ref()
        .filter(|_| cred_status.active_revision.is_some())
        .map(|h| h.state);
    let phase = cred_status.phase.unwrap_or_default();
    // The sync runs on the active credential: it connects unless that one is lost.
    let connected = cred_status.active_revision.is_some()
        && phase != Phase::ConnectionLost
        && matches!(
            health,
            None | Some(HealthState::Healthy | HealthState::PermissionMismatch)
        );
    let detail = ready_message(&cred_status).unwrap_or_else(|| phase.as_str().to_owned());
    let about = format!("ConnectorCredential {credential}: {detail}");

    let (phase, reason, message) = match phase {
        Phase::ConnectionLost => match health {
            Some(HealthState::Unreachable) => (
                Phase::ConnectionLost,
                Reason::ProviderUnreachable,
                format!("{name}: the provider cannot be reached for {who} ({about})"),
            ),
            Some(HealthState::Lost) | None => (
                Phase::ConnectionLost,
                Reason::ConnectionLost,
                format!("{name}: {who} must re-authenticate ({about})"),
            ),
            Some(_) => (
                Phase::ConnectionLost,
                Reason::ConnectionLost,
                format!("{name}: {about}"),
            ),
        },
        Phase::PermissionMismatch => (
            Phase::PermissionMismatch,
            Reason::PermissionMismatch,
            format!("{name}: {about}"),
        ),
        Phase::RotationRejected => (
            Phase::RotationRejected,
            Reason::RotationRejected,
            format!("{name}: {about}"),
        ),
        Phase::Misconfigured => (
            Phase::Misconfigured,
            Reason::Misconfigured,
            format!("{name}: {about}"),
        ),
        Phase::Connected if !status.missing_permissions.is_empty() => (
            Phase::PermissionMismatch,
            Reason::PermissionMismatch,
            format!(
                "{name}: {who} (ConnectorCredential {credential}) lacks {} that this Integration requires",
                status.missing_permissions.join(", ")
            ),
        ),
        Phase::Connected => (Phase::Connected, Reason::Connected, String::new()),
        Phase::Pending => (
            Phase::Pending,
            Reason::Pending,
            format!("{name}: ConnectorCredential {credential} is not connected yet: {detail}"),
        ),
    };
    status.phase = Some(phase);
    status.message = (!message.is_empty()).then_some(message);
    Observed {
        status,
        reason,
        connected,
        needs_action: phase.needs_action(),
        revision: cred_status.active_revision,
    }
}

/// What the connectors add up to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Summary {
    pub phase: Phase,
    pub ready_connectors: String,
}

fn messages<'a>(observed: impl Iterator<Item = &'a Observed>) -> String {
    observed
        .filter_map(|o| o.status.message.as_deref())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Derives the phase and sets the Ready, Connected and PermissionMismatch conditions.
pub(crate) fn summarize(
    observed: &[Observed],
    conds: &mut Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
) -> Summary {
    let mut set = |type_: &str, value: bool, reason: Reason, message: String| {
        conditions::set(conds, type_, value, reason, message, generation, now);
    };
    let total = observed.len();
    let connected = observed
        .iter()
        .filter(|o| o.phase() == Phase::Connected)
        .count();
    let phase = observed
        .iter()
        .map(Observed::phase)
        .max_by_key(|p| p.severity())
        .unwrap_or_default();

    // Connected: the connectors whose credential does not connect now, worst first.
    let mut down: Vec<&Observed> = observed.iter().filter(|o| !o.connected).collect();
    down.sort_by_key(|o| std::cmp::Reverse(o.phase().severity()));
    match down.first() {
        Some(first) => set(
            types::CONNECTED,
            false,
            first.reason,
            messages(down.iter().copied()),
        ),
        None => set(
            types::CONNECTED,
            true,
            Reason::Connected,
            format!("all {total} connectors are connected"),
        ),
    }

    let mismatched: Vec<_> = observed
        .iter()
        .filter(|o| {
            o.phase() == Phase::PermissionMismatch || !o.status.missing_permissions.is_empty()
        })
        .collect();
    if mismatched.is_empty() {
        set(
            types::PERMISSION_MISMATCH,
            false,
            Reason::PermissionsSatisfied,
            "every connector's account holds the permissions this Integration requires".into(),
        );
    } else {
        let msg = mismatched
            .iter()
            .map(|o| match &o.status.message {
                Some(m) if o.phase() == Phase::PermissionMismatch => m.clone(),
                _ => format!(
                    "{}: lacks {} that this Integration requires",
                    o.status.name,
                    o.status.missing_permissions.join(", ")
                ),
            })
            .collect::<Vec<_>>()
            .join("; ");
        set(
            types::PERMISSION_MISMATCH,
            true,
            Reason::PermissionMismatch,
            msg,
        );
    }

    let (ready, reason, message) = if phase == Phase::Connected {
        (
            true,
            Reason::Connected,
            format!("{connected}/{total} connectors connected"),
        )
    } else {
        let worst: Vec<_> = observed.iter().filter(|o| o.phase() == phase).collect();
        let reason = worst.first().map_or(Reason::Pending, |o| o.reason);
        let not_connected = observed.iter().filter(|o| o.phase() != Phase::Connected);
        (false, reason, messages(not_connected))
    };
    set(types::READY, ready, reason, message.clone());
    let needs_action = observed.iter().any(|o| o.needs_action);
    conditions::set_kstatus(
        conds,
        ready,
        needs_action,
        reason,
        &message,
        generation,
        now,
    );

    Summary {
        phase,
        ready_connectors: format!("{connected}/{total}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Account, ConnectorCredentialSpec, ConnectorCredentialStatus, CredentialRef};
    use crate::controller::conditions::is_true;

    const PROCORE_ACCOUNT: &str = "svc-sync@acme.com";

    /// The states a connector's credential can be in, as the matrix walks them.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum State {
        Connected,
        ConnectionLost,
        /// The credential is Connected but lacks the Integration's requiredPermissions.
        PermissionMismatch,
        Missing,
    }

    fn connector(name: &str, cred: &str, required: &[&str]) -> Connector {
        Connector {
            name: name.into(),
            credential_ref: CredentialRef { name: cred.into() },
            required_permissions: required.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn credential(name: &str, phase: Phase, permissions: &[&str]) -> ConnectorCredential {
        let spec: ConnectorCredentialSpec = serde_json::from_value(serde_json::json!({
            "provider": "procore", "auth": "ClientCredentials",
            "secretRef": {"name": format!("{name}-src")},
        }))
        .unwrap();
        let mut cred = ConnectorCredential::new(name, spec);
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut conds = Vec::new();
        let (ready, reason, msg, health) = match phase {
            Phase::Connected => (
                true,
                Reason::Connected,
                format!("authenticated as {PROCORE_ACCOUNT}"),
                HealthState::Healthy,
            ),
            Phase::ConnectionLost => (
                false,
                Reason::ConnectionLost,
                format!("{PROCORE_ACCOUNT} must re-authenticate: invalid_client"),
                HealthState::Lost,
            ),
            other => (false, Reason::Pending, "not validated yet".into(), {
                assert_eq!(other, Phase::Pending, "the matrix uses three phases");
                HealthState::Healthy
            }),
        };
        conditions::set(&mut conds, types::READY, ready, reason, msg, None, now);
        cred.status = Some(ConnectorCredentialStatus {
            phase: Some(phase),
            account: (phase != Phase::Pending).then(|| Account {
                id: "4567".into(),
                name: PROCORE_ACCOUNT.into(),
            }),
            permissions: permissions.iter().map(|s| s.to_string()).collect(),
            active_revision: (phase != Phase::Pending).then(|| format!("sha256:{name}")),
            active_health: (phase != Phase::Pending).then(|| crate::api::ActiveHealth {
                state: health,
                message: String::new(),
                since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            }),
            conditions: conds,
            ..Default::default()
        });
        cred
    }

    fn observe(name: &str, state: State) -> Observed {
        let c = connector(name, &format!("{name}-cred"), &["documents:standard"]);
        let cred = match state {
            State::Connected => credential(
                &c.credential_ref.name,
                Phase::Connected,
                &["documents:admin"],
            ),
            State::ConnectionLost => credential(
                &c.credential_ref.name,
                Phase::ConnectionLost,
                &["documents:admin"],
            ),
            State::PermissionMismatch => credential(
                &c.credential_ref.name,
                Phase::Connected,
                &["documents:read_only"],
            ),
            State::Missing => return super::connector(&c, Found::Missing),
        };
        super::connector(&c, Found::Credential(&cred))
    }

    type Pair = (State, State);
    /// (phase, readyConnectors, Ready reason, Connected, PermissionMismatch)
    type Expected = (Phase, &'static str, &'static str, bool, bool);

    fn expected_connector_phase(s: State) -> Phase {
        match s {
            State::Connected => Phase::Connected,
            State::ConnectionLost => Phase::ConnectionLost,
            State::PermissionMismatch => Phase::PermissionMismatch,
            State::Missing => Phase::Pending,
        }
    }

    #[test]
    fn two_connectors_in_every_combination_aggregate_to_the_worst_phase() {
        use State::*;
        let states = [Connected, ConnectionLost, PermissionMismatch, Missing];
        // (procore, sharepoint) -> (phase, readyConnectors, Ready reason, Connected, PermissionMismatch)
        let table: Vec<(Pair, Expected)> = vec![
            (
                (Connected, Connected),
                (Phase::Connected, "2/2", "Connected", true, false),
            ),
            (
                (Connected, ConnectionLost),
                (Phase::ConnectionLost, "1/2", "ConnectionLost", false, false),
            ),
            (
                (Connected, PermissionMismatch),
                (
                    Phase::PermissionMismatch,
                    "1/2",
                    "PermissionMismatch",
                    true,
                    true,
                ),
            ),
            (
                (Connected, Missing),
                (Phase::Pending, "1/2", "CredentialNotFound", false, false),
            ),
            (
                (ConnectionLost, Connected),
                (Phase::ConnectionLost, "1/2", "ConnectionLost", false, false),
            ),
            (
                (ConnectionLost, ConnectionLost),
                (Phase::ConnectionLost, "0/2", "ConnectionLost", false, false),
            ),
            (
                (ConnectionLost, PermissionMismatch),
                (Phase::ConnectionLost, "0/2", "ConnectionLost", false, true),
            ),
            (
                (ConnectionLost, Missing),
                (Phase::ConnectionLost, "0/2", "ConnectionLost", false, false),
            ),
            (
                (PermissionMismatch, Connected),
                (
                    Phase::PermissionMismatch,
                    "1/2",
                    "PermissionMismatch",
                    true,
                    true,
                ),
            ),
            (
                (PermissionMismatch, ConnectionLost),
                (Phase::ConnectionLost, "0/2", "ConnectionLost", false, true),
            ),
            (
                (PermissionMismatch, PermissionMismatch),
                (
                    Phase::PermissionMismatch,
                    "0/2",
                    "PermissionMismatch",
                    true,
                    true,
                ),
            ),
            (
                (PermissionMismatch, Missing),
                (
                    Phase::PermissionMismatch,
                    "0/2",
                    "PermissionMismatch",
                    false,
                    true,
                ),
            ),
            (
                (Missing, Connected),
                (Phase::Pending, "1/2", "CredentialNotFound", false, false),
            ),
            (
                (Missing, ConnectionLost),
                (Phase::ConnectionLost, "0/2", "ConnectionLost", false, false),
            ),
            (
                (Missing, PermissionMismatch),
                (
                    Phase::PermissionMismatch,
                    "0/2",
                    "PermissionMismatch",
                    false,
                    true,
                ),
            ),
            (
                (Missing, Missing),
                (Phase::Pending, "0/2", "CredentialNotFound", false, false),
            ),
        ];
        assert_eq!(table.len(), states.len() * states.len(), "the full matrix");
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        for ((a, b), (phase, ready, ready_reason, connected, mismatch)) in table {
            let observed = [observe("procore", a), observe("sharepoint", b)];
            for (o, s) in observed.iter().zip([a, b]) {
                assert_eq!(
                    o.status.phase,
                    Some(expected_connector_phase(s)),
                    "{a:?}/{b:?}"
                );
            }
            let mut conds = Vec::new();
            let summary = summarize(&observed, &mut conds, Some(3), now);
            let case = format!("{a:?}/{b:?}");
            assert_eq!(summary.phase, phase, "{case}");
            assert_eq!(summary.ready_connectors, ready, "{case}");
            let r = get(&conds, types::READY).unwrap();
            assert_eq!(
                (r.status == "True", r.reason.as_str()),
                (phase == Phase::Connected, ready_reason),
                "{case}"
            );
            assert_eq!(is_true(&conds, types::CONNECTED), connected, "{case}");
            assert_eq!(
                is_true(&conds, types::PERMISSION_MISMATCH),
                mismatch,
                "{case}"
            );
            assert!(
                conds.iter().all(|c| c.observed_generation == Some(3)),
                "{case}"
            );
            // kstatus: every non-Connected verdict in the matrix needs a person (a lost
            // connection, a permission shortfall, a missing credential): Stalled.
            let ready_now = phase == Phase::Connected;
            assert_eq!(
                is_true(&conds, types::STALLED),
                !ready_now,
                "{case}: Stalled"
            );
            assert!(!is_true(&conds, types::RECONCILING), "{case}: Reconciling");
            // Every connector that is not Connected says why, in Ready's message.
            for o in observed
                .iter()
                .filter(|o| o.status.phase != Some(Phase::Connected))
            {
                let msg = o.status.message.as_deref().unwrap();
                assert!(r.message.contains(msg), "{case}: {} lacks {msg}", r.message);
            }
        }
    }

    #[test]
    fn a_lost_connection_names_connector_credential_and_account() {
        let o = observe("procore", State::ConnectionLost);
        assert_eq!(o.reason, Reason::ConnectionLost);
        assert_eq!(
            o.status.message.as_deref(),
            Some(
                "procore: svc-sync@acme.com must re-authenticate (ConnectorCredential procore-cred: svc-sync@acme.com must re-authenticate: invalid_client)"
            )
        );
        assert_eq!(o.status.account.as_deref(), Some(PROCORE_ACCOUNT));
        assert_eq!(o.revision.as_deref(), Some("sha256:procore-cred"));
    }

    #[test]
    fn a_missing_credential_is_pending_with_credential_not_found() {
        let o = observe("sharepoint", State::Missing);
        assert_eq!(o.status.phase, Some(Phase::Pending));
        assert_eq!(o.reason, Reason::CredentialNotFound);
        assert_eq!(
            o.status.message.as_deref(),
            Some("ConnectorCredential sharepoint-cred not found")
        );
    }

    #[test]
    fn integration_permissions_are_checked_with_the_providers_vocabulary() {
        // documents:admin satisfies documents:standard in Procore's level order.
        let ok = observe("procore", State::Connected);
        assert!(ok.status.missing_permissions.is_empty());
        let short = observe("procore", State::PermissionMismatch);
        assert_eq!(short.status.missing_permissions, ["documents:standard"]);
        let msg = short.status.message.unwrap();
        assert!(
            msg.contains("documents:standard") && msg.contains(PROCORE_ACCOUNT),
            "{msg}"
        );
    }

    #[test]
    fn a_credential_not_validated_yet_is_pending() {
        let c = connector("procore", "procore-cred", &[]);
        let cred = credential("procore-cred", Phase::Pending, &[]);
        let o = super::connector(&c, Found::Credential(&cred));
        assert_eq!(
            (o.status.phase, o.reason),
            (Some(Phase::Pending), Reason::Pending)
        );
        assert!(o.status.account.is_none() && o.revision.is_none());
    }

    #[test]
    fn transition_times_stay_when_the_aggregate_does_not_flip() {
        let t1 = Timestamp::from_second(1_700_000_000).unwrap();
        let t2 = Timestamp::from_second(1_700_000_100).unwrap();
        let observed = [
            observe("procore", State::Connected),
            observe("sharepoint", State::Connected),
        ];
        let mut conds = Vec::new();
        summarize(&observed, &mut conds, Some(1), t1);
        let before = conds.clone();
        summarize(&observed, &mut conds, Some(1), t2);
        assert_eq!(conds, before, "nothing changed, nothing moves");
    }
}
