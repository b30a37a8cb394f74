//! A ConnectorCredential's status: the facts each outcome records ([`Update`]), and what
//! users read, rendered from those facts ([`render`]).
//!
//! The facts are typed fields that persist between reconciles: the active revision, its
//! account and permissions, `activeHealth`, the newest `rejected` revision, the count of
//! consecutive transient failures. What is true only now (the source Secret, the target
//! Secret, the spec) comes from the read as [`Fresh`]. [`render`] derives phase, Ready and
//! every condition from both, in one place, so they cannot disagree; nothing is read back
//! from a condition's reason.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::Timing;
use super::read::Source;
use super::target::ActiveRecord;
use crate::api::conditions::{Reason, types};
use crate::api::{
    Account, ActiveHealth, ConnectorCredentialStatus, HealthState, Phase, Rejection,
    RejectionReason,
};
use crate::controller::conditions;
use crate::providers::{Misconfiguration, Verified, VerifyError};

/// Short form of a revision for messages: `sha256:1a2b3c4d`.
pub(crate) fn short(revision: &str) -> &str {
    revision.get(..15).unwrap_or(revision)
}

/// The account as status shows it: the ACCOUNT column reads `name`, so an account the
/// provider names only by id is shown by its id.
fn shown(account: &Account) -> Account {
    Account {
        id: account.id.clone(),
        name: account.label().to_owned(),
    }
}

/// The missing permissions for a message, or `unnamed` when the provider refused without
/// naming one.
fn missing_text(missing: &[String], unnamed: &str) -> String {
    if missing.is_empty() {
        unnamed.to_owned()
    } else {
        missing.join(", ")
    }
}

/// Why a refused revision was refused.
pub(crate) fn rejection_reason(err: &VerifyError) -> RejectionReason {
    match err {
        VerifyError::Dead { .. } => RejectionReason::ConnectionLost,
        VerifyError::PermissionDenied { .. } => RejectionReason::PermissionMismatch,
        VerifyError::Misconfigured {
            problem: Misconfiguration::MissingKey(_),
            ..
        } => RejectionReason::MissingKey,
        VerifyError::Misconfigured { .. } | VerifyError::Transient { .. } => {
            RejectionReason::Misconfigured
        }
    }
}

/// The status being built by one reconcile: the old one with this reconcile's facts.
pub(crate) struct Update {
    pub status: ConnectorCredentialStatus,
    now: Timestamp,
}

impl Update {
    pub fn new(current: Option<&ConnectorCredentialStatus>, now: Timestamp) -> Self {
        Self {
            status: current.cloned().unwrap_or_default(),
            now,
        }
    }

    /// "revision sha256:… (account) stays active", for messages about a newer revision.
    fn stays_active(&self) -> String {
        match (&self.status.active_revision, &self.status.account) {
            (Some(rev), Some(account)) => format!(
                "; revision {} ({}) stays active",
                short(rev),
                account.label()
            ),
            (Some(rev), None) => format!("; revision {} stays active", short(rev)),
            _ => String::new(),
        }
    }

    fn health(&mut self, state: HealthState, message: String) {
        let since = match &self.status.active_health {
            Some(h) if h.state == state => h.since.clone(),
            _ => Time(self.now),
        };
        self.status.active_health = Some(ActiveHealth {
            state,
            message,
            since,
        });
    }

    /// A validated revision is in the target Secret: just written, or found there after a
    /// previous run stopped before writing status.
    pub fn swapped(&mut self, revision: &str, record: &ActiveRecord) {
        let s = &mut self.status;
        s.active_revision = Some(revision.to_owned());
        s.account = Some(shown(&record.account));
        s.permissions = record.permissions.iter().cloned().collect();
        s.expires_at = record.credential_expires_at.map(Time);
        s.access_token_expires_at = record.access.map(|a| Time(a.expires_at));
        s.last_validated = record.validated_at.map(Time);
        s.last_rotated = record.validated_at.or(Some(self.now)).map(Time);
        s.rejected = None;
        s.consecutive_failures = 0;
        self.health(HealthState::Healthy, String::new());
    }

