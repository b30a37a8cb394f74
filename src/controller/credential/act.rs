//! The provider step: the one place a reconcile talks to the provider. It carries out the
//! plan's step and returns what happened as an [`Outcome`]; it writes nothing.

use std::collections::BTreeSet;

use jiff::Timestamp;

use super::decide::{Step, Timing};
use super::read::{Candidate, Source};
use super::target::{self, Active, Target, Validated};
use crate::api::{ConnectorCredential, PermissionPolicy};
use crate::providers::{
    CredentialMaterial, Providers, Tokens, Verified, VerifyError, VerifyRequest,
};
use crate::secret::Redacted;

/// What the provider step did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// No provider call was due.
    Nothing,
    /// The candidate passed: write it. `restored`: it replaces an altered target.
    Swapped {
        validated: Validated,
        restored: bool,
    },
    /// The candidate failed for good (dead, permissions, configuration). `spent`: the
    /// provider rotated its refresh token on the way, so the source's one is spent.
    Rejected {
        revision: String,
        error: VerifyError,
        spent: bool,
    },
    /// The active credential passed its probe; `write` holds a refresh token the probe's
    /// grant rotated, to persist.
    Probed {
        verified: Verified,
        write: Option<Validated>,
    },
    /// The active credential has a new access token.
    Refreshed { validated: Validated },
    /// The active credential failed for good; `write` as for [`Outcome::Probed`].
    ActiveFailed {
        error: VerifyError,
        write: Option<Validated>,
    },
    /// The provider could not answer now; `rotating`: a candidate was being validated.
    /// `unwritten`: a refresh token the provider rotated while validating the candidate of
    /// this revision; not validated, so never written, but the next attempt presents it (the
    /// source's is spent).
    Transient {
        error: VerifyError,
        write: Option<Validated>,
        rotating: bool,
        unwritten: Option<(String, Redacted)>,
    },
}

impl Outcome {
    /// What must be written to the target Secret before anything else.
    pub fn target_write(&self) -> Option<&Validated> {
        match self {
            Outcome::Swapped { validated, .. } | Outcome::Refreshed { validated } => {
                Some(validated)
            }
            Outcome::Probed { write, .. }
            | Outcome::ActiveFailed { write, .. }
            | Outcome::Transient { write, .. } => write.as_ref(),
            Outcome::Nothing | Outcome::Rejected { .. } => None,
        }
    }
}

/// What a new credential must hold: requiredPermissions, and under the Superset policy
/// everything the active account held.
fn required_for_rotation(cred: &ConnectorCredential) -> BTreeSet<String> {
    let mut required: BTreeSet<String> = cred.spec.required_permissions.iter().cloned().collect();
    if cred.spec.permission_policy == PermissionPolicy::Superset
        && let Some(status) = &cred.status
        && status.active_revision.is_some()
    {
        required.extend(status.permissions.iter().cloned());
    }
    required
}

/// One reconcile's view for the provider step.
pub(crate) struct ProviderStep<'a> {
    pub providers: &'a Providers,
    pub cred: &'a ConnectorCredential,
    pub key: &'a str,
    pub timing: Timing,
    pub now: Timestamp,
    /// A rotated refresh token not known to be in the target Secret, and its revision.
    pub unwritten: Option<(&'a str, &'a Redacted)>,
}

