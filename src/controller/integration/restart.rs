//! When to roll an Integration's restart targets, pure.
//!
//! An Integration records each connector's credential revision in
//! `status.connectors[].activeRevision`. A credential whose active revision moves away from
//! the recorded one has been swapped, and the workloads must restart to read the new target
//! Secret. Swaps come in bursts (both sides of a sync rotated by one GitOps commit), so the
//! first unrolled swap opens a debounce window and everything swapped by its end rolls out
//! once. Only then are the new revisions recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

/// Pod-template annotation with the time of the last roll (RFC 3339).
pub(crate) const RESTARTED_AT: &str = "reconnect.dev/restartedAt";
/// Pod-template annotation with the revisions the last roll was for (`connector=revision,...`).
pub(crate) const REVISIONS: &str = "reconnect.dev/revisions";

/// What the restart decision looks at.
pub(crate) struct Input<'a> {
    /// Each connector (spec order) and its credential's active revision now, if any.
    pub current: &'a [(String, Option<String>)],
    /// The revisions the Integration last recorded, by connector.
    pub recorded: &'a BTreeMap<String, String>,
    /// The Integration has never recorded anything: take the current revisions as baseline.
    pub first_observation: bool,
    /// When the oldest swap not yet rolled out was first seen.
    pub pending_since: Option<Timestamp>,
    pub now: Timestamp,
    pub window: Duration,
    /// `spec.suspend`: no restarts, and nothing recorded, so a resume rolls what it missed.
    pub suspended: bool,
    /// Whether there is anything to roll.
    pub has_targets: bool,
}

/// What to do about restarts now.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// Nothing pending.
    Idle,
    /// A swap is pending; look again after this long.
    Wait(Duration),
    /// Roll the restart targets, recording these revisions (`connector=revision,...`).
    Roll(String),
}

/// The decision: what to do, what to record as each connector's revision in status, and
/// the debounce state to keep.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    pub action: Action,
    pub record: BTreeMap<String, Option<String>>,
    pub pending_since: Option<Timestamp>,
    /// For a roll: what to record and since when the swap pends if the roll must wait (no
    /// rollout slot is free).
    unrolled: Option<(BTreeMap<String, Option<String>>, Timestamp)>,
}

impl Plan {
    /// A roll put off by `wait`: nothing rolls now, the swapped connectors keep their old
    /// revisions on record, and the window stays open. Other plans are unchanged.
    pub fn put_off(self, wait: Duration) -> Plan {
        match self.unrolled {
            Some((record, since)) if matches!(self.action, Action::Roll(_)) => Plan {
                action: Action::Wait(wait),
                record,
                pending_since: Some(since),
                unrolled: None,
            },
            _ => self,
        }
    }
}

/// Decides whether the restart targets roll now.
pub(crate) fn plan(input: &Input<'_>) -> Plan {
    let mut record = BTreeMap::new();
    let mut swapped = false;
    for (name, current) in input.current {
        let recorded = input.recorded.get(name);
        let keep = match (recorded, current) {
            // A swap: keep the old revision on record until it is rolled out.
            (Some(old), Some(new)) if old != new && !input.first_observation => {
                swapped = true;
                Some(old.clone())
            }
            // Unchanged, newly connected, or first observation: the current one is the baseline.
            (_, Some(new)) => Some(new.clone()),
            // The credential has no active revision now (missing, not validated): keep what
            // was last rolled out, so a re-created credential with new material still rolls.
            (old, None) => old.cloned(),
        };
        record.insert(name.clone(), keep);
    }
    let current = || {
        input
            .current
            .iter()
            .map(|(name, rev)| (name.clone(), rev.clone().or_else(|| record[name].clone())))
            .collect::<BTreeMap<_, _>>()
    };
    if !swapped || input.suspended {
        return Plan {
            action: Action::Idle,
            record,
            pending_since: None,
            unrolled: None,
        };
    }
    if !input.has_targets {
        return Plan {
            action: Action::Idle,
            record: current(),
            pending_since: None,
            unrolled: None,
        };
    }
    let since = input.pending_since.unwrap_or(input.now);
    let window = jiff::SignedDuration::try_from(input.window).unwrap_or(jiff::SignedDuration::MAX);
    let due = since.saturating_add(window).unwrap_or(since);
    if input.now < due {
        let remaining = Duration::try_from(due.duration_since(input.now)).unwrap_or(input.window);
        return Plan {
            action: Action::Wait(remaining),
            record,
            pending_since: Some(since),
            unrolled: None,
        };
    }
    let revisions = input
        .current
        .iter()
        .filter_map(|(name, _)| Some(format!("{name}={}", current()[name].as_ref()?)))
        .collect::<Vec<_>>()
        .join(",");
    Plan {
        action: Action::Roll(revisions),
        record: current(),
        pending_since: None,
        unrolled: Some((record, since)),
    }
}

