//! What can go wrong when a credential is checked against its provider.
//!
//! Four classes, because the controller reacts to each differently: `Dead` (the account must be
//! re-authenticated), `PermissionDenied` (the account works but lacks permissions),
//! `Transient` (back off and retry) and `Misconfigured` (the spec or Secret must be fixed).
//! Every variant carries typed context and never credential material: error codes are copied
//! from provider bodies only after [`sanitize_code`], descriptions are never copied.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::api::conditions::Reason;
use crate::api::{Account, AuthType, Provider};

/// The largest credential value (a Secret key, or a token a provider issues) the operator
/// accepts. Real ones are a few KiB at most; the target Secret holds several of them and
/// the API server refuses Secrets over 1 MiB, and every value is sent to the provider on
/// each validation.
pub(crate) const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A provider call, named for humans and for low-cardinality labels (`"POST /oauth/token"`).
pub type Call = &'static str;

/// Why a credential cannot be verified.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// The provider rejected the credential itself: the account must be re-authenticated.
    #[error("{provider} rejected the credential at {call}{}: {cause}", status_code(*.status, .code.as_deref()))]
    Dead {
        /// The provider.
        provider: Provider,
        /// The call that failed.
        call: Call,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// The provider's error code (OAuth2 `error`, AADSTS number, `errorCode`, `.tag`).
        code: Option<String>,
        /// What the rejection means for the user.
        cause: DeadCause,
    },
    /// The credential works, but the account lacks permissions that are required.
    #[error("{provider} account {} lacks permissions: {}{}", account_name(.account.as_ref()), missing_list(.missing, .code.as_deref()), denied_detail(*.call, *.status, .code.as_deref()))]
    PermissionDenied {
        /// The provider.
        provider: Provider,
        /// The account, when the provider identified it before the refusal.
        account: Option<Account>,
        /// Required permissions the account does not hold (sorted). May be empty when the
        /// provider refused a call without saying which permission was missing.
        missing: Vec<String>,
        /// Permissions the account holds, as far as they are known.
        granted: BTreeSet<String>,
        /// The call the provider refused, when a call was refused (not a set comparison).
        call: Option<Call>,
        /// The HTTP status of that refusal.
        status: Option<u16>,
        /// The provider's error code for it.
        code: Option<String>,
    },
    /// The provider could not answer now (timeout, connection, rate limit, server error,
    /// malformed response). Retrying later may succeed.
    #[error("{provider} is unavailable at {call}: {kind}{}{}; try again later", status_code(*.status, .code.as_deref()), retry_hint(*.retry_after))]
    Transient {
        /// The provider.
        provider: Provider,
        /// The call that failed.
        call: Call,
        /// What kind of transient failure.
        kind: TransientKind,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// The provider's error code, when it sent one.
        code: Option<String>,
        /// How long the provider asked us to wait (Retry-After or rate-limit reset headers).
        retry_after: Option<Duration>,
    },
    /// The spec or Secret cannot work as written; a user must change it.
    #[error("{provider}: {problem}")]
    Misconfigured {
        /// The provider.
        provider: Provider,
        /// What is wrong.
        problem: Misconfiguration,
    },
}

impl VerifyError {
    /// A stable CamelCase reason for conditions, events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Dead { .. } => Reason::ConnectionLost.as_str(),
            VerifyError::PermissionDenied { .. } => Reason::PermissionMismatch.as_str(),
            VerifyError::Transient { .. } => Reason::ProviderUnreachable.as_str(),
            VerifyError::Misconfigured {
                problem: Misconfiguration::MissingKey(_),
                ..
            } => Reason::MissingKey.as_str(),
            VerifyError::Misconfigured { .. } => Reason::Misconfigured.as_str(),
        }
    }

    /// The provider the error is about.
    pub fn provider(&self) -> Provider {
        match self {
            VerifyError::Dead { provider, .. }
            | VerifyError::PermissionDenied { provider, .. }
            | VerifyError::Transient { provider, .. }
            | VerifyError::Misconfigured { provider, .. } => *provider,
        }
    }

    /// Whether retrying later may succeed without anybody changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, VerifyError::Transient { .. })
    }

    /// How long the provider asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            VerifyError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn misconfigured(provider: Provider, problem: Misconfiguration) -> Self {
        VerifyError::Misconfigured { provider, problem }
    }

    pub(crate) fn dead(
        provider: Provider,
        call: Call,
        status: Option<u16>,
        code: Option<String>,
        cause: DeadCause,
    ) -> Self {
        VerifyError::Dead {
            provider,
            call,
            status,
            code,
            cause,
        }
    }

    pub(crate) fn transient(
        provider: Provider,
        call: Call,
        kind: TransientKind,
        status: Option<u16>,
        code: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        VerifyError::Transient {
            provider,
            call,
            kind,
            status,
            code,
            retry_after,
        }
    }

    /// A refusal of one call (HTTP 403 and friends), before the account's permissions are known.
    pub(crate) fn denied(
        provider: Provider,
        call: Call,
        status: Option<u16>,
        code: Option<String>,
        missing: Vec<String>,
    ) -> Self {
        VerifyError::PermissionDenied {
            provider,
            account: None,
            missing,
            granted: BTreeSet::new(),
            call: Some(call),
            status,
            code,
        }
    }

    /// Adds the account to a permission refusal that happened after the account was known.
    pub(crate) fn with_account(mut self, known: &Account) -> Self {
        if let VerifyError::PermissionDenied { account, .. } = &mut self
            && account.is_none()
        {
            *account = Some(known.clone());
        }
        self
    }
}

