//! The decision step: a pure function from what was observed to what to do next.
//!
//! Everything the reconcile loop must get right (when to validate, when to hold a rejected
//! revision back, when to refresh, how to finish a swap a crash interrupted) is decided here,
//! without any API, so every branch is a table row in the tests below.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::{ConnectorCredentialSpec, ConnectorCredentialStatus, duration};
use crate::providers::MissingKey;

/// The spec's durations, parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub refresh_before: Duration,
    pub expiry_warning: Duration,
    pub failure_threshold: u32,
}

impl Timing {
    /// Parses the spec's durations. The CRD schema already refuses malformed ones; this is
    /// the second line for objects stored before a schema change.
    pub fn from_spec(spec: &ConnectorCredentialSpec) -> Result<Self, duration::InvalidDuration> {
        Ok(Self {
            interval: duration::parse(&spec.validation.interval)?,
            timeout: duration::parse(&spec.validation.timeout)?,
            refresh_before: duration::parse(&spec.refresh_before)?,
            expiry_warning: duration::parse(&spec.expiry_warning)?,
            failure_threshold: spec.validation.failure_threshold.max(1) as u32,
        })
    }

    /// The CRD's defaults (15m, 10s, 10m, 336h, 3), used only to summarise a status whose
    /// own durations do not parse.
    pub fn fallback() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            timeout: Duration::from_secs(10),
            refresh_before: Duration::from_secs(10 * 60),
            expiry_warning: Duration::from_secs(336 * 3600),
            failure_threshold: 3,
        }
    }
}

/// The source Secret as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    /// No such Secret.
    Missing,
    /// The Secret lacks a key the auth type needs.
    MissingKey(MissingKey),
    /// The Secret holds a complete credential with this revision.
    Ready { revision: String },
}

/// The target Secret as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// No such Secret.
    Missing,
    /// A Secret of that name exists but this ConnectorCredential does not own it.
    Foreign,
    /// Our Secret: the revision it holds and when its access token expires.
    Present {
        revision: Option<String>,
        access_token_expires_at: Option<Timestamp>,
    },
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    pub generation: Option<i64>,
    pub status: &'a ConnectorCredentialStatus,
    pub timing: Timing,
    pub source: &'a Source,
    pub target: &'a Target,
    /// When the active credential was last probed successfully (status or this process).
    pub last_probe: Option<Timestamp>,
    pub now: Timestamp,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// The target Secret already holds this revision but status does not say so: a previous
    /// run stopped between the two writes. Finish the status; do not validate again.
    FinishSwap { revision: String },
    /// Validate this source revision and swap it in if it passes.
    Rotate { revision: String },
    /// Probe the active credential.
    Revalidate,
    /// Mint a new access token for the active credential.
    Refresh,
    /// Refuse to touch a Secret we do not own.
    TargetNotOwned,
    /// Nothing to do with the provider now.
    Idle,
}

/// The decision: a step, whether the source Secret is unusable, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub step: Step,
    /// Set when the source Secret cannot be used (missing, or missing a key).
    pub source_problem: Option<Source>,
    /// The latest time the next reconcile should run, if anything is scheduled.
    pub wake_at: Option<Timestamp>,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

fn earliest(times: impl IntoIterator<Item = Option<Timestamp>>) -> Option<Timestamp> {
    times.into_iter().flatten().min()
}

