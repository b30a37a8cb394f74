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
