//! The decision step: a pure function from what was observed to what to do next.
//!
//! Everything the reconcile loop must get right (when to validate, when to hold a rejected
//! revision back, when to refresh, how to finish a swap a crash interrupted) is decided here,
//! without any API, so every branch is a table row in the tests below.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::target::AccessWindow;
use crate::api::{ConnectorCredentialSpec, ConnectorCredentialStatus, HealthState, duration};

/// The spec's durations, parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub refresh_before: Duration,
    pub expiry_warning: Duration,
    pub failure_threshold: u32,
}

/// A spec duration the controller cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TimingError {
    /// Not a duration at all.
    #[error(transparent)]
    Invalid(#[from] duration::InvalidDuration),
    /// Outside the bounds the CRD sets.
    #[error("{field} must be between {min} and {max}")]
    OutOfRange {
        field: &'static str,
        min: String,
        max: String,
    },
}

/// Parses `raw` and holds it to the CRD's bounds for `field`.
fn bounded(
    field: &'static str,
    raw: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, TimingError> {
    let value = duration::parse(raw)?;
    if value < min || value > max {
        return Err(TimingError::OutOfRange {
            field,
            min: duration::format(min),
            max: duration::format(max),
        });
    }
    Ok(value)
}

impl Timing {
    /// Parses the spec's durations and holds them to the CRD's bounds. The CRD already
    /// refuses malformed and out-of-range ones; this is the second line for objects stored
    /// before a schema change (or where the CEL rules do not run): an interval under a second
    /// made the requeue computation panic and stopped the controller.
    pub fn from_spec(spec: &ConnectorCredentialSpec) -> Result<Self, TimingError> {
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        let v = &spec.validation;
        Ok(Self {
            interval: bounded("validation.interval", &v.interval, MINUTE, 24 * HOUR)?,
            timeout: bounded(
                "validation.timeout",
                &v.timeout,
                Duration::from_secs(1),
                5 * MINUTE,
            )?,
            refresh_before: bounded(
                "refreshBefore",
                &spec.refresh_before,
                Duration::ZERO,
                24 * HOUR,
            )?,
            expiry_warning: bounded("expiryWarning", &spec.expiry_warning, HOUR, 8760 * HOUR)?,
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

/// How soon after a token was issued it may be refreshed, at the least. A provider that
/// issues tokens which expire at once would otherwise be asked again in a loop.
pub(crate) const MIN_REFRESH_GAP: Duration = Duration::from_secs(30);

/// The target Secret as the decision sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum View {
    /// No such Secret.
    Missing,
    /// A Secret of that name exists but this ConnectorCredential does not own it.
    Foreign,
    /// Ours, but its content is not what the operator wrote.
    Altered,
    /// Ours and intact: the revision it holds and its access token's window.
    Intact {
        revision: String,
        access: Option<AccessWindow>,
    },
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    pub generation: Option<i64>,
    pub status: &'a ConnectorCredentialStatus,
    pub timing: Timing,
    /// The source revision, when the source Secret holds a complete credential.
    pub source: Option<&'a str>,
    pub target: &'a View,
    /// When the active credential was last probed successfully (status or this process).
    pub last_probe: Option<Timestamp>,
    /// This credential's offset in the validation interval (see [`next_slot`]).
    pub phase: Duration,
    /// How many refreshes in a row returned a token that lives less than
    /// [`MIN_REFRESH_GAP`]: each one doubles the wait before the next.
    pub short_tokens: u32,
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
    /// The target Secret was altered: validate this source revision (with the target's
    /// still-intact fields) and write it back if it passes.
    Restore { revision: String },
    /// Probe the active credential; with `refresh`, its access token is due too, and the
    /// tokens the probe's grant mints are kept (one token request serves both).
    Revalidate { refresh: bool },
    /// Mint a new access token for the active credential.
    Refresh,
    /// Refuse to touch a Secret we do not own.
    TargetNotOwned,
    /// Nothing to do with the provider now.
    Idle,
}

/// The decision: a step, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub step: Step,
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

/// When an access token with this window is refreshed: `refreshBefore` ahead of its
/// expiry, but never before half its lifetime has passed (so at most two token requests
/// per lifetime, however long `refreshBefore` is), and never sooner than
/// [`MIN_REFRESH_GAP`] after it was issued, doubled for each short-lived token in a row up
/// to the validation interval.
pub(crate) fn refresh_at(
    access: AccessWindow,
    refresh_before: Duration,
    short_tokens: u32,
    interval: Duration,
) -> Timestamp {
    let natural = sub(access.expires_at, refresh_before);
    let Some(issued) = access.issued_at else {
        // Written by a version that did not record the issue time: the next refresh
        // records it.
        return natural;
    };
    let lifetime = Duration::try_from(access.expires_at.duration_since(issued)).unwrap_or_default();
    let half = add(issued, lifetime / 2);
    let gap = MIN_REFRESH_GAP
        .saturating_mul(1u32 << short_tokens.min(16))
        .min(interval.max(MIN_REFRESH_GAP));
    natural.max(half).max(add(issued, gap))
}

/// The first of a credential's probe slots at or after `t`. The slots are one interval apart,
/// shifted by the credential's `phase` (its own offset in the interval), so credentials
/// validated together (a cold start, a restart, a mass rotation) are probed at their own
/// times, spread over the interval, and any window one interval long holds exactly one slot
/// of each.
pub(crate) fn next_slot(t: Timestamp, interval: Duration, phase: Duration) -> Timestamp {
    let every = i128::try_from(interval.as_millis())
        .unwrap_or(i128::MAX)
        .max(1);
    let phase = i128::try_from(phase.as_millis()).unwrap_or(0) % every;
    let at = i128::from(t.as_millisecond());
    let slot = (at - phase + every - 1).div_euclid(every) * every + phase;
    i64::try_from(slot)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(t)
}

/// Decides the next step. Pure: same inputs, same plan.
pub(crate) fn decide(o: &Observed<'_>) -> Plan {
    let active = o.status.active_revision.as_deref();
    let spec_changed = o.status.observed_generation != o.generation;
    let plan = |step, wake_at| Plan { step, wake_at };
    // A revision rejected recently is retried only on the validation interval (the fix may
    // be on the provider's side), or at once after a spec change, never in a hot loop. One
    // whose rotating refresh token the validation spent waits for a change: presenting the
    // spent token again would be refused, and providers with reuse detection would revoke
    // the chain.
    let held = |candidate: &str| {
        o.status
            .rejected
            .as_ref()
            .filter(|r| r.revision == candidate && !spec_changed)
            .map(|r| {
                if r.spent {
                    Timestamp::MAX
                } else {
                    add(r.at.0, o.timing.interval)
                }
            })
            .filter(|at| o.now < *at)
    };

    let (target_revision, access) = match o.target {
        View::Foreign => return plan(Step::TargetNotOwned, None),
        View::Altered => {
            // Nothing in an altered Secret is probed or refreshed; it is restored from the
            // source (validated again), or left alone when the source cannot be used.
            return match o.source {
                Some(candidate) => match held(candidate) {
                    Some(at) => plan(Step::Idle, Some(at)),
                    None => plan(
                        Step::Restore {
                            revision: candidate.to_owned(),
                        },
                        None,
                    ),
                },
                None => plan(Step::Idle, None),
            };
        }
        View::Missing => (None, None),
        View::Intact { revision, access } => (Some(revision.as_str()), *access),
    };

    // A swap whose status write was lost: the target holds a revision status does not name.
    // Only validated material reaches the target, so status follows it, even when the source
    // has moved on meanwhile (that revision is validated next); otherwise status would keep
    // naming a credential the target no longer holds, and nothing would refresh the one it
    // does.
    if let Some(held) = target_revision
        && active != Some(held)
    {
        return plan(
            Step::FinishSwap {
                revision: held.to_owned(),
            },
            None,
        );
    }

    // A new revision (or a lost target Secret) to validate, unless it is held.
    let mut held_until = None;
    if let Some(candidate) = o.source
        && (active != Some(candidate) || target_revision.is_none())
    {
        match held(candidate) {
            Some(at) => held_until = Some(at),
            None => {
                return plan(
                    Step::Rotate {
                        revision: candidate.to_owned(),
                    },
                    None,
                );
            }
        }
    }

    // Keeping the active credential alive: only the one the target Secret holds.
    if active.is_none() || target_revision != active {
        return plan(Step::Idle, held_until);
    }
    // A credential the provider refused is not refreshed again (the refresh would be refused
    // the same way, in a loop): it is probed on the interval until it works again.
    let lost = o
        .status
        .active_health
        .as_ref()
        .is_some_and(|h| h.state == HealthState::Lost);
    let refresh = access.filter(|_| !lost).map(|a| {
        refresh_at(
            a,
            o.timing.refresh_before,
            o.short_tokens,
            o.timing.interval,
        )
    });
    let refresh_due = refresh.is_some_and(|at| at <= o.now);
    // The next probe: the credential's first slot at least half an interval after the last
    // one (then exactly one interval apart).
    let probe_at = o
        .last_probe
        .map(|t| next_slot(add(t, o.timing.interval / 2), o.timing.interval, o.phase));
    // A routine probe waits for a refresh due within half an interval, to share its token
    // request.
    let refresh_soon = refresh.filter(|at| *at <= add(o.now, o.timing.interval / 2));
    if !spec_changed
        && !refresh_due
        && let Some(at) = refresh_soon
        && probe_at.is_some_and(|p| p <= o.now)
    {
        return plan(Step::Idle, Some(at));
    }
    if spec_changed || probe_at.is_none_or(|at| at <= o.now) {
        return plan(
            Step::Revalidate {
                refresh: refresh_due,
            },
            None,
        );
    }
    if refresh_due {
        // A probe that would fall due before the next refresh rides along with this one: one
        // token request serves both, and the probes keep step with the refreshes.
        let gap = access
            .zip(refresh)
            .and_then(|(a, at)| Some(at.duration_since(a.issued_at?)))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(o.timing.interval);
        if probe_at.is_some_and(|at| at <= add(o.now, gap)) {
            return plan(Step::Revalidate { refresh: true }, None);
        }
        return plan(Step::Refresh, None);
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
        earliest([probe_at, refresh, held_until, warn_at]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Rejection, RejectionReason};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const A: &str = "sha256:aaaa";
    const B: &str = "sha256:bbbb";
    const C: &str = "sha256:cccc";

    fn t(mins: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + mins * 60).unwrap()
    }

    fn secs(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
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

    fn ours(rev: &str, access: Option<(Timestamp, Timestamp)>) -> View {
        View::Intact {
            revision: rev.into(),
            access: access.map(|(issued, exp)| AccessWindow {
                issued_at: Some(issued),
                expires_at: exp,
            }),
        }
    }

    fn rejected(rev: &str, at: Timestamp) -> Option<Rejection> {
        Some(Rejection {
            revision: rev.into(),
            reason: RejectionReason::PermissionMismatch,
            message: "m".into(),
            at: Time(at),
            spent: false,
        })
    }

    struct Row {
        name: &'static str,
        generation: i64,
        status: ConnectorCredentialStatus,
        source: Option<&'static str>,
        target: View,
        last_probe: Option<Timestamp>,
        short_tokens: u32,
        now: Timestamp,
        want_step: Step,
        want_wake: Option<Timestamp>,
    }

    fn row(name: &'static str) -> Row {
        Row {
            name,
            generation: 1,
            status: active(A),
            source: Some(A),
            target: ours(A, None),
            last_probe: Some(t(0)),
            short_tokens: 0,
            now: t(5),
            want_step: Step::Idle,
            want_wake: Some(t(15)),
        }
    }

    fn rotate(rev: &str) -> Step {
        Step::Rotate {
            revision: rev.into(),
        }
    }

    #[test]
    fn every_branch_of_the_decision() {
        let rows = vec![
            row("steady state waits for the next probe"),
            Row {
                status: ConnectorCredentialStatus::default(),
                target: View::Missing,
                last_probe: None,
                want_step: rotate(A),
                want_wake: None,
                ..row("a new credential is validated")
            },
            Row {
                source: Some(B),
                want_step: rotate(B),
                want_wake: None,
                ..row("a changed source Secret is validated")
            },
            Row {
                source: Some(B),
                target: ours(B, None),
                want_step: Step::FinishSwap { revision: B.into() },
                want_wake: None,
                ..row("a swap whose status write was lost is finished without validating")
            },
            Row {
                source: Some(C),
                target: ours(B, None),
                want_step: Step::FinishSwap { revision: B.into() },
                want_wake: None,
                ..row("a lost status write is finished even when the source has moved on since")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                source: Some(B),
                want_step: Step::Idle,
                want_wake: Some(t(15)),
                ..row("a rejected revision is held until the interval passes")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                source: Some(B),
                now: t(15),
                last_probe: Some(t(10)),
                want_step: rotate(B),
                want_wake: None,
                ..row("a rejected revision is retried once the interval passed")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)).map(|r| Rejection { spent: true, ..r }),
                    ..active(A)
                },
                source: Some(B),
                now: t(60 * 24),
                last_probe: Some(t(60 * 24 - 1)),
                want_step: Step::Idle,
                // The next probe slot (phase 0: every 15 minutes from t(0)).
                want_wake: Some(t(60 * 24 + 15)),
                ..row("a revision whose refresh token was spent is never retried as it is")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                generation: 2,
                source: Some(B),
                want_step: rotate(B),
                want_wake: None,
                ..row("a rejected revision is retried at once after a spec change")
            },
            Row {
                status: ConnectorCredentialStatus {
                    rejected: rejected(B, t(0)),
                    ..active(A)
                },
                source: Some(B),
                last_probe: Some(t(-20)),
                want_step: Step::Revalidate { refresh: false },
                want_wake: None,
                ..row("while a rejected revision is held, the active one is still probed")
            },
            Row {
                status: ConnectorCredentialStatus {
                    observed_generation: Some(1),
                    rejected: rejected(B, t(0)),
                    ..Default::default()
                },
                source: Some(B),
                target: View::Missing,
                want_step: Step::Idle,
                want_wake: Some(t(15)),
                ..row("a rejected first credential waits for the interval")
            },
            Row {
                target: View::Missing,
                want_step: rotate(A),
                want_wake: None,
                ..row("a deleted target Secret is restored only after validating again")
            },
            Row {
                target: View::Altered,
                want_step: Step::Restore { revision: A.into() },
                want_wake: None,
                ..row("an altered target Secret is restored from the source, validated again")
            },
            Row {
                target: View::Altered,
                status: ConnectorCredentialStatus {
                    rejected: rejected(A, t(0)),
                    ..active(A)
                },
                want_step: Step::Idle,
                want_wake: Some(t(15)),
                ..row("a restore the provider refused waits for the interval")
            },
            Row {
                target: View::Altered,
                last_probe: Some(t(-60)),
                source: None,
                want_step: Step::Idle,
                want_wake: None,
                ..row("an altered target without a usable source is never probed")
            },
            Row {
                last_probe: Some(t(-10)),
                want_step: Step::Revalidate { refresh: false },
                want_wake: None,
                ..row("the active credential is probed when the interval has passed")
            },
            Row {
                last_probe: None,
                want_step: Step::Revalidate { refresh: false },
                want_wake: None,
                ..row("after a restart with no probe on record, probe once")
            },
            Row {
                generation: 2,
                want_step: Step::Revalidate { refresh: false },
                want_wake: None,
                ..row("a spec change re-validates the active credential")
            },
            Row {
                target: ours(A, Some((t(0), t(4)))),
                want_step: Step::Refresh,
                want_wake: None,
                ..row("an access token inside refreshBefore is refreshed")
            },
            Row {
                target: ours(A, Some((t(-3), t(7)))),
                last_probe: Some(t(-10)),
                want_step: Step::Idle,
                want_wake: Some(t(2)),
                now: t(1),
                ..row("a probe due waits for a refresh due within half an interval")
            },
            Row {
                target: ours(A, Some((t(-46), t(14)))),
                last_probe: Some(t(-10)),
                want_step: Step::Revalidate { refresh: true },
                want_wake: None,
                ..row("a probe and a refresh due together take one token request")
            },
            Row {
                target: ours(A, Some((t(-46), t(14)))),
                now: t(8),
                want_step: Step::Revalidate { refresh: true },
                want_wake: None,
                ..row("a refresh due takes along a probe due before the next refresh")
            },
            Row {
                status: ConnectorCredentialStatus {
                    active_health: Some(crate::api::ActiveHealth {
                        state: HealthState::Lost,
                        message: "m".into(),
                        since: Time(t(0)),
                    }),
                    ..active(A)
                },
                target: ours(A, Some((t(-60), t(-1)))),
                want_step: Step::Idle,
                want_wake: Some(t(15)),
                ..row("a refused credential with an expired token waits for the next probe")
            },
            Row {
                target: ours(A, Some((t(0), t(60)))),
                want_wake: Some(t(15)),
                ..row("an access token far from expiry is left alone")
            },
            Row {
                target: ours(A, Some((t(-40), t(20)))),
                want_wake: Some(t(10)),
                ..row("the next wake is the refresh time when it comes first")
            },
            Row {
                target: ours(A, Some((t(4), t(6)))),
                want_wake: Some(t(5)),
                now: t(4),
                ..row("a two-minute token is refreshed at half its life, not at once")
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
                source: None,
                ..row("a deleted source Secret keeps the active credential running")
            },
            Row {
                source: None,
                last_probe: Some(t(-10)),
                want_step: Step::Revalidate { refresh: false },
                want_wake: None,
                ..row("an unusable source Secret does not stop probing the active one")
            },
            Row {
                status: ConnectorCredentialStatus {
                    observed_generation: Some(1),
                    ..Default::default()
                },
                source: None,
                target: View::Missing,
                want_wake: None,
                ..row("no Secret and nothing active: wait for a change")
            },
            Row {
                source: Some(B),
                target: View::Foreign,
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
                source: r.source,
                target: &r.target,
                last_probe: r.last_probe,
                phase: Duration::ZERO,
                short_tokens: r.short_tokens,
                now: r.now,
            });
            assert_eq!(plan.step, r.want_step, "{}", r.name);
            assert_eq!(plan.wake_at, r.want_wake, "{}: wake", r.name);
        }
    }

    #[test]
    fn probe_slots_are_one_interval_apart_at_each_credentials_own_phase() {
        let every = Duration::from_secs(900);
        let phase = Duration::from_secs(100);
        // The slot at or after a time: exact slots stay, others move to the next one.
        assert_eq!(next_slot(secs(100), every, phase), secs(100));
        assert_eq!(next_slot(secs(101), every, phase), secs(1000));
        assert_eq!(next_slot(secs(-799), every, phase), secs(100));
        // A phase longer than the interval wraps around.
        assert_eq!(next_slot(secs(0), every, every + phase), secs(100));

        // 1,000 credentials validated in the same second are probed spread over the next
        // interval, each exactly once in any window one interval long.
        let phases: Vec<Duration> = (0..1000u64)
            .map(|i| Duration::from_millis(i * 900 + 7))
            .collect();
        let start = secs(0);
        let mut firsts: Vec<i64> = phases
            .iter()
            .map(|p| {
                let first = next_slot(add(start, every / 2), every, *p);
                first.duration_since(start).as_secs()
            })
            .collect();
        firsts.sort_unstable();
        assert!(firsts[0] >= 450 && firsts[999] < 450 + 900, "{firsts:?}");
        let per_minute = firsts.iter().filter(|s| (450..510).contains(*s)).count();
        assert!(per_minute <= 70, "{per_minute} probes in the first minute");
        for p in &phases {
            let first = next_slot(add(start, every / 2), every, *p);
            let second = next_slot(add(first, every / 2), every, *p);
            assert_eq!(second.duration_since(first).as_secs(), 900);
        }
    }

    #[test]
    fn refresh_times_follow_the_token_lifetime() {
        let hour = Duration::from_secs(3600);
        let ten_min = Duration::from_secs(600);
        let window = |issued: i64, lifetime: i64| AccessWindow {
            issued_at: Some(secs(issued)),
            expires_at: secs(issued + lifetime),
        };
        // (what, window, refreshBefore, short tokens in a row, refresh at)
        let rows = [
            (
                "1h token, 10m ahead",
                window(0, 3600),
                ten_min,
                0,
                secs(3000),
            ),
            (
                "12m token, 10m ahead: half its life",
                window(0, 720),
                ten_min,
                0,
                secs(360),
            ),
            ("5m token (Keycloak)", window(0, 300), ten_min, 0, secs(150)),
            ("60s token", window(0, 60), ten_min, 0, secs(30)),
            ("10s token: the floor", window(0, 10), ten_min, 0, secs(30)),
            ("expires at once", window(0, 0), ten_min, 0, secs(30)),
            (
                "third short token in a row",
                window(0, 1),
                ten_min,
                3,
                secs(240),
            ),
            (
                "many short tokens: at most the interval",
                window(0, 1),
                ten_min,
                12,
                secs(900),
            ),
            (
                "refreshBefore 0",
                window(0, 3600),
                Duration::ZERO,
                0,
                secs(3600),
            ),
            (
                "24h token, 1h ahead",
                window(0, 86400),
                hour,
                0,
                secs(82800),
            ),
        ];
        for (what, w, before, short, want) in rows {
            assert_eq!(
                refresh_at(w, before, short, Duration::from_secs(900)),
                want,
                "{what}"
            );
        }
        // Whatever the settings: at most two refreshes per token lifetime.
        for lifetime in [1, 30, 59, 60, 61, 120, 299, 300, 3599, 86400] {
            for before in [0, 60, 300, 600, 3600, 86400] {
                let at = refresh_at(
                    window(0, lifetime),
                    Duration::from_secs(before),
                    0,
                    Duration::from_secs(900),
                );
                assert!(
                    at >= secs(lifetime / 2),
                    "lifetime {lifetime}s, refreshBefore {before}s: {at}"
                );
            }
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

    #[test]
    fn timing_holds_the_spec_to_the_crd_bounds() {
        let spec = |validation: serde_json::Value| -> ConnectorCredentialSpec {
            serde_json::from_value(serde_json::json!({
                "provider": "google", "auth": "RefreshToken", "secretRef": {"name": "x"},
                "validation": validation,
            }))
            .unwrap()
        };
        let err = Timing::from_spec(&spec(serde_json::json!({"interval": "500ms"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "validation.interval must be between 1m and 24h"
        );
        assert!(Timing::from_spec(&spec(serde_json::json!({"timeout": "0s"}))).is_err());
        assert!(Timing::from_spec(&spec(serde_json::json!({"interval": "1d"}))).is_err());
        assert!(Timing::from_spec(&spec(serde_json::json!({"interval": "1m"}))).is_ok());
    }
}