/// Decides the next step. Pure: same inputs, same plan.
pub(crate) fn decide(o: &Observed<'_>) -> Plan {
    let active = o.status.active_revision.as_deref();
    let spec_changed = o.status.observed_generation != o.generation;
    let (candidate, source_problem) = match o.source {
        Source::Ready { revision } => (Some(revision.as_str()), None),
        other => (None, Some(other.clone())),
    };
    let plan = |step, wake_at| Plan {
        step,
        source_problem: source_problem.clone(),
        wake_at,
    };

    let (target_revision, access_expiry) = match o.target {
        Target::Foreign => return plan(Step::TargetNotOwned, None),
        Target::Missing => (None, None),
        Target::Present {
            revision,
            access_token_expires_at,
        } => (revision.as_deref(), *access_token_expires_at),
    };

    // A rotation whose status write was lost: the target already holds the candidate.
    if let Some(candidate) = candidate
        && target_revision == Some(candidate)
        && active != Some(candidate)
    {
        return plan(
            Step::FinishSwap {
                revision: candidate.to_owned(),
            },
            None,
        );
    }

    // A new revision (or a lost target Secret) to validate, unless it was rejected recently
    // and nothing the user controls has changed since: the fix may be on the provider's side,
    // so it is retried on the validation interval, never in a hot loop.
    let mut held_until = None;
    if let Some(candidate) = candidate
        && (active != Some(candidate) || matches!(o.target, Target::Missing))
    {
        let retry_at = o
            .status
            .rejected
            .as_ref()
            .filter(|r| r.revision == candidate && !spec_changed)
            .map(|r| add(r.at.0, o.timing.interval));
        match retry_at {
            Some(at) if o.now < at => held_until = Some(at),
            _ => {
                return plan(
                    Step::Rotate {
                        revision: candidate.to_owned(),
                    },
                    None,
                );
            }
        }
    }

    // Keeping the active credential alive.
    if active.is_none() || target_revision.is_none() {
        return plan(Step::Idle, held_until);
    }
    if spec_changed {
        return plan(Step::Revalidate, None);
    }
    let refresh_at = access_expiry.map(|exp| sub(exp, o.timing.refresh_before));
    if refresh_at.is_some_and(|at| at <= o.now) {
        return plan(Step::Refresh, None);
    }
    let probe_at = o.last_probe.map(|t| add(t, o.timing.interval));
    if probe_at.is_none_or(|at| at <= o.now) {
        return plan(Step::Revalidate, None);
    }
    // Wake when the ExpiringSoon window opens, so the condition flips on time.
    let warn_at = o
        .status
        .expires_at
        .as_ref()
        .map(|t| sub(t.0, o.timing.expiry_warning))
        .filter(|at| *at > o.now);
    plan(
        Step::Idle,
        earliest([probe_at, refresh_at, held_until, warn_at]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Rejection;
    use crate::providers::{KeyProblem, MissingKey};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";

    fn t(mins: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + mins * 60).unwrap()
    }

    fn timing() -> Timing {
        Timing::fallback()
    }

    fn active(rev: &str) -> ConnectorCredentialStatus {
        ConnectorCredentialStatus {
            observed_generation: Some(1),
            active_revision: Some(rev.into()),
            ..Default::default()
        }
    }

    fn ready(rev: &str) -> Source {
        Source::Ready {
            revision: rev.into(),
        }
    }

    fn ours(rev: &str, access_exp: Option<Timestamp>) -> Target {
        Target::Present {
            revision: Some(rev.into()),
            access_token_expires_at: access_exp,
        }
    }

    fn rejected(rev: &str, at: Timestamp) -> Option<Rejection> {
        Some(Rejection {
            revision: rev.into(),
            reason: "PermissionMismatch".into(),
            message: "m".into(),
            at: Time(at),
        })
    }

    struct Row {
        name: &'static str,
        generation: i64,
        status: ConnectorCredentialStatus,
        source: Source,
        target: Target,
        last_probe: Option<Timestamp>,
        now: Timestamp,
        want_step: Step,
        want_wake: Option<Timestamp>,
        want_problem: bool,
    }

    fn row(name: &'static str) -> Row {
        Row {
            name,
            generation: 1,
            status: active(A),
            source: ready(A),
            target: ours(A, None),
            last_probe: Some(t(0)),
            now: t(5),
            want_step: Step::Idle,
            want_wake: Some(t(15)),
            want_problem: false,
        }
    }

    fn rotate(rev: &str) -> Step {
        Step::Rotate {
            revision: rev.into(),
        }
    }

    #[test]
    fn every_branch_of_the_decision() {
        let missing_key = Source::MissingKey(MissingKey {
            field: "client_secret",
            key: "client_secret".into(),
            auth: crate::api::AuthType::ClientCredentials,
            problem: KeyProblem::Absent,
        });
        let rows = vec![
            row("steady state waits for the next probe"),
            Row {
                status: ConnectorCredentialStatus {
                    observed_generation: None,
                    ..Default::default()
                },
                generation: 1,
                target: Target::Missing,
                last_probe: None,
                want_step: rotate(A),
                want_wake: None,
                ..row("a new credential is validated")
            },
            Row {
                source: ready(B),
                want_step: rotate(B),
                want_wake: None,
                ..row("a changed source Secret is validated")
            },
            Row {
                source: ready(B),
                target: ours(B, None),
                want_step: Step::FinishSwap { revision: B.into() },
                want_wake: None,
                ..row("a swap whose status write was lost is finished without validating")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                source: ready(B),
                want_step: Step::Idle,
                want_wake: Some(t(15)),
                ..row("a rejected revision is held until the interval passes")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                source: ready(B),
                now: t(15),
                last_probe: Some(t(10)),
                want_step: rotate(B),
                want_wake: None,
                ..row("a rejected revision is retried once the interval passed")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                generation: 2,
                source: ready(B),
                want_step: rotate(B),
                want_wake: None,
                ..row("a rejected revision is retried at once after a spec change")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                source: ready(B),
                last_probe: Some(t(-20)),
                want_step: Step::Revalidate,
                want_wake: None,
                ..row("while a rejected revision is held, the active one is still probed")
            },
            Row {
                status: ConnectorCredentialStatus {
                    observed_generation: Some(1),
                    rejected: rejected(B, t(0)),
                    ..Default::default()
                },
                source: ready(B),
                target: Target::Missing,
                want_step: Step::Idle,
                want_wake: Some(t(15)),
                ..row("a rejected first credential waits for the interval")
            },
            Row {
                target: Target::Missing,
                want_step: rotate(A),
                want_wake: None,
                ..row("a deleted target Secret is restored only after validating again")
            },
            Row {
                last_probe: Some(t(-10)),
                want_step: Step::Revalidate,
                want_wake: None,
                ..row("the active credential is probed when the interval has passed")
            },
            Row {
                last_probe: None,
                want_step: Step::Revalidate,
                want_wake: None,
                ..row("after a restart with no probe on record, probe once")
            },
            Row {
                generation: 2,
                want_step: Step::Revalidate,
                want_wake: None,
                ..row("a spec change re-validates the active credential")
            },
            Row {
                target: ours(A, Some(t(14))),
                want_step: Step::Refresh,
                want_wake: None,
                ..row("an access token inside refreshBefore is refreshed")
            },
            Row {
                target: ours(A, Some(t(60))),
                want_wake: Some(t(15)),
                ..row("an access token far from expiry is left alone")
            },
            Row {
                target: ours(A, Some(t(20))),
                want_wake: Some(t(10)),
                ..row("the next wake is the refresh time when it comes first")
            },
            Row {
                status: ConnectorCredentialStatus {
                    expires_at: Some(Time(t(336 * 60 + 8))),
                    ..active(A)
                },
                want_wake: Some(t(8)),
                ..row("the next wake opens the ExpiringSoon window on time")
            },
            Row {
                source: Source::Missing,
                want_problem: true,
                ..row("a deleted source Secret keeps the active credential running")
            },
            Row {
                source: missing_key.clone(),
                want_problem: true,
                last_probe: Some(t(-10)),
                want_step: Step::Revalidate,
                want_wake: None,
                ..row("a source Secret missing a key does not stop probing the active one")
            },
            Row {
                status: ConnectorCredentialStatus {
                    observed_generation: Some(1),
                    ..Default::default()
                },
                source: Source::Missing,
                target: Target::Missing,
                want_problem: true,
                want_wake: None,
                ..row("no Secret and nothing active: wait for a change")
            },
            Row {
                source: ready(B),
                target: Target::Foreign,
                want_step: Step::TargetNotOwned,
                want_wake: None,
                ..row("a target Secret we do not own is never written")
            },
        ];
        for r in rows {
            let plan = decide(&Observed {
                generation: Some(r.generation),
                status: &r.status,
                timing: timing(),
                source: &r.source,
                target: &r.target,
                last_probe: r.last_probe,
                now: r.now,
            });
            assert_eq!(plan.step, r.want_step, "{}", r.name);
            assert_eq!(plan.wake_at, r.want_wake, "{}: wake", r.name);
            assert_eq!(
                plan.source_problem.is_some(),
                r.want_problem,
                "{}: problem",
                r.name
            );
        }
    }

    /// The fallback is the CRD's defaults: a minimal spec parses to it.
    #[test]
    fn timing_parses_the_spec_defaults() {
        let spec: ConnectorCredentialSpec = serde_json::from_value(serde_json::json!({
            "provider": "google", "auth": "RefreshToken", "secretRef": {"name": "x"}
        }))
        .unwrap();
        assert_eq!(Timing::from_spec(&spec).unwrap(), timing());
    }
}
