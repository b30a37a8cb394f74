//! Kubernetes Events, as both controllers publish them.
//!
//! kube's recorder folds an event into an earlier one (a series) when type, reason, action and
//! related object agree, keeping the first note. A [`Note`] therefore carries an `action`
//! that names what was done and, where one event per object version matters (each rejected
//! revision), the related object, so distinct happenings keep distinct texts.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::Context;

/// The Events API caps notes at 1 kB.
const MAX_NOTE: usize = 1000;

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    /// What the operator did or tried (`Validate`, `Restore`, `Probe`, ...).
    pub action: &'static str,
    pub note: String,
    /// A second object the event is about (the source Secret version of a revision).
    pub related: Option<ObjectReference>,
}

impl Note {
    /// A Normal event for `action`.
    pub fn normal(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            action,
            note: note.into(),
            related: None,
        }
    }

    /// A Warning event for `action`.
    pub fn warning(reason: &'static str, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            ..Self::normal(reason, action, note)
        }
    }

    /// The same event, about `related` too.
    pub fn about(mut self, related: Option<ObjectReference>) -> Self {
        self.related = related;
        self
    }
}

/// Publishes one event; a failure to publish is logged, never fatal.
pub(crate) async fn publish(ctx: &Context, reference: &ObjectReference, note: Note) {
    let event = Event {
        type_: note.type_,
        reason: note.reason.to_owned(),
        note: Some(note.note.chars().take(MAX_NOTE).collect()),
        action: note.action.to_owned(),
        secondary: note.related,
    };
    if let Err(err) = ctx.recorder.publish(&event, reference).await {
        warn!(error = %err, reason = note.reason, "could not publish event");
    }
}
