//! What the provider layer answers: a verified credential, the tokens of a grant, the verdict
//! that carries a rotated refresh token past a failure, the exchange between the token grant
//! and the probe, and what a probe learned. Only the provider layer makes them: their fields
//! are private to `providers`.

use std::collections::BTreeSet;

use super::error::VerifyError;
use super::grant::{Grant, Tokens};
use crate::api::Account;
use crate::secret::Redacted;

/// A credential that passed validation. Only a provider verdict makes one: the fields are
/// private to `providers`, so nothing else can claim a credential passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub(super) account: Account,
    pub(super) permissions: BTreeSet<String>,
    pub(super) tokens: Tokens,
    pub(super) credential_expires_at: Option<jiff::Timestamp>,
}

impl Verified {
    /// Who the credential authenticates as.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// Everything the account holds, in the provider's vocabulary.
    pub fn permissions(&self) -> &BTreeSet<String> {
        &self.permissions
    }

    /// Tokens minted on the way (none for API keys).
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// When the credential itself stops working unless renewed, when known.
    pub fn credential_expires_at(&self) -> Option<jiff::Timestamp> {
        self.credential_expires_at
    }

    /// A verdict made up by a unit test (a scripted provider).
    #[cfg(test)]
    pub(crate) fn scripted(
        account: Account,
        permissions: BTreeSet<String>,
        tokens: Tokens,
        credential_expires_at: Option<jiff::Timestamp>,
    ) -> Self {
        Self {
            account,
            permissions,
            tokens,
            credential_expires_at,
        }
    }
}

/// A provider's answer to [`Providers::verify`](super::Providers::verify) or [`Providers::refresh`](super::Providers::refresh), with the tokens
/// of a grant that rotated the refresh token before the call failed: the spent refresh token
/// may be dead, so whoever holds the credential must keep the new one. Kept apart from the
/// error, which says why the call failed and nothing else.
#[derive(Debug)]
#[must_use = "a verdict may carry a rotated refresh token that must be kept"]
pub struct Verdict<T> {
    pub(super) result: Result<T, VerifyError>,
    pub(super) rotated: Option<Tokens>,
}

impl<T> Verdict<T> {
    pub(super) fn new(result: Result<T, VerifyError>) -> Self {
        Self {
            result,
            rotated: None,
        }
    }

    /// The answer. Drops rotated tokens: for callers that do not keep the credential.
    pub fn result(self) -> Result<T, VerifyError> {
        self.result
    }

    /// The answer, by reference.
    pub fn as_result(&self) -> Result<&T, &VerifyError> {
        self.result.as_ref()
    }

    /// Tokens of a grant that rotated the refresh token before the call failed (never set on
    /// success: the verified value holds its tokens).
    pub fn rotated(&self) -> Option<&Tokens> {
        self.rotated.as_ref()
    }

    /// The answer and the rotated tokens.
    pub fn into_parts(self) -> (Result<T, VerifyError>, Option<Tokens>) {
        (self.result, self.rotated)
    }

    /// A verdict made up by a unit test (a scripted provider).
    #[cfg(test)]
    pub(crate) fn scripted(result: Result<T, VerifyError>, rotated: Option<Tokens>) -> Self {
        Self { result, rotated }
    }
}

impl<T> From<Result<T, VerifyError>> for Verdict<T> {
    fn from(result: Result<T, VerifyError>) -> Self {
        Self::new(result)
    }
}

/// A token exchange's result, between [`Providers::exchange`](super::Providers::exchange) and [`Providers::probe`](super::Providers::probe).
#[derive(Debug)]
pub struct Exchanged(pub(super) Exchange);

#[derive(Debug)]
pub(super) enum Exchange {
    /// The grant (none for an API key).
    Granted(Option<Grant>),
    /// A scripted provider's whole verdict, answered by the probe.
    #[cfg(test)]
    Scripted(Verdict<Verified>),
}

impl Exchanged {
    /// The refresh token the provider rotated in this exchange: the one presented is spent.
    pub fn rotated_refresh_token(&self) -> Option<&Redacted> {
        match &self.0 {
            Exchange::Granted(grant) => grant.as_ref()?.tokens.refresh_token(),
            #[cfg(test)]
            Exchange::Scripted(verdict) => match verdict.as_result() {
                Ok(v) => v.tokens().refresh_token(),
                Err(_) => verdict.rotated()?.refresh_token(),
            },
        }
    }

    /// The exchange's tokens: what a persisted refresh token is written with.
    pub fn tokens(&self) -> Option<&Tokens> {
        match &self.0 {
            Exchange::Granted(grant) => grant.as_ref().map(|g| &g.tokens),
            #[cfg(test)]
            Exchange::Scripted(verdict) => match verdict.as_result() {
                Ok(v) => Some(v.tokens()),
                Err(_) => verdict.rotated(),
            },
        }
    }
}

/// What a probe learned.
pub(crate) struct Probe {
    pub account: Account,
    pub permissions: BTreeSet<String>,
    pub credential_expires_at: Option<jiff::Timestamp>,
}