/// What a dead credential means, phrased as what the user must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadCause {
    /// The client id or secret is wrong, expired, or the app is disabled or deleted.
    InvalidClient,
    /// The refresh token (or authorization grant) is expired, revoked or already used.
    InvalidGrant,
    /// The provider refused the access token it had just issued, or the token is inactive.
    TokenRejected,
    /// The API key or token is invalid, expired or revoked.
    ApiKeyRejected,
    /// The app was uninstalled or disconnected from the company or tenant.
    AppDisconnected,
    /// The user or organisation is deactivated, suspended or locked.
    AccountInactive,
    /// The provider refused the credential with a code we do not know more about.
    Rejected,
}

impl fmt::Display for DeadCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadCause::InvalidClient => {
                "the client id or secret is wrong or expired, or the app is disabled; issue a new client secret and update the Secret"
            }
            DeadCause::InvalidGrant => {
                "the grant was refused (a refresh token that is expired, revoked or already used, or a service account that was deactivated); the account owner must authorize the app again"
            }
            DeadCause::TokenRejected => {
                "the provider does not accept the token it issued (revoked, or the account lost access); re-authenticate the account"
            }
            DeadCause::ApiKeyRejected => {
                "the API key is invalid, expired or revoked; issue a new key and update the Secret"
            }
            DeadCause::AppDisconnected => {
                "the app is no longer connected (uninstalled or disconnected by an admin); an admin must reconnect it"
            }
            DeadCause::AccountInactive => {
                "the account or organisation is deactivated or suspended; reactivate it or use another account"
            }
            DeadCause::Rejected => "the provider refused the credential; re-authenticate the account",
        })
    }
}

/// Kinds of transient failure (also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// No answer within the timeout.
    Timeout,
    /// The connection failed or was dropped.
    Connection,
    /// Rate limited (429, or a provider's rate-limit code).
    RateLimited,
    /// A 5xx answer, or a provider code meaning "temporarily unavailable".
    Unavailable,
    /// An answer we could not parse (bad JSON, missing fields, wrong content type).
    Malformed,
}

