//! The provider step: the one place a reconcile talks to the provider. It carries out the
//! plan's step and returns what happened as an [`Outcome`]. It writes nothing itself, except
//! through its [`WriteAhead`]: a refresh token the provider rotated in an exchange is
//! persisted before the exchange's access token is used for anything (PROVIDERS.md: persist
//! the new token before using it).

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use jiff::Timestamp;

use super::decide::{Step, Timing};
use super::read::{Candidate, Source};
use super::target::{self, Active, Target, Validated};
use crate::api::{ConnectorCredential, PermissionPolicy};
use crate::providers::{
    CredentialMaterial, Exchanged, Providers, Tokens, Verified, VerifyError, VerifyRequest,
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
    /// The active credential passed its probe; `write` holds the tokens the probe's grant
    /// minted, when they are kept.
    Probed {
        verified: Verified,
        write: Option<Write>,
    },
    /// The active credential has a new access token.
    Refreshed { validated: Validated },
    /// The active credential failed for good; `write` as for [`Outcome::Probed`].
    ActiveFailed {
        error: VerifyError,
        write: Option<Write>,
    },
    /// The provider could not answer now; `rotating`: a candidate was being validated.
    /// `unwritten`: a refresh token the provider rotated while validating the candidate of
    /// this revision; not validated, so never written, but the next attempt presents it (the
    /// source's is spent).
    Transient {
        error: VerifyError,
        write: Option<Write>,
        rotating: bool,
        unwritten: Option<(String, Redacted)>,
    },
    /// The provider rotated the refresh token of this revision in an exchange, and the
    /// write-ahead failed: the access token was not used. The token is kept in memory and
    /// presented next time; the reconcile fails with the write's error.
    Unpersisted { revision: String, token: Redacted },
}

/// Tokens the provider minted for the active credential, for the target Secret.
#[derive(Debug)]
pub(crate) enum Write {
    /// To be written after the step.
    Due(Validated),
    /// Written during the step, before the access token was used (the write-ahead).
    Landed(Validated),
}

impl Write {
    pub fn validated(&self) -> &Validated {
        match self {
            Write::Due(v) | Write::Landed(v) => v,
        }
    }

    fn due(&self) -> Option<&Validated> {
        match self {
            Write::Due(v) => Some(v),
            Write::Landed(_) => None,
        }
    }
}

/// Where a rotated refresh token is persisted before the access token that came with it is
/// used. Each returns whether the write landed; the implementor keeps the error.
pub(crate) trait WriteAhead: Sync {
    /// Stages a refresh token rotated while validating a candidate of `revision` (the
    /// staging Secret: the target holds only validated material).
    fn stage<'a>(&'a self, revision: &'a str, token: &'a Redacted) -> BoxFuture<'a, bool>;
    /// Writes the active credential with tokens the provider just minted for it to the
    /// target Secret.
    fn persist_active<'a>(&'a self, validated: &'a Validated) -> BoxFuture<'a, bool>;
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
            | Outcome::Transient { write, .. } => write.as_ref().and_then(Write::due),
            Outcome::Nothing | Outcome::Rejected { .. } | Outcome::Unpersisted { .. } => None,
        }
    }

    /// What the target Secret holds once the step's writes have landed, if it wrote one.
    pub fn target_holds(&self) -> Option<&Validated> {
        match self {
            Outcome::Probed { write, .. }
            | Outcome::ActiveFailed { write, .. }
            | Outcome::Transient { write, .. } => write.as_ref().map(Write::validated),
            _ => self.target_write(),
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
    /// Persists rotated refresh tokens between an exchange and the probe.
    pub write_ahead: &'a dyn WriteAhead,
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
        let exchanged = match self.providers.exchange(&req).await {
            Ok(exchanged) => exchanged,
            Err(error) if error.is_transient() => {
                return Outcome::Transient {
                    error,
                    write: None,
                    rotating: true,
                    unwritten: None,
                };
            }
            Err(error) => {
                return Outcome::Rejected {
                    revision: candidate.revision().to_owned(),
                    error,
                    spent: false,
                };
            }
        };
        // The write-ahead: a rotated token is staged before its access token is used.
        if let Some(token) = exchanged.rotated_refresh_token()
            && !self.write_ahead.stage(candidate.revision(), token).await
        {
            return Outcome::Unpersisted {
                revision: candidate.revision().to_owned(),
                token: token.clone(),
            };
        }
        // A rotated token of an unvalidated candidate is never written to the target.
        let (result, rotated) = self.providers.probe(&req, exchanged).await.into_parts();
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
    fn rotated(&self, active: &Active, rotated: Option<&Tokens>) -> Option<Write> {
        rotated.map(|tokens| Write::Due(Validated::refreshed(active, tokens, self.now)))
    }

    /// The write-ahead for the active credential: a refresh token the exchange rotated goes to
    /// the target Secret (the credential was validated; the tokens are minted for it) before
    /// the probe uses the new access token. `Err`: the write failed.
    async fn persist_rotated(
        &self,
        active: &Active,
        exchanged: &Exchanged,
    ) -> Result<Option<Write>, Outcome> {
        let (Some(token), Some(tokens)) = (exchanged.rotated_refresh_token(), exchanged.tokens())
        else {
            return Ok(None);
        };
        let validated = Validated::refreshed(active, tokens, self.now);
        if self.write_ahead.persist_active(&validated).await {
            Ok(Some(Write::Landed(validated)))
        } else {
            Err(Outcome::Unpersisted {
                revision: active.revision().to_owned(),
                token: token.clone(),
            })
        }
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
        let exchanged = match self.providers.exchange(&req).await {
            Ok(exchanged) => exchanged,
            Err(error) if error.is_transient() => {
                return Outcome::Transient {
                    write: None,
                    error,
                    rotating: false,
                    unwritten: None,
                };
            }
            Err(error) => return Outcome::ActiveFailed { write: None, error },
        };
        let landed = match self.persist_rotated(active, &exchanged).await {
            Ok(landed) => landed,
            Err(unpersisted) => return unpersisted,
        };
        let (result, rotated) = self.providers.probe(&req, exchanged).await.into_parts();
        match result {
            Ok(verified) => {
                // The probe's fresh access token is written only when a refresh was due
                // anyway (a steady state writes nothing); a rotated refresh token was
                // written before the probe, with the same tokens.
                let write = match landed {
                    Some(landed) => Some(landed),
                    None if refresh => Some(Write::Due(Validated::revalidated(
                        active, &verified, self.now,
                    ))),
                    None => None,
                };
                Outcome::Probed { verified, write }
            }
            Err(error) if error.is_transient() => Outcome::Transient {
                write: landed.or_else(|| self.rotated(active, rotated.as_ref())),
                error,
                rotating: false,
                unwritten: None,
            },
            Err(error) => Outcome::ActiveFailed {
                write: landed.or_else(|| self.rotated(active, rotated.as_ref())),
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