    /// A candidate revision failed validation; the active credential (if any) stays.
    /// `spent`: validating it rotated the revision's refresh token, so it is not retried.
    pub fn rejected(&mut self, revision: &str, err: &VerifyError, spent: bool) {
        let detail = match err {
            VerifyError::PermissionDenied {
                account, missing, ..
            } => format!(
                "{} lacks {}",
                account.as_ref().map_or("the account", |a| a.label()),
                missing_text(missing, "a permission the provider did not name")
            ),
            other => other.to_string(),
        };
        let message = format!(
            "revision {} rejected: {detail}{}",
            short(revision),
            self.stays_active()
        );
        self.status.rejected = Some(Rejection {
            revision: revision.to_owned(),
            reason: rejection_reason(err),
            message,
            at: Time(self.now),
            spent,
        });
        self.status.consecutive_failures = 0;
    }

    /// The source was reverted to the active revision: an older rejection is moot.
    pub fn forget_rejection_unless(&mut self, source: Option<&str>) {
        if self
            .status
            .rejected
            .as_ref()
            .is_some_and(|r| Some(r.revision.as_str()) != source)
            && source.is_some()
            && source == self.status.active_revision.as_deref()
        {
            self.status.rejected = None;
        }
    }

    /// The active credential passed its probe.
    pub fn revalidated(&mut self, verified: &Verified) {
        let s = &mut self.status;
        s.account = Some(shown(verified.account()));
        s.permissions = verified.permissions().iter().cloned().collect();
        s.expires_at = verified.credential_expires_at().map(Time);
        s.last_validated = Some(Time(self.now));
        s.consecutive_failures = 0;
        self.health(HealthState::Healthy, String::new());
    }

    /// The active credential's access token was refreshed: the grant worked, so a lost or
    /// unreachable credential is back (permissions are not re-checked by a refresh).
    pub fn refreshed(&mut self, access_expires_at: Option<Timestamp>) {
        self.status.access_token_expires_at = access_expires_at.map(Time);
        self.status.consecutive_failures = 0;
        let back = self
            .status
            .active_health
            .as_ref()
            .is_some_and(|h| matches!(h.state, HealthState::Lost | HealthState::Unreachable));
        if back {
            self.health(HealthState::Healthy, String::new());
        }
    }

    /// The active credential failed its probe or refresh with a non-transient error.
    pub fn active_failed(&mut self, err: &VerifyError) {
        let who = self
            .status
            .account
            .as_ref()
            .map_or("the account", Account::label)
            .to_owned();
        self.status.consecutive_failures = 0;
        let (state, message) = match err {
            VerifyError::PermissionDenied { missing, .. } => (
                HealthState::PermissionMismatch,
                format!(
                    "{who} no longer holds {}",
                    missing_text(missing, "a required permission")
                ),
            ),
            VerifyError::Dead { .. } => (
                HealthState::Lost,
                format!("{who} must re-authenticate: {err}"),
            ),
            VerifyError::Misconfigured { .. } | VerifyError::Transient { .. } => {
                (HealthState::Misconfigured, err.to_string())
            }
        };
        self.health(state, message);
    }

    /// A transient provider failure; counts toward `failureThreshold`. While a new revision
    /// is validated the active credential is not at risk.
    pub fn transient(&mut self, err: &VerifyError, threshold: u32, rotating: bool) {
        self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
        let n = self.status.consecutive_failures;
        if !rotating && self.status.active_revision.is_some() && n as u32 >= threshold {
            self.health(
                HealthState::Unreachable,
                format!("{err} ({n} consecutive failures)"),
            );
        }
    }
}

/// What is true now, from this reconcile's read, beside the persisted facts.
pub(crate) struct Fresh<'a> {
    /// The spec cannot work as written (durations, params, auth type, endpoint).
    pub spec_problem: Option<String>,
    pub source: &'a Source,
    pub target: TargetFact,
    /// The transient failure this reconcile met, if any.
    pub transient: Option<String>,
}