impl TransientKind {
    /// A stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransientKind::Timeout => "timeout",
            TransientKind::Connection => "connection",
            TransientKind::RateLimited => "rate_limited",
            TransientKind::Unavailable => "unavailable",
            TransientKind::Malformed => "malformed_response",
        }
    }
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spec or Secret problem a user must fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Misconfiguration {
    /// The source Secret lacks a key the auth type needs.
    #[error(transparent)]
    MissingKey(#[from] MissingKey),
    /// The provider does not accept this auth type.
    #[error("auth {auth} is not supported by this provider (supported: {supported})")]
    UnsupportedAuth {
        /// The auth type asked for.
        auth: AuthType,
        /// The supported ones, comma-separated.
        supported: String,
    },
    /// A required `params` key is absent.
    #[error("params.{name} is required: {hint}")]
    MissingParam {
        /// The key.
        name: &'static str,
        /// What to put there.
        hint: &'static str,
    },
    /// A `params` value is not acceptable.
    #[error("params.{name} = {value:?} is invalid: {hint}")]
    InvalidParam {
        /// The key.
        name: String,
        /// The value (params hold no secrets).
        value: String,
        /// What is expected.
        hint: &'static str,
    },
    /// A `requiredPermissions` entry this provider cannot check.
    #[error("requiredPermissions entry {value:?} is invalid: {hint}")]
    InvalidPermission {
        /// The entry (permission names hold no secrets).
        value: String,
        /// What is expected.
        hint: &'static str,
    },
    /// A `params` key this provider does not know.
    #[error("params.{name} is not a parameter of this provider (known: {known})")]
    UnknownParam {
        /// The key.
        name: String,
        /// The known keys, comma-separated.
        known: String,
    },
    /// The endpoint (or a URL in params or discovery metadata) is not acceptable.
    #[error("{what} is not a usable URL: {hint}")]
    InvalidEndpoint {
        /// Which URL (`spec.endpoint`, `params.tokenUrl`, `instance_url`, ...).
        what: &'static str,
        /// Why.
        hint: &'static str,
    },
    /// The endpoint is required for this provider.
    #[error("spec.endpoint is required: {hint}")]
    MissingEndpoint {
        /// What to put there.
        hint: &'static str,
    },
    /// The provider refused the request as malformed or unsupported: a configuration bug
    /// (OAuth2 `invalid_request`, `unsupported_grant_type`, and the like).
    #[error("the provider refused the request at {call}{}: check the auth type, endpoint and params", status_code(*.status, .code.as_deref()))]
    RequestRejected {
        /// The call.
        call: Call,
        /// The HTTP status.
        status: Option<u16>,
        /// The provider's error code.
        code: Option<String>,
    },
    /// Anything else, explained.
    #[error("{0}")]
    Other(&'static str),
}

/// A Secret key the auth type needs is absent, empty, not UTF-8 or too large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Secret key {key:?} (the {field}) is {problem}; auth {auth} needs the keys {}", required_keys(*.auth))]
pub struct MissingKey {
    /// The credential field (`client_id`, `client_secret`, `refresh_token`, `api_key`).
    pub field: &'static str,
    /// The Secret key it is read from (after `secretRef.keys` renames).
    pub key: String,
    /// The auth type that needs it.
    pub auth: AuthType,
    /// What is wrong with it.
    pub problem: KeyProblem,
}

/// What is wrong with a Secret key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Not in the Secret.
    Absent,
    /// Present but empty.
    Empty,
    /// Not valid UTF-8.
    NotUtf8,
    /// Larger than any credential value is (see `MAX_VALUE_BYTES`).
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Absent => f.write_str("missing"),
            KeyProblem::Empty => f.write_str("empty"),
            KeyProblem::NotUtf8 => f.write_str("not valid UTF-8"),
            KeyProblem::TooLarge { bytes } => write!(
                f,
                "too large ({bytes} bytes; credential values are at most {} bytes)",
                MAX_VALUE_BYTES
            ),
        }
    }
}

fn required_keys(auth: AuthType) -> String {
    super::field::required_fields(auth).join(", ")
}

fn status_code(status: Option<u16>, code: Option<&str>) -> String {
    match (status, code) {
        (Some(s), Some(c)) => format!(" (HTTP {s}, {c})"),
        (Some(s), None) => format!(" (HTTP {s})"),
        (None, Some(c)) => format!(" ({c})"),
        (None, None) => String::new(),
    }
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

fn account_name(account: Option<&Account>) -> String {
    match account {
        Some(a) if !a.name.is_empty() => format!("{:?}", a.name),
        Some(a) => format!("{:?}", a.id),
        None => "(unknown)".to_owned(),
    }
}

fn missing_list(missing: &[String], code: Option<&str>) -> String {
    if missing.is_empty() && code == Some("no_roles") {
        "the app holds no application permissions (no roles in its token); grant and admin-consent them".to_owned()
    } else if missing.is_empty() {
        "(the provider did not name them)".to_owned()
    } else {
        missing.join(", ")
    }
}

fn denied_detail(call: Option<Call>, status: Option<u16>, code: Option<&str>) -> String {
    match (call, code) {
        (Some(call), _) => format!(" (refused at {call}{})", status_code(status, code)),
        (None, Some(code)) => format!(" ({code})"),
        (None, None) => String::new(),
    }
}

/// Keeps a provider error code only if it looks like a code: short, and made of code
/// characters. This bounds what a misbehaving provider can put into our errors (and so into
/// events and conditions); descriptions are free text and are never copied at all.
pub(crate) fn sanitize_code(code: &str) -> Option<String> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    ok.then(|| code.to_owned())
}
