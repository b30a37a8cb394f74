//! How each outcome changes a ConnectorCredential's status, and the summary (phase, Ready,
//! ExpiringSoon) derived from the rest.
//!
//! Outcome functions only record facts (the active revision, the account, the last
//! rejection, the Connected and PermissionMismatch conditions); [`summarize`] then derives
//! phase and Ready the same way whatever happened, so the two can never disagree.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::decide::{Source, Timing};
use crate::api::conditions::{reasons, types};
use crate::api::{Account, ConnectorCredentialStatus, Phase, Rejection};
use crate::controller::conditions::{self, get, is_true};
use crate::providers::{Tokens, Verified, VerifyError};

/// Short form of a revision for messages: `sha256:1a2b3c4d`.
pub(crate) fn short(revision: &str) -> &str {
    revision.get(..15).unwrap_or(revision)
}

fn account_label(account: Option<&Account>) -> String {
    match account {
        Some(a) if !a.name.is_empty() => a.name.clone(),
        Some(a) => a.id.clone(),
        None => "the account".to_owned(),
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

/// The working copy of a status plus what every write stamps on it.
pub(crate) struct Update {
    pub status: ConnectorCredentialStatus,
    pub generation: Option<i64>,
    pub now: Timestamp,
}

impl Update {
    pub fn new(
        current: Option<&ConnectorCredentialStatus>,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Self {
        Self {
            status: current.cloned().unwrap_or_default(),
            generation,
            now,
        }
    }

    fn set(&mut self, type_: &str, value: bool, reason: &str, message: impl Into<String>) {
        conditions::set(
            &mut self.status.conditions,
            type_,
            value,
            reason,
            message,
            self.generation,
            self.now,
        );
    }

    fn connected(&mut self, account: &Account, revision: &str) {
        let msg = format!(
            "authenticated as {} (revision {})",
            account_label(Some(account)),
            short(revision)
        );
        self.set(types::CONNECTED, true, reasons::CONNECTED, msg);
    }

    fn permissions_ok(&mut self) {
        self.set(
            types::PERMISSION_MISMATCH,
            false,
            reasons::PERMISSIONS_SATISFIED,
            "the account holds every required permission",
        );
    }

    /// A new revision is being validated.
    pub fn validating(&mut self, revision: &str, provider: &str) {
        let msg = format!("validating revision {} with {provider}", short(revision));
        self.set(types::ROTATING, true, reasons::VALIDATING, msg);
    }

    /// A validated revision is in the target Secret: just written, or found there after a
    /// previous run stopped before writing status (then `record` is what the target
    /// Secret's annotations say).
    pub fn swapped(&mut self, revision: &str, record: &ActiveRecord) {
        let s = &mut self.status;
        s.active_revision = Some(revision.to_owned());
        s.account = Some(record.account.clone());
        s.permissions = record.permissions.iter().cloned().collect();
        s.expires_at = record.credential_expires_at.map(Time);
        s.access_token_expires_at = record.access_token_expires_at.map(Time);
        s.last_validated = record.validated_at.map(Time);
        s.last_rotated = record.validated_at.map(Time);
        s.rejected = None;
        s.consecutive_failures = 0;
        self.connected(&record.account, revision);
        self.permissions_ok();
        self.set(
            types::ROTATING,
            false,
            reasons::ROTATED,
            format!("revision {} is active", short(revision)),
        );
    }

    /// A candidate revision failed validation; the active credential (if any) stays.
    pub fn rejected(&mut self, revision: &str, err: &VerifyError) {
        let has_active = self.status.active_revision.is_some();
        let keep = if has_active {
            "; the target Secret still holds the previous credential"
        } else {
            ""
        };
        let message = format!("revision {} rejected: {err}{keep}", short(revision));
        self.status.rejected = Some(Rejection {
            revision: revision.to_owned(),
            reason: err.reason().to_owned(),
            message: message.clone(),
            at: Time(self.now),
        });
        self.status.consecutive_failures = 0;
        self.set(types::ROTATING, false, reasons::ROTATION_REJECTED, message);
        match err {
            VerifyError::PermissionDenied {
                account, missing, ..
            } => {
                let msg = format!(
                    "{} (revision {}) lacks {}",
                    account_label(account.as_ref()),
                    short(revision),
                    missing_text(missing, "a permission the provider did not name")
                );
                self.set(
                    types::PERMISSION_MISMATCH,
                    true,
                    reasons::PERMISSION_MISMATCH,
                    msg,
                );
            }
            VerifyError::Dead { .. } if !has_active => {
                let msg = format!(
                    "the credential in revision {} is dead: {err}",
                    short(revision)
                );
                self.set(types::CONNECTED, false, reasons::CONNECTION_LOST, msg);
            }
            VerifyError::Misconfigured { .. } if !has_active => {
                self.set(types::CONNECTED, false, err.reason(), err.to_string());
            }
            _ => {}
        }
    }

    /// The active credential passed its scheduled probe.
    pub fn revalidated(&mut self, verified: &Verified) {
        let revision = self.status.active_revision.clone().unwrap_or_default();
        let s = &mut self.status;
        s.account = Some(verified.account.clone());
        s.permissions = verified.permissions.iter().cloned().collect();
        s.expires_at = verified.credential_expires_at.map(Time);
        s.last_validated = Some(Time(self.now));
        s.consecutive_failures = 0;
        self.connected(&verified.account, &revision);
        // A rejection's PermissionMismatch stays visible until the rejected revision is
        // replaced; only the active credential's own mismatch is cleared here.
        let rejected_for_permissions = self
            .status
            .rejected
            .as_ref()
            .is_some_and(|r| r.reason == reasons::PERMISSION_MISMATCH);
        if !rejected_for_permissions {
            self.permissions_ok();
        }
    }

    /// The active credential's access token was refreshed.
    pub fn refreshed(&mut self, tokens: &Tokens) {
        self.status.access_token_expires_at = tokens.expires_at.map(Time);
        self.status.consecutive_failures = 0;
    }

    /// The active credential failed its probe or refresh with a non-transient error.
    pub fn active_failed(&mut self, err: &VerifyError) {
        let who = account_label(self.status.account.as_ref());
        self.status.consecutive_failures = 0;
        match err {
            VerifyError::PermissionDenied { missing, .. } => {
                let msg = format!(
                    "{who} no longer holds {}",
                    missing_text(missing, "a required permission")
                );
                self.set(
                    types::PERMISSION_MISMATCH,
                    true,
                    reasons::PERMISSION_MISMATCH,
                    msg,
                );
            }
            VerifyError::Dead { .. } => {
                let msg = format!("{who} must re-authenticate: {err}");
                self.set(types::CONNECTED, false, reasons::CONNECTION_LOST, msg);
            }
            VerifyError::Misconfigured { .. } => {
                self.set(types::CONNECTED, false, err.reason(), err.to_string());
            }
            VerifyError::Transient { .. } => {}
        }
    }

    /// A transient provider failure; counts toward `failureThreshold`.
    pub fn transient(&mut self, err: &VerifyError, threshold: u32, rotating: Option<&str>) {
        self.status.consecutive_failures = self.status.consecutive_failures.saturating_add(1);
        let n = self.status.consecutive_failures;
        if let Some(revision) = rotating {
            let msg = format!(
                "validating revision {}: {err} ({n} of {threshold} failures)",
                short(revision)
            );
            self.set(types::ROTATING, true, reasons::VALIDATING, msg);
        }
        let active_at_risk = rotating.is_none() || self.status.active_revision.is_none();
        if active_at_risk && n as u32 >= threshold {
            let msg = format!("{err} ({n} consecutive failures)");
            self.set(types::CONNECTED, false, reasons::PROVIDER_UNREACHABLE, msg);
        }
    }

    /// The spec cannot work as written.
    pub fn misconfigured(&mut self, message: &str) {
        self.set(types::CONNECTED, false, reasons::MISCONFIGURED, message);
        if self.status.active_revision.is_some() {
            // The active credential keeps working; Ready carries the problem.
            self.set(types::ROTATING, false, reasons::MISCONFIGURED, message);
        }
    }

    /// Derives observedGeneration, phase, Ready and ExpiringSoon from everything else.
    pub fn summarize(&mut self, timing: &Timing, source_problem: Option<&Source>) {
        self.status.observed_generation = self.generation;
        // Every condition was re-evaluated against this generation, set in this reconcile or
        // not.
        for c in &mut self.status.conditions {
            c.observed_generation = self.generation;
        }
        let source_issue = source_problem.map(|p| match p {
            Source::Missing => (
                reasons::SECRET_NOT_FOUND,
                "the source Secret does not exist".to_owned(),
            ),
            Source::MissingKey(k) => (reasons::MISSING_KEY, format!("source Secret: {k}")),
            Source::Ready { .. } => (reasons::PENDING, String::new()),
        });
        if let Some((reason, msg)) = &source_issue
            && self.status.active_revision.is_none()
        {
            self.set(types::CONNECTED, false, reason, msg.clone());
        }
        if get(&self.status.conditions, types::CONNECTED).is_none() {
            self.set(
                types::CONNECTED,
                false,
                reasons::PENDING,
                "not validated yet",
            );
        }
        if get(&self.status.conditions, types::PERMISSION_MISMATCH).is_none() {
            self.set(
                types::PERMISSION_MISMATCH,
                false,
                reasons::PENDING,
                "not validated yet",
            );
        }
        if get(&self.status.conditions, types::ROTATING).is_none() {
            self.set(
                types::ROTATING,
                false,
                reasons::IDLE,
                "no rotation in progress",
            );
        }

        let conds = &self.status.conditions;
        let connected = get(conds, types::CONNECTED).cloned();
        let mismatch = is_true(conds, types::PERMISSION_MISMATCH);
        let phase = match &connected {
            Some(c)
                if c.status == "False"
                    && (c.reason == reasons::CONNECTION_LOST
                        || c.reason == reasons::PROVIDER_UNREACHABLE) =>
            {
                Phase::ConnectionLost
            }
            _ if mismatch => Phase::PermissionMismatch,
            Some(c) if c.status == "True" => Phase::Connected,
            _ => Phase::Pending,
        };
        self.status.phase = Some(phase);

        let rotating = get(conds, types::ROTATING)
            .filter(|c| c.status == "True")
            .cloned();
        let mismatch_msg = get(conds, types::PERMISSION_MISMATCH).map(|c| c.message.clone());
        let (ready, reason, message) = if let Some((reason, msg)) = source_issue {
            (false, reason, msg)
        } else if phase != Phase::Connected {
            match (phase, &connected) {
                (Phase::PermissionMismatch, _) => (
                    false,
                    reasons::PERMISSION_MISMATCH,
                    mismatch_msg.unwrap_or_default(),
                ),
                (_, Some(c)) => (false, reason_const(&c.reason), c.message.clone()),
                (_, None) => (false, reasons::PENDING, "not validated yet".to_owned()),
            }
        } else if let Some(rejected) = &self.status.rejected {
            (false, reasons::ROTATION_REJECTED, rejected.message.clone())
        } else if let Some(c) = rotating {
            (false, reasons::VALIDATING, c.message)
        } else {
            let msg = connected.map(|c| c.message).unwrap_or_default();
            (true, reasons::CONNECTED, msg)
        };
        self.set(types::READY, ready, reason, message.clone());

        // The same verdict in the abnormal-true conditions kstatus (Flux) reads.
        let (generation, now) = (self.generation, self.now);
        conditions::set_kstatus(
            &mut self.status.conditions,
            ready,
            reason,
            &message,
            generation,
            now,
        );

        let warn_from = self.status.expires_at.as_ref().map(|t| {
            t.0.saturating_sub(
                jiff::SignedDuration::try_from(timing.expiry_warning)
                    .unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(t.0)
        });
        match (&self.status.expires_at, warn_from) {
            (Some(exp), Some(from)) if self.now >= from => {
                let who = account_label(self.status.account.as_ref());
                let msg = format!("the credential for {who} expires at {}", exp.0);
                self.set(types::EXPIRING_SOON, true, reasons::EXPIRING_SOON, msg);
            }
            (Some(exp), _) => {
                let msg = format!("the credential expires at {}", exp.0);
                self.set(types::EXPIRING_SOON, false, reasons::NOT_EXPIRING, msg);
            }
            (None, _) => self.set(
                types::EXPIRING_SOON,
                false,
                reasons::NOT_EXPIRING,
                "the provider reports no expiry for this credential",
            ),
        }
    }
}

/// Maps a condition reason read back from status onto its constant (status strings are
/// owned; the reason vocabulary is static).
fn reason_const(reason: &str) -> &'static str {
    [
        reasons::CONNECTION_LOST,
        reasons::PROVIDER_UNREACHABLE,
        reasons::SECRET_NOT_FOUND,
        reasons::MISSING_KEY,
        reasons::MISCONFIGURED,
        reasons::CONNECTED,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::PENDING)
}

/// What the target Secret's annotations record about the credential it holds, so a status
/// lost in a crash can be rebuilt without asking the provider again.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ActiveRecord {
    pub account: Account,
    pub permissions: BTreeSet<String>,
    pub credential_expires_at: Option<Timestamp>,
    pub access_token_expires_at: Option<Timestamp>,
    pub validated_at: Option<Timestamp>,
}

impl ActiveRecord {
    /// What a provider verdict at `now` establishes about a credential.
    pub fn of(verified: &Verified, now: Timestamp) -> Self {
        Self {
            account: verified.account.clone(),
            permissions: verified.permissions.clone(),
            credential_expires_at: verified.credential_expires_at,
            access_token_expires_at: verified.tokens.expires_at,
            validated_at: Some(now),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Provider;
    use crate::providers::{DeadCause, Tokens, TransientKind};

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn verified(id: &str, perms: &[&str]) -> Verified {
        Verified {
            account: Account {
                id: id.into(),
                name: format!("{id}@acme.com"),
            },
            permissions: perms.iter().map(|p| p.to_string()).collect(),
            tokens: Tokens::default(),
            credential_expires_at: None,
        }
    }

    fn dead() -> VerifyError {
        VerifyError::Dead {
            provider: Provider::Procore,
            call: "POST token endpoint",
            status: Some(400),
            code: Some("invalid_grant".into()),
            cause: DeadCause::InvalidGrant,
            rotated: None,
        }
    }

    fn denied(missing: &[&str]) -> VerifyError {
        VerifyError::PermissionDenied {
            provider: Provider::Procore,
            account: Some(Account {
                id: "900".into(),
                name: "jane@acme.com".into(),
            }),
            missing: missing.iter().map(|m| m.to_string()).collect(),
            granted: BTreeSet::new(),
            call: None,
            status: None,
            code: None,
            rotated: None,
        }
    }

    fn transient() -> VerifyError {
        VerifyError::Transient {
            provider: Provider::Procore,
            call: "GET /rest/v1.0/me",
            kind: TransientKind::Unavailable,
            status: Some(503),
            code: None,
            retry_after: None,
            rotated: None,
        }
    }

    /// A status with an active credential for account 4567.
    fn connected() -> ConnectorCredentialStatus {
        let mut u = Update::new(None, Some(1), now());
        u.swapped(
            "sha256:aaaa",
            &ActiveRecord::of(&verified("4567", &["documents:admin"]), now()),
        );
        u.summarize(&Timing::fallback(), None);
        u.status
    }

    fn cond<'a>(
        s: &'a ConnectorCredentialStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        get(&s.conditions, t).unwrap_or_else(|| panic!("no {t} condition"))
    }

    #[test]
    fn outcomes_map_to_phase_ready_and_kstatus_conditions() {
        type Apply = fn(&mut Update);
        /// name, start, outcome, source problem, phase, Ready reason, Stalled, Reconciling
        type Row = (
            &'static str,
            Option<ConnectorCredentialStatus>,
            Apply,
            Option<Source>,
            Phase,
            &'static str,
            bool,
            bool,
        );
        let rows: Vec<Row> = vec![
            // name, start, outcome, source problem, phase, Ready reason, Stalled, Reconciling
            (
                "first swap",
                None,
                |u| {
                    u.swapped(
                        "sha256:aaaa",
                        &ActiveRecord::of(&verified("4567", &[]), now()),
                    )
                },
                None,
                Phase::Connected,
                reasons::CONNECTED,
                false,
                false,
            ),
            (
                "validating a first credential",
                None,
                |u| u.validating("sha256:aaaa", "procore"),
                None,
                Phase::Pending,
                reasons::PENDING,
                false,
                true,
            ),
            (
                "validating a rotation",
                Some(connected()),
                |u| u.validating("sha256:bbbb", "procore"),
                None,
                Phase::Connected,
                reasons::VALIDATING,
                false,
                true,
            ),
            (
                "rotation rejected for permissions",
                Some(connected()),
                |u| u.rejected("sha256:bbbb", &denied(&["documents:admin"])),
                None,
                Phase::PermissionMismatch,
                reasons::PERMISSION_MISMATCH,
                true,
                false,
            ),
            (
                "rotation rejected as dead",
                Some(connected()),
                |u| u.rejected("sha256:bbbb", &dead()),
                None,
                Phase::Connected,
                reasons::ROTATION_REJECTED,
                true,
                false,
            ),
            (
                "first credential dead",
                None,
                |u| u.rejected("sha256:aaaa", &dead()),
                None,
                Phase::ConnectionLost,
                reasons::CONNECTION_LOST,
                true,
                false,
            ),
            (
                "active credential dies",
                Some(connected()),
                |u| u.active_failed(&dead()),
                None,
                Phase::ConnectionLost,
                reasons::CONNECTION_LOST,
                true,
                false,
            ),
            (
                "active credential loses a permission",
                Some(connected()),
                |u| u.active_failed(&denied(&["documents:admin"])),
                None,
                Phase::PermissionMismatch,
                reasons::PERMISSION_MISMATCH,
                true,
                false,
            ),
            (
                "one transient failure",
                Some(connected()),
                |u| u.transient(&transient(), 3, None),
                None,
                Phase::Connected,
                reasons::CONNECTED,
                false,
                false,
            ),
            (
                "source Secret deleted",
                Some(connected()),
                |_| {},
                Some(Source::Missing),
                Phase::Connected,
                reasons::SECRET_NOT_FOUND,
                true,
                false,
            ),
            (
                "no Secret, nothing active",
                None,
                |_| {},
                Some(Source::Missing),
                Phase::Pending,
                reasons::SECRET_NOT_FOUND,
                true,
                false,
            ),
        ];
        for (name, start, apply, problem, phase, ready_reason, stalled, reconciling) in rows {
            let mut u = Update::new(start.as_ref(), Some(2), now());
            apply(&mut u);
            u.summarize(&Timing::fallback(), problem.as_ref());
            let s = &u.status;
            assert_eq!(s.phase, Some(phase), "{name}: phase");
            let ready = cond(s, types::READY);
            assert_eq!(
                ready.reason, ready_reason,
                "{name}: Ready reason ({})",
                ready.message
            );
            assert_eq!(
                ready.status == "True",
                ready_reason == reasons::CONNECTED,
                "{name}: Ready status"
            );
            assert_eq!(
                cond(s, types::STALLED).status == "True",
                stalled,
                "{name}: Stalled"
            );
            assert_eq!(
                cond(s, types::RECONCILING).status == "True",
                reconciling,
                "{name}: Reconciling"
            );
            assert_eq!(s.observed_generation, Some(2), "{name}");
            assert!(
                s.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(2)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_failure_threshold_turns_transient_failures_into_connection_lost() {
        let mut status = connected();
        for n in 1..=3 {
            let mut u = Update::new(Some(&status), Some(1), now());
            u.transient(&transient(), 3, None);
            u.summarize(&Timing::fallback(), None);
            status = u.status;
            let want = if n < 3 {
                Phase::Connected
            } else {
                Phase::ConnectionLost
            };
            assert_eq!(status.phase, Some(want), "after {n} failures");
            assert_eq!(status.consecutive_failures, n);
        }
        assert_eq!(
            cond(&status, types::CONNECTED).reason,
            reasons::PROVIDER_UNREACHABLE
        );
        // A success resets the count and the phase.
        let mut u = Update::new(Some(&status), Some(1), now());
        u.revalidated(&verified("4567", &["documents:admin"]));
        u.summarize(&Timing::fallback(), None);
        assert_eq!(
            (u.status.phase, u.status.consecutive_failures),
            (Some(Phase::Connected), 0)
        );
    }

    #[test]
    fn transient_failures_while_rotating_never_mark_the_active_credential_lost() {
        let mut status = connected();
        for _ in 0..5 {
            let mut u = Update::new(Some(&status), Some(1), now());
            u.transient(&transient(), 3, Some("sha256:bbbb"));
            u.summarize(&Timing::fallback(), None);
            status = u.status;
        }
        assert_eq!(status.phase, Some(Phase::Connected));
        assert!(cond(&status, types::ROTATING).message.contains("5 of 3"));
    }

    #[test]
    fn a_successful_rotation_clears_the_rejection_and_the_mismatch() {
        let mut u = Update::new(Some(&connected()), Some(1), now());
        u.rejected("sha256:bbbb", &denied(&["documents:admin"]));
        u.summarize(&Timing::fallback(), None);
        let rejected = u.status;
        assert!(rejected.rejected.is_some());
        let mut u = Update::new(Some(&rejected), Some(1), now());
        u.swapped(
            "sha256:cccc",
            &ActiveRecord::of(&verified("4568", &["documents:admin"]), now()),
        );
        u.summarize(&Timing::fallback(), None);
        assert!(u.status.rejected.is_none());
        assert_eq!(cond(&u.status, types::PERMISSION_MISMATCH).status, "False");
        assert_eq!(cond(&u.status, types::READY).status, "True");
        assert_eq!(u.status.active_revision.as_deref(), Some("sha256:cccc"));
    }

    #[test]
    fn expiring_soon_follows_the_warning_window() {
        let mut status = connected();
        let exp = now()
            .checked_add(jiff::SignedDuration::from_hours(100))
            .unwrap();
        status.expires_at = Some(Time(exp));
        let mut u = Update::new(Some(&status), Some(1), now());
        u.summarize(&Timing::fallback(), None);
        assert_eq!(
            cond(&u.status, types::EXPIRING_SOON).status,
            "True",
            "100h left, 336h window"
        );
        let timing = Timing {
            expiry_warning: std::time::Duration::from_secs(24 * 3600),
            ..Timing::fallback()
        };
        let mut u = Update::new(Some(&status), Some(1), now());
        u.summarize(&timing, None);
        assert_eq!(
            cond(&u.status, types::EXPIRING_SOON).status,
            "False",
            "100h left, 24h window"
        );
    }

    #[test]
    fn messages_name_the_account_and_the_missing_permissions_but_no_secret() {
        let mut u = Update::new(Some(&connected()), Some(1), now());
        u.active_failed(&dead());
        let msg = &cond(&u.status, types::CONNECTED).message;
        assert!(msg.contains("4567@acme.com must re-authenticate"), "{msg}");
        let mut u = Update::new(Some(&connected()), Some(1), now());
        u.rejected("sha256:bbbb", &denied(&["documents:admin", "project:5"]));
        let msg = &cond(&u.status, types::PERMISSION_MISMATCH).message;
        assert!(
            msg.contains("jane@acme.com") && msg.contains("documents:admin, project:5"),
            "{msg}"
        );
    }
}