/// The target Secret, as far as status is concerned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TargetFact {
    /// Missing or intact.
    Usable,
    /// A Secret of the target's name exists and is not ours.
    Foreign { name: String },
    /// Ours but altered, and not (yet) restored.
    Altered { name: String, changed: Vec<String> },
}

/// The summary: phase, Ready's reason and message.
struct Verdict {
    phase: Phase,
    reason: Reason,
    message: String,
}

fn verdict(phase: Phase, reason: Reason, message: impl Into<String>) -> Verdict {
    Verdict {
        phase,
        reason,
        message: message.into(),
    }
}

/// What [`render`] concluded, typed, for the events (which never parse a condition back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// Ready's reason.
    pub ready: Reason,
    /// Whether the credential expires inside its warning window.
    pub expiring: bool,
}

/// Derives observedGeneration, phase and every condition from the facts.
pub(crate) fn render(
    update: &mut Update,
    fresh: &Fresh<'_>,
    timing: &Timing,
    generation: Option<i64>,
    now: Timestamp,
) -> Rendered {
    let stays = update.stays_active();
    let s = &mut update.status;
    s.observed_generation = generation;
    let active = s.active_revision.clone();
    let account = s.account.as_ref().map(|a| a.label().to_owned());
    let who = account.clone().unwrap_or_else(|| "the account".to_owned());
    let health = s.active_health.clone().filter(|_| active.is_some());
    let source_rev = fresh.source.revision();
    let rejected = s
        .rejected
        .clone()
        .filter(|r| source_rev == Some(r.revision.as_str()));
    let validating = source_rev
        .filter(|r| active.as_deref() != Some(*r) && rejected.is_none())
        .map(str::to_owned);
    let failures = s.consecutive_failures;
    let threshold = timing.failure_threshold;
    let unreachable_first = active.is_none() && failures as u32 >= threshold;
    let source_problem = match fresh.source {
        Source::Missing => Some((
            Reason::SecretNotFound,
            "the source Secret does not exist".to_owned(),
        )),
        Source::MissingKey(k) => Some((Reason::MissingKey, format!("source Secret: {k}"))),
        Source::Managed { secret, owner } => Some((
            Reason::Misconfigured,
            format!(
                "the source Secret {secret} is the target Secret of ConnectorCredential {owner}, written by the operator; reference the Secret that {owner} reads instead"
            ),
        )),
        Source::Ready { .. } => None,
    };
    let transient = fresh
        .transient
        .as_deref()
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
    let validating_msg = validating.as_ref().map(|r| {
        let tries = if failures > 0 {
            format!(" ({failures} of {threshold} failures)")
        } else {
            String::new()
        };
        format!("validating revision {}{transient}{tries}", short(r))
    });
    let altered_msg = match &fresh.target {
        TargetFact::Altered { name, changed } => {
            let why = if let Some((_, msg)) = &source_problem {
                format!("cannot restore it: {msg}")
            } else if let Some(r) = &rejected {
                format!("cannot restore it: {}", r.message)
            } else {
                "restoring the validated credential".to_owned()
            };
            Some(format!(
                "target Secret {name} was changed outside the operator ({}); {why}",
                changed.join(", ")
            ))
        }
        _ => None,
    };

    // Connected: can the sync's credential reach its provider?
    let connected = match (&fresh.target, &active, &health) {
        (TargetFact::Foreign { name }, _, _) => (
            false,
            Reason::TargetNotOwned,
            format!("target Secret {name} exists but is not owned by this ConnectorCredential"),
        ),
        (_, Some(_), _) if altered_msg.is_some() => (
            false,
            Reason::TargetAltered,
            altered_msg.clone().unwrap_or_default(),
        ),
        (_, Some(rev), Some(h)) => match h.state {
            HealthState::Lost => (false, Reason::ConnectionLost, h.message.clone()),
            HealthState::Unreachable => (false, Reason::ProviderUnreachable, h.message.clone()),
            HealthState::Misconfigured => (false, Reason::Misconfigured, h.message.clone()),
            HealthState::Healthy | HealthState::PermissionMismatch => (
                true,
                Reason::Connected,
                format!("authenticated as {who} (revision {})", short(rev)),
            ),
        },
        (_, Some(rev), None) => (
            true,
            Reason::Connected,
            format!("authenticated as {who} (revision {})", short(rev)),
        ),
        (_, None, _) => {
            if let Some(p) = &fresh.spec_problem {
                (false, Reason::Misconfigured, p.clone())
            } else if let Some((reason, msg)) = &source_problem {
                (false, *reason, msg.clone())
            } else if let Some(r) = &rejected {
                let reason = match r.reason {
                    RejectionReason::ConnectionLost => Reason::ConnectionLost,
                    RejectionReason::PermissionMismatch => Reason::PermissionMismatch,
                    RejectionReason::MissingKey => Reason::MissingKey,
                    RejectionReason::Misconfigured | RejectionReason::Other => {
                        Reason::Misconfigured
                    }
                };
                (false, reason, r.message.clone())
            } else if unreachable_first {
                (
                    false,
                    Reason::ProviderUnreachable,
                    validating_msg.clone().unwrap_or_default(),
                )
            } else {
                (
                    false,
                    Reason::Pending,
                    validating_msg
                        .clone()
                        .unwrap_or_else(|| "not validated yet".to_owned()),
                )
            }
        }
    };

    let permission = if let Some(r) = rejected
        .as_ref()
        .filter(|r| r.reason == RejectionReason::PermissionMismatch)
    {
        (true, Reason::PermissionMismatch, r.message.clone())
    } else if let Some(h) = health
        .as_ref()
        .filter(|h| h.state == HealthState::PermissionMismatch)
    {
        (true, Reason::PermissionMismatch, h.message.clone())
    } else if active.is_some() {
        (
            false,
            Reason::PermissionsSatisfied,
            "the account holds every required permission".to_owned(),
        )
    } else {
        (false, Reason::Pending, "not validated yet".to_owned())
    };

    let rotating = if let Some(msg) = &validating_msg {
        (true, Reason::Validating, msg.clone())
    } else if let Some(r) = &rejected {
        (false, Reason::RotationRejected, r.message.clone())
    } else if let Some(rev) = &active {
        (
            false,
            Reason::Rotated,
            format!("revision {} is active", short(rev)),
        )
    } else {
        (false, Reason::Idle, "no rotation in progress".to_owned())
    };

    // The summary, by precedence: what stops the sync first, then what needs a person,
    // then what is under way.
    let v = if let Some(p) = &fresh.spec_problem {
        verdict(Phase::Misconfigured, Reason::Misconfigured, p.clone())
    } else if let TargetFact::Foreign { .. } = &fresh.target {
        verdict(Phase::Misconfigured, connected.1, connected.2.clone())
    } else if let Some(h) = health.as_ref().filter(|h| h.state != HealthState::Healthy) {
        match h.state {
            HealthState::Lost => verdict(
                Phase::ConnectionLost,
                Reason::ConnectionLost,
                h.message.clone(),
            ),
            HealthState::Unreachable => verdict(
                Phase::ConnectionLost,
                Reason::ProviderUnreachable,
                h.message.clone(),
            ),
            HealthState::Misconfigured => verdict(
                Phase::Misconfigured,
                Reason::Misconfigured,
                h.message.clone(),
            ),
            HealthState::PermissionMismatch | HealthState::Healthy => verdict(
                Phase::PermissionMismatch,
                Reason::PermissionMismatch,
                h.message.clone(),
            ),
        }
    } else if let Some(msg) = altered_msg.filter(|_| active.is_some()) {
        verdict(Phase::ConnectionLost, Reason::TargetAltered, msg)
    } else if let Some((reason, msg)) = &source_problem {
        verdict(Phase::Misconfigured, *reason, format!("{msg}{stays}"))
    } else if let Some(r) = &rejected {
        let (phase, reason) = match (r.reason, active.is_some()) {
            (RejectionReason::PermissionMismatch, _) => {
                (Phase::PermissionMismatch, Reason::PermissionMismatch)
            }
            (RejectionReason::ConnectionLost, true) => {
                (Phase::RotationRejected, Reason::RotationRejected)
            }
            (RejectionReason::ConnectionLost, false) => {
                (Phase::ConnectionLost, Reason::ConnectionLost)
            }
            (RejectionReason::MissingKey, _) => (Phase::Misconfigured, Reason::MissingKey),
            (RejectionReason::Misconfigured | RejectionReason::Other, _) => {
                (Phase::Misconfigured, Reason::Misconfigured)
            }
        };
        verdict(phase, reason, r.message.clone())
    } else if unreachable_first {
        verdict(
            Phase::ConnectionLost,
            Reason::ProviderUnreachable,
            connected.2.clone(),
        )
    } else if let Some(msg) = &validating_msg {
        verdict(Phase::Pending, Reason::Validating, format!("{msg}{stays}"))
    } else if active.is_some() {
        verdict(Phase::Connected, Reason::Connected, connected.2.clone())
    } else {
        verdict(Phase::Pending, Reason::Pending, connected.2.clone())
    };
    s.phase = Some(v.phase);

    let mut set = |type_: &str, value: bool, reason: Reason, message: String| {
        conditions::set(
            &mut s.conditions,
            type_,
            value,
            reason,
            message,
            generation,
            now,
        );
    };
    set(types::CONNECTED, connected.0, connected.1, connected.2);
    set(
        types::PERMISSION_MISMATCH,
        permission.0,
        permission.1,
        permission.2,
    );
    set(types::ROTATING, rotating.0, rotating.1, rotating.2);
    let ready = v.phase == Phase::Connected;
    set(types::READY, ready, v.reason, v.message.clone());

    let warn_from = s.expires_at.as_ref().map(|t| {
        t.0.saturating_sub(
            jiff::SignedDuration::try_from(timing.expiry_warning)
                .unwrap_or(jiff::SignedDuration::MAX),
        )
        .unwrap_or(t.0)
    });
    let expiring = match (&s.expires_at, warn_from) {
        (Some(exp), Some(from)) if now >= from => (
            true,
            Reason::ExpiringSoon,
            format!("the credential for {who} expires at {}", exp.0),
        ),
        (Some(exp), _) => (
            false,
            Reason::NotExpiring,
            format!("the credential expires at {}", exp.0),
        ),
        (None, _) => (
            false,
            Reason::NotExpiring,
            "the provider reports no expiry for this credential".to_owned(),
        ),
    };
    conditions::set(
        &mut s.conditions,
        types::EXPIRING_SOON,
        expiring.0,
        expiring.1,
        expiring.2,
        generation,
        now,
    );
    conditions::set_kstatus(
        &mut s.conditions,
        ready,
        v.phase.needs_action(),
        v.reason,
        &v.message,
        generation,
        now,
    );
    // Every condition was re-evaluated against this generation, set here or not
    // (DeletionBlocked is owned by the in-use step).
    for c in &mut s.conditions {
        c.observed_generation = generation;
    }
    Rendered {
        ready: v.reason,
        expiring: expiring.0,
    }
}

/// Whether two statuses differ in anything but `lastValidated` (which a routine successful
/// probe would otherwise rewrite every interval).
pub(crate) fn differs_beyond_last_validated(
    a: &ConnectorCredentialStatus,
    b: &ConnectorCredentialStatus,
) -> bool {
    let strip = |s: &ConnectorCredentialStatus| ConnectorCredentialStatus {
        last_validated: None,
        ..s.clone()
    };
    strip(a) != strip(b)
}
