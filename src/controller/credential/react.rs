//! The reaction, pure: from what was read, planned and done to the status to write, the
//! events to publish, and what the target Secret holds afterwards.

use jiff::Timestamp;

use super::act::Outcome;
use super::decide::{Plan, Step, Timing, View};
use super::read::Source;
use super::status::{self, Fresh, TargetFact, Update, short};
use super::target::Target;
use crate::api::conditions::Reason;
use crate::api::{ConnectorCredentialStatus, RejectionReason};
use crate::controller::events::Note;

/// What one reconcile read and decided, as the reaction needs it.
pub(crate) struct Input<'a> {
    pub status: Option<&'a ConnectorCredentialStatus>,
    pub generation: Option<i64>,
    pub target_name: &'a str,
    pub spec_problem: Option<String>,
    pub source: &'a Source,
    pub target: &'a Target,
    pub view: &'a View,
    pub plan: &'a Plan,
    pub timing: Timing,
    pub now: Timestamp,
}

/// What to do about an outcome: status and events; the target write is the outcome's own
/// ([`Outcome::target_write`]).
pub(crate) struct Reaction {
    pub status: ConnectorCredentialStatus,
    pub events: Vec<Note>,
    /// The target Secret as it is once the outcome's write (if any) has landed.
    pub view: View,
}

fn rejection_action(reason: RejectionReason) -> &'static str {
    match reason {
        RejectionReason::ConnectionLost => "ValidateCredential",
        RejectionReason::PermissionMismatch => "ValidatePermissions",
        RejectionReason::MissingKey | RejectionReason::Misconfigured | RejectionReason::Other => {
            "ValidateConfiguration"
        }
    }
}

