//! Local HTTP emulators of the SaaS providers the operator validates against.
//!
//! Each emulator listens on 127.0.0.1 with a random port and follows the provider's
//! documented paths, headers, form fields, JSON shapes, error bodies and status codes (the
//! team's provider notes, and docs/providers.md). They keep state like the real
//! services (accounts with permissions, a used rotating refresh token stays dead, a revoked
//! token stays revoked), count requests per path, and take scripted faults: latency, 429 with
//! Retry-After, 5xx, dropped connections, malformed JSON.
//!
//! ```no_run
//! # async fn demo() {
//! use reconnect_emulators::{Account, Fault, ProcoreEmulator};
//! let procore = ProcoreEmulator::start().await;
//! procore.add_account(Account::new("42", "svc-sync").with_permissions(["company:1", "documents:admin"]));
//! procore.add_client("dmsa-id", "dmsa-secret", Some("42"));
//! procore.fail_next(1, Fault::RateLimited { retry_after_secs: 7 });
//! // spec.endpoint = procore.base_url()
//! # }
//! ```
//!
//! The operator reaches them only through `spec.endpoint` (and params), as a user would.

mod dropbox;
mod google;
mod microsoft;
mod oauth2;
mod procore;
mod safetyculture;
mod salesforce;
mod server;
mod simpro;
mod state;

pub use crate::server::{Emulator, Fault, Flavor, ProviderChaos, Request, Response, Served};
pub use dropbox::{Dropbox, DropboxEmulator};
pub use google::{Google, GoogleEmulator};
pub use microsoft::{Microsoft, MicrosoftEmulator};
pub use oauth2::{Discovery, GenericOAuth2, OAuth2Emulator};
pub use procore::{Procore, ProcoreEmulator};
pub use safetyculture::{SafetyCulture, SafetyCultureEmulator};
pub use salesforce::{Salesforce, SalesforceEmulator};
pub use simpro::{Simpro, SimproEmulator};
pub use state::{
    AccessToken, Account, Client, GrantError, Issued, RefreshPolicy, RefreshToken, State,
};

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// An id as JSON: a number when it is one, else a string.
pub(crate) fn id_json(id: &str) -> serde_json::Value {
    id.parse::<u64>()
        .map(serde_json::Value::from)
        .unwrap_or_else(|_| serde_json::Value::from(id))
}

/// The standard OAuth2 error body.
pub(crate) fn oauth_error(error: &GrantError, description: &str) -> Response {
    Response::json(
        error.status(),
        serde_json::json!({"error": error.code(), "error_description": description}),
    )
}

/// Scopes as the space-separated string OAuth2 uses.
pub(crate) fn scope_string(scopes: &std::collections::BTreeSet<String>) -> String {
    scopes.iter().cloned().collect::<Vec<_>>().join(" ")
}

/// An opaque access token.
pub(crate) fn opaque(
    state: &mut State,
    _: &Account,
    _: &str,
    _: bool,
    _: &std::collections::BTreeSet<String>,
) -> String {
    state.mint("at")
}
