//! `metav1.Condition` bookkeeping shared by both controllers.
//!
//! A condition's `lastTransitionTime` moves only when its status flips; reason, message and
//! observedGeneration follow the latest observation. That is what kstatus, Argo CD and
//! `kubectl wait` expect, and it keeps status writes idempotent.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::conditions::{Reason, types};

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` unless the status
/// flips. Conditions stay sorted by type so equal states serialise equally.
pub(crate) fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.status = status.to_owned();
                c.last_transition_time = Time(now);
            }
            c.reason = reason.as_str().to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.as_str().to_owned(),
                message,
                last_transition_time: Time(now),
                observed_generation: generation,
            });
            conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        }
    }
}

/// Mirrors a Ready verdict into the abnormal-true conditions kstatus (Flux, kpt, Config
/// Sync) reads: `Stalled` when a person must act, `Reconciling` while work is under way,
/// both False when Ready.
pub(crate) fn set_kstatus(
    conditions: &mut Vec<Condition>,
    ready: bool,
    needs_action: bool,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let stalled = !ready && needs_action;
    let reconciling = !ready && !stalled;
    let (s_reason, s_msg) = if stalled {
        (reason, message)
    } else {
        (Reason::Idle, "")
    };
    set(
        conditions,
        types::STALLED,
        stalled,
        s_reason,
        s_msg,
        generation,
        now,
    );
    let (r_reason, r_msg) = if reconciling {
        (reason, message)
    } else {
        (Reason::Idle, "")
    };
    set(
        conditions,
        types::RECONCILING,
        reconciling,
        r_reason,
        r_msg,
        generation,
        now,
    );
}

/// The condition of type `type_`, if set.
pub(crate) fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is set and True.
#[cfg(test)]
pub(crate) fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conds = Vec::new();
        set(
            &mut conds,
            "Ready",
            false,
            Reason::Pending,
            "waiting",
            Some(1),
            ts(100),
        );
        set(
            &mut conds,
            "Ready",
            false,
            Reason::SecretNotFound,
            "no secret",
            Some(2),
            ts(200),
        );
        assert_eq!(conds[0].last_transition_time, Time(ts(100)));
        assert_eq!(conds[0].reason, "SecretNotFound");
        assert_eq!(conds[0].observed_generation, Some(2));
        set(
            &mut conds,
            "Ready",
            true,
            Reason::Connected,
            "ok",
            Some(2),
            ts(300),
        );
        assert_eq!(conds[0].last_transition_time, Time(ts(300)));
        assert!(is_true(&conds, "Ready"));
    }

    #[test]
    fn conditions_stay_sorted_by_type() {
        let mut conds = Vec::new();
        for t in ["Rotating", "Connected", "Ready"] {
            set(&mut conds, t, true, Reason::Idle, "", None, ts(1));
        }
        let types: Vec<_> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Connected", "Ready", "Rotating"]);
    }
}