/// Reacts to `outcome`.
pub(crate) fn react(input: &Input<'_>, outcome: &Outcome) -> Reaction {
    let mut update = Update::new(input.status, input.now);
    let first = input.status.is_none_or(|s| s.active_revision.is_none());
    let mut events = Vec::new();
    let mut swapped = false;
    let mut transient = None;
    let mut target_fact = match input.target {
        Target::Foreign => TargetFact::Foreign {
            name: input.target_name.to_owned(),
        },
        Target::Altered(altered) => TargetFact::Altered {
            name: input.target_name.to_owned(),
            changed: altered.changed.clone(),
        },
        Target::Missing | Target::Intact(_) => TargetFact::Usable,
    };
    let related = match input.source {
        Source::Ready { reference, .. } => Some(reference.clone()),
        _ => None,
    };

    match outcome {
        Outcome::Nothing => {
            if let (Step::FinishSwap { revision }, Target::Intact(active)) =
                (&input.plan.step, input.target)
            {
                update.swapped(revision, active.record());
                swapped = true;
                events.push(Note::normal(
                    Reason::Rotated,
                    "Validate",
                    format!(
                        "revision {} is active (a swap interrupted before its status write was finished)",
                        short(revision)
                    ),
                ));
            }
        }
        Outcome::Swapped {
            validated,
            restored,
        } => {
            let revision = validated.revision();
            update.swapped(revision, validated.record());
            swapped = true;
            let who = validated.record().account.label().to_owned();
            let note = if *restored {
                let changed = match &target_fact {
                    TargetFact::Altered { changed, .. } => changed.join(", "),
                    _ => String::new(),
                };
                Note::warning(
                    Reason::TargetAltered,
                    "Restore",
                    format!(
                        "target Secret {} was changed outside the operator ({changed}); restored revision {} after validating it again as {who}",
                        input.target_name,
                        short(revision)
                    ),
                )
            } else if first {
                Note::normal(
                    Reason::Connected,
                    "Validate",
                    format!("connected as {who} (revision {})", short(revision)),
                )
            } else {
                Note::normal(
                    Reason::Rotated,
                    "Validate",
                    format!(
                        "revision {} validated and swapped in; now authenticated as {who}",
                        short(revision)
                    ),
                )
            };
            events.push(note.about(related.clone()));
            target_fact = TargetFact::Usable;
        }
        Outcome::Rejected {
            revision,
            error,
            spent,
        } => {
            update.rejected(revision, error, *spent);
            let reason = status::rejection_reason(error);
            let message = update
                .status
                .rejected
                .as_ref()
                .map(|r| r.message.clone())
                .unwrap_or_default();
            events.push(
                Note::warning(Reason::RotationRejected, rejection_action(reason), message)
                    .about(related.clone()),
            );
        }
        Outcome::Probed { verified, write } => {
            if let Some(v) = write {
                update.refreshed(v.validated().record().access.map(|a| a.expires_at));
            }
            update.revalidated(verified);
        }
        Outcome::Refreshed { validated } => {
            update.refreshed(validated.record().access.map(|a| a.expires_at));
        }
        Outcome::ActiveFailed { error, write } => {
            if let Some(v) = write {
                update.refreshed(v.validated().record().access.map(|a| a.expires_at));
            }
            update.active_failed(error);
        }
        Outcome::Transient {
            error,
            write,
            rotating,
            ..
        } => {
            if let Some(v) = write {
                update.refreshed(v.validated().record().access.map(|a| a.expires_at));
            }
            update.transient(error, input.timing.failure_threshold, *rotating);
            transient = Some(error.to_string());
        }
        // The reconcile fails with the write's error before any status is written.
        Outcome::Unpersisted { .. } => {}
    }
    update.forget_rejection_unless(input.source.revision());

    let fresh = Fresh {
        spec_problem: input.spec_problem.clone(),
        source: input.source,
        target: target_fact,
        transient,
    };
    let rendered = status::render(
        &mut update,
        &fresh,
        &input.timing,
        input.generation,
        input.now,
    );
    let old = input.status.cloned().unwrap_or_default();
    events.extend(super::events::transitions(
        &old,
        &update.status,
        rendered,
        swapped,
    ));
    let view = match outcome.target_holds() {
        Some(v) => View::Intact {
            revision: v.revision().to_owned(),
            access: v.record().access,
        },
        None => input.view.clone(),
    };
    Reaction {
        status: update.status,
        events,
        view,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Account, ActiveHealth, HealthState, Phase, Provider};
    use crate::controller::conditions::get;
    use crate::providers::{CredentialMaterial, DeadCause, TransientKind, VerifyError};
    use crate::secret::Redacted;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn candidate(token: &str) -> Source {
        let material = CredentialMaterial {
            client_id: Some(Redacted::from("app".to_owned())),
            refresh_token: Some(Redacted::from(token.to_owned())),
            ..Default::default()
        };
        Source::Ready {
            candidate: super::super::read::Candidate::new(material),
            reference: ObjectReference::default(),
        }
    }

    fn active(revision: &str, now: Timestamp) -> ConnectorCredentialStatus {
        ConnectorCredentialStatus {
            phase: Some(Phase::Connected),
            active_revision: Some(revision.to_owned()),
            account: Some(Account {
                id: "1".into(),
                name: "svc@acme.com".into(),
            }),
            active_health: Some(ActiveHealth {
                state: HealthState::Healthy,
                message: "ok".into(),
                since: Time(now),
            }),
            ..Default::default()
        }
    }

    fn dead() -> VerifyError {
        VerifyError::dead(
            Provider::Procore,
            "POST token endpoint",
            Some(400),
            Some("invalid_grant".into()),
            DeadCause::InvalidGrant,
        )
    }

    fn down() -> VerifyError {
        VerifyError::transient(
            Provider::Procore,
            "POST token endpoint",
            TransientKind::Unavailable,
            Some(503),
            None,
            None,
        )
    }

    fn denied() -> VerifyError {
        VerifyError::denied(
            Provider::Procore,
            "GET /rest/v1.0/me",
            Some(403),
            None,
            vec!["projects:admin".into()],
        )
    }

    #[test]
    fn every_outcome_to_phase_ready_reason_and_events() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let (old, new) = (candidate("rt-old"), candidate("rt-new"));
        let (a, b) = (
            old.revision().unwrap().to_owned(),
            new.revision().unwrap().to_owned(),
        );
        let connected = active(&a, now);
        let idle = Plan {
            step: Step::Idle,
            wake_at: None,
        };
        let rotate = Plan {
            step: Step::Rotate {
                revision: b.clone(),
            },
            wake_at: None,
        };
        let probe = Plan {
            step: Step::Revalidate { refresh: false },
            wake_at: None,
        };
        type Row<'a> = (
            &'a str,
            Option<&'a ConnectorCredentialStatus>,
            &'a Source,
            &'a Plan,
            Outcome,
            (Phase, Reason, &'a [&'a str]),
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "nothing due",
                Some(&connected),
                &old,
                &idle,
                Outcome::Nothing,
                (Phase::Connected, Reason::Connected, &[]),
            ),
            (
                "a dead candidate is refused; the active one stays",
                Some(&connected),
                &new,
                &rotate,
                Outcome::Rejected {
                    revision: b.clone(),
                    error: dead(),
                    spent: false,
                },
                (
                    Phase::RotationRejected,
                    Reason::RotationRejected,
                    &["Warning/RotationRejected"],
                ),
            ),
            (
                "a weaker candidate is refused",
                Some(&connected),
                &new,
                &rotate,
                Outcome::Rejected {
                    revision: b.clone(),
                    error: denied(),
                    spent: false,
                },
                (
                    Phase::PermissionMismatch,
                    Reason::PermissionMismatch,
                    &["Warning/RotationRejected"],
                ),
            ),
            (
                "the first credential is dead",
                None,
                &new,
                &rotate,
                Outcome::Rejected {
                    revision: b.clone(),
                    error: dead(),
                    spent: false,
                },
                (
                    Phase::ConnectionLost,
                    Reason::ConnectionLost,
                    &["Warning/RotationRejected"],
                ),
            ),
            (
                "the active credential dies",
                Some(&connected),
                &old,
                &probe,
                Outcome::ActiveFailed {
                    error: dead(),
                    write: None,
                },
                (
                    Phase::ConnectionLost,
                    Reason::ConnectionLost,
                    &["Warning/ConnectionLost"],
                ),
            ),
            (
                "the provider is down while a candidate is validated",
                Some(&connected),
                &new,
                &rotate,
                Outcome::Transient {
                    error: down(),
                    write: None,
                    rotating: true,
                    unwritten: None,
                },
                (Phase::Pending, Reason::Validating, &[]),
            ),
            (
                "the provider is down for the first credential",
                None,
                &new,
                &rotate,
                Outcome::Transient {
                    error: down(),
                    write: None,
                    rotating: true,
                    unwritten: None,
                },
                (Phase::Pending, Reason::Validating, &[]),
            ),
        ];
        for (name, status, source, plan, outcome, (phase, reason, said)) in rows {
            let view = View::Missing;
            let input = Input {
                status,
                generation: Some(1),
                target_name: "procore-sync-active",
                spec_problem: None,
                source,
                target: &Target::Missing,
                view: &view,
                plan,
                timing: Timing::fallback(),
                now,
            };
            let reaction = react(&input, &outcome);
            let ready = get(
                &reaction.status.conditions,
                crate::api::conditions::types::READY,
            )
            .unwrap();
            let events: Vec<String> = reaction
                .events
                .iter()
                .map(|n| format!("{:?}/{}", n.type_, n.reason))
                .collect();
            assert_eq!(
                (reaction.status.phase, ready.reason.as_str(), events),
                (
                    Some(phase),
                    reason.as_str(),
                    said.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                ),
                "{name}"
            );
        }
    }
}