impl ProviderStep<'_> {
    fn request<'r>(
        &'r self,
        material: &'r crate::providers::CredentialMaterial,
        required: &'r BTreeSet<String>,
    ) -> VerifyRequest<'r> {
        VerifyRequest {
            key: self.key,
            spec: &self.cred.spec,
            material,
            required,
            timeout: self.timing.timeout,
        }
    }

    /// Carries out `step` with the credentials that were read.
    pub async fn run(&self, step: &Step, source: &Source, target: &Target) -> Outcome {
        let candidate = match source {
            Source::Ready { candidate, .. } => Some(candidate),
            _ => None,
        };
        match (step, candidate, target) {
            (Step::Rotate { revision }, Some(c), _) if c.revision() == revision => {
                self.validate(&self.latest_candidate(c), false).await
            }
            (Step::Restore { revision }, Some(c), Target::Altered(altered))
                if c.revision() == revision =>
            {
                self.validate(&c.restoring(altered.intact()), true).await
            }
            (Step::Revalidate { refresh }, _, Target::Intact(active)) => {
                self.probe(&self.latest_active(active), *refresh).await
            }
            (Step::Refresh, _, Target::Intact(active)) => {
                self.refresh(&self.latest_active(active)).await
            }
            _ => Outcome::Nothing,
        }
    }

    /// The candidate with the refresh token the provider rotated for it last, if an earlier
    /// attempt got that far.
    fn latest_candidate(&self, candidate: &Candidate) -> Candidate {
        match self.unwritten {
            Some((revision, token)) if revision == candidate.revision() => {
                candidate.restoring(&CredentialMaterial {
                    refresh_token: Some(token.clone()),
                    ..Default::default()
                })
            }
            _ => candidate.clone(),
        }
    }

    /// The active credential with a rotated refresh token whose write did not land.
    fn latest_active(&self, active: &Active) -> Active {
        match self.unwritten {
            Some((revision, token)) if revision == active.revision() => {
                active.with_refresh_token(token)
            }
            _ => active.clone(),
        }
    }

    /// Validates a candidate; the only route from source material to the target Secret.
    async fn validate(&self, candidate: &Candidate, restored: bool) -> Outcome {
        let required = required_for_rotation(self.cred);
        let req = self.request(candidate.material(), &required);
        // A rotated token of an unvalidated candidate is never written.
        let (result, rotated) = self.providers.verify(&req).await.into_parts();
        match result {
            Ok(verified) => Outcome::Swapped {
                validated: Validated::verified(candidate, &verified, self.now),
                restored,
            },
            Err(error) if error.is_transient() => Outcome::Transient {
                error,
                write: None,
                rotating: true,
                unwritten: rotated.and_then(|tokens| {
                    let token = tokens.refresh_token()?.clone();
                    Some((candidate.revision().to_owned(), token))
                }),
            },
            Err(error) => Outcome::Rejected {
                revision: candidate.revision().to_owned(),
                error,
                spent: rotated.is_some(),
            },
        }
    }

    /// A refresh token the provider rotated before a failure: the spent one is dead, so the
    /// new one is persisted with the active credential.
    fn rotated(&self, active: &Active, rotated: Option<&Tokens>) -> Option<Validated> {
        rotated.map(|tokens| Validated::refreshed(active, tokens, self.now))
    }

    async fn probe(&self, active: &Active, refresh: bool) -> Outcome {
        let required: BTreeSet<String> = self
            .cred
            .spec
            .required_permissions
            .iter()
            .cloned()
            .collect();
        let req = self.request(active.material(), &required);
        let (result, rotated) = self.providers.verify(&req).await.into_parts();
        match result {
            Ok(verified) => {
                // The probe's fresh access token is written only when a refresh was due
                // anyway or the grant rotated the refresh token: a steady state writes
                // nothing.
                let keep = refresh || verified.tokens().refresh_token().is_some();
                let write = keep.then(|| Validated::revalidated(active, &verified, self.now));
                Outcome::Probed { verified, write }
            }
            Err(error) if error.is_transient() => Outcome::Transient {
                write: self.rotated(active, rotated.as_ref()),
                error,
                rotating: false,
                unwritten: None,
            },
            Err(error) => Outcome::ActiveFailed {
                write: self.rotated(active, rotated.as_ref()),
                error,
            },
        }
    }

    async fn refresh(&self, active: &Active) -> Outcome {
        let required = BTreeSet::new();
        let req = self.request(active.material(), &required);
        let (result, rotated) = self.providers.refresh(&req).await.into_parts();
        match result {
            Ok(tokens) => Outcome::Refreshed {
                validated: Validated::refreshed(active, &tokens, self.now),
            },
            Err(error) if error.is_transient() => Outcome::Transient {
                write: self.rotated(active, rotated.as_ref()),
                error,
                rotating: false,
                unwritten: None,
            },
            Err(error) => Outcome::ActiveFailed {
                write: self.rotated(active, rotated.as_ref()),
                error,
            },
        }
    }
}

/// The access token's lifetime as just issued, for the short-token backoff.
pub(crate) fn issued_lifetime(v: &Validated) -> Option<std::time::Duration> {
    let access: target::AccessWindow = v.record().access?;
    let issued = access.issued_at?;
    std::time::Duration::try_from(access.expires_at.duration_since(issued)).ok()
}