/// The merge patch that rolls a workload: only the two pod-template annotations, so nothing
/// the user owns changes.
pub(crate) fn rollout_patch(now: Timestamp, revisions: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT: now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        REVISIONS: revisions,
    }}}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    struct Case {
        name: &'static str,
        current: &'static [(&'static str, Option<&'static str>)],
        recorded: &'static [(&'static str, &'static str)],
        first: bool,
        pending_since: Option<i64>,
        now: i64,
        suspended: bool,
        has_targets: bool,
        action: Action,
        record: &'static [(&'static str, Option<&'static str>)],
        pending: Option<i64>,
    }

    const BASE: Case = Case {
        name: "",
        current: &[("procore", Some("r2")), ("sharepoint", Some("s1"))],
        recorded: &[("procore", "r1"), ("sharepoint", "s1")],
        first: false,
        pending_since: None,
        now: 0,
        suspended: false,
        has_targets: true,
        action: Action::Idle,
        record: &[("procore", Some("r1")), ("sharepoint", Some("s1"))],
        pending: None,
    };

    #[test]
    fn restart_decisions() {
        let cases = [
            Case {
                name: "first observation records a baseline without rolling",
                first: true,
                recorded: &[],
                record: &[("procore", Some("r2")), ("sharepoint", Some("s1"))],
                ..BASE
            },
            Case {
                name: "nothing swapped: idle",
                current: &[("procore", Some("r1")), ("sharepoint", Some("s1"))],
                ..BASE
            },
            Case {
                name: "a first swap opens the window and keeps the old revision on record",
                action: Action::Wait(Duration::from_secs(10)),
                pending: Some(0),
                ..BASE
            },
            Case {
                name: "inside the window: still waiting",
                pending_since: Some(0),
                now: 4,
                action: Action::Wait(Duration::from_secs(6)),
                pending: Some(0),
                ..BASE
            },
            Case {
                name: "a second swap inside the window joins the pending one",
                current: &[("procore", Some("r2")), ("sharepoint", Some("s2"))],
                pending_since: Some(0),
                now: 7,
                action: Action::Wait(Duration::from_secs(3)),
                record: &[("procore", Some("r1")), ("sharepoint", Some("s1"))],
                pending: Some(0),
                ..BASE
            },
            Case {
                name: "the window has passed: one roll with every new revision",
                current: &[("procore", Some("r3")), ("sharepoint", Some("s2"))],
                pending_since: Some(0),
                now: 10,
                action: Action::Roll("procore=r3,sharepoint=s2".into()),
                record: &[("procore", Some("r3")), ("sharepoint", Some("s2"))],
                ..BASE
            },
            Case {
                name: "suspended: no roll, nothing recorded, no window",
                pending_since: Some(0),
                now: 60,
                suspended: true,
                ..BASE
            },
            Case {
                name: "no restart targets: the swap is recorded at once",
                has_targets: false,
                record: &[("procore", Some("r2")), ("sharepoint", Some("s1"))],
                ..BASE
            },
            Case {
                name: "a newly connected credential is a baseline, not a swap",
                recorded: &[("sharepoint", "s1")],
                record: &[("procore", Some("r2")), ("sharepoint", Some("s1"))],
                ..BASE
            },
            Case {
                name: "a credential without a revision keeps the recorded one",
                current: &[("procore", None), ("sharepoint", Some("s1"))],
                record: &[("procore", Some("r1")), ("sharepoint", Some("s1"))],
                ..BASE
            },
            Case {
                name: "a roll names connectors whose credential vanished by their last revision",
                current: &[("procore", None), ("sharepoint", Some("s2"))],
                pending_since: Some(0),
                now: 11,
                action: Action::Roll("procore=r1,sharepoint=s2".into()),
                record: &[("procore", Some("r1")), ("sharepoint", Some("s2"))],
                ..BASE
            },
        ];
        for case in cases {
            let current: Vec<_> = case
                .current
                .iter()
                .map(|(n, r)| (n.to_string(), r.map(str::to_owned)))
                .collect();
            let recorded = case
                .recorded
                .iter()
                .map(|(n, r)| (n.to_string(), r.to_string()))
                .collect();
            let got = plan(&Input {
                current: &current,
                recorded: &recorded,
                first_observation: case.first,
                pending_since: case.pending_since.map(ts),
                now: ts(case.now),
                window: Duration::from_secs(10),
                suspended: case.suspended,
                has_targets: case.has_targets,
            });
            let record: BTreeMap<_, _> = case
                .record
                .iter()
                .map(|(n, r)| (n.to_string(), r.map(str::to_owned)))
                .collect();
            assert_eq!(got.action, case.action, "{}", case.name);
            assert_eq!(got.record, record, "{}", case.name);
            assert_eq!(got.pending_since, case.pending.map(ts), "{}", case.name);
        }
    }

    #[test]
    fn a_roll_put_off_keeps_the_old_revisions_and_the_window() {
        let current = vec![("procore".to_owned(), Some("r2".to_owned()))];
        let recorded = [("procore".to_owned(), "r1".to_owned())].into();
        let input = Input {
            current: &current,
            recorded: &recorded,
            first_observation: false,
            pending_since: Some(ts(0)),
            now: ts(11),
            window: Duration::from_secs(10),
            suspended: false,
            has_targets: true,
        };
        let rolled = plan(&input);
        assert_eq!(rolled.action, Action::Roll("procore=r2".into()));
        let put_off = rolled.put_off(Duration::from_secs(3));
        assert_eq!(put_off.action, Action::Wait(Duration::from_secs(3)));
        assert_eq!(put_off.record["procore"].as_deref(), Some("r1"));
        assert_eq!(put_off.pending_since, Some(ts(0)));
        // Anything but a roll is left as it is.
        let idle = plan(&Input {
            pending_since: None,
            current: &[("procore".to_owned(), Some("r1".to_owned()))],
            ..input
        });
        assert_eq!(idle.clone().put_off(Duration::from_secs(3)), idle);
    }

    #[test]
    fn the_rollout_patch_touches_only_the_two_pod_template_annotations() {
        let patch = rollout_patch(ts(0), "procore=r2");
        assert_eq!(
            patch,
            json!({"spec": {"template": {"metadata": {"annotations": {
                "reconnect.dev/restartedAt": "2023-11-14T22:13:20Z",
                "reconnect.dev/revisions": "procore=r2",
            }}}}})
        );
    }
}
