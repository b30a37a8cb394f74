//! What each provider module implements ([`ProviderApi`]) and what it is given: the
//! verification context ([`Cx`]), the probe's [`Access`], the token endpoint's
//! [`TokenConfig`]. The rules read without a call (auth types, params, whether refresh tokens
//! may rotate, a documented rate) are the trait's constants; `dispatch.rs` reads them for a
//! [`Provider`].

use std::collections::BTreeSet;
use std::future::Future;

use super::budget::Rate;
use super::classify;
use super::error::{Misconfiguration, VerifyError};
use super::field::Field;
use super::grant::{ClientAuth, Grant};
use super::http::Http;
use super::material::CredentialMaterial;
use super::oauth2::discovery::DiscoveryCache;
use super::verdict::Probe;
use crate::api::{AuthType, ConnectorCredentialSpec, Provider};
use crate::secret::Redacted;

/// What a probe authenticates with. Built in one place
/// ([`Providers::probe`](super::Providers::probe)) from the exchange: the grant for the
/// OAuth2 auth types, the API key (or its MissingKey error) for ApiKey. Preflight has already
/// refused auth types a provider does not accept ([`ProviderApi::AUTH`]), so a provider's
/// probe only ever receives what its auth types make.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access<'a> {
    /// A token grant's answer (ClientCredentials, RefreshToken).
    Bearer(&'a Grant),
    /// The API key (ApiKey).
    ApiKey(&'a Redacted),
}

impl<'a> Access<'a> {
    /// The secret the probe presents as a bearer token: the grant's access token (a
    /// malformed token response when it has none), or the API key.
    pub fn token(self, provider: Provider) -> Result<&'a Redacted, VerifyError> {
        match self {
            Access::Bearer(grant) => grant.access_token(provider),
            Access::ApiKey(key) => Ok(key),
        }
    }

    /// The grant, for what its token response said besides the token (Salesforce's
    /// instance URL, the introspection endpoint); none for an API key.
    pub fn grant(self) -> Option<&'a Grant> {
        match self {
            Access::Bearer(grant) => Some(grant),
            Access::ApiKey(_) => None,
        }
    }

    /// The scopes the token response says were granted, when it says (never for an API key).
    pub fn scopes(self) -> Option<&'a BTreeSet<String>> {
        self.grant()?.scopes.as_ref()
    }
}

/// Everything a provider module needs for one verification.
pub(crate) struct Cx<'a> {
    pub http: Http,
    pub discovery: DiscoveryCache,
    pub spec: &'a ConnectorCredentialSpec,
    pub material: &'a CredentialMaterial,
    pub required: &'a BTreeSet<String>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(
        http: Http,
        discovery: DiscoveryCache,
        spec: &'a ConnectorCredentialSpec,
        material: &'a CredentialMaterial,
        required: &'a BTreeSet<String>,
    ) -> Self {
        Self {
            http,
            discovery,
            spec,
            material,
            required,
        }
    }

    pub fn provider(&self) -> Provider {
        self.spec.provider
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.spec
            .params
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn need(&self, field: Field) -> Result<&Redacted, VerifyError> {
        self.material.need(self.provider(), self.spec.auth, field)
    }

    pub fn misconfigured(&self, problem: Misconfiguration) -> VerifyError {
        VerifyError::misconfigured(self.provider(), problem)
    }
}

/// Where and how to ask for tokens.
pub(crate) struct TokenConfig {
    pub url: reqwest::Url,
    pub client_auth: ClientAuth,
    /// Scopes to request (client credentials needs them on some providers; refresh may narrow).
    pub scopes: Vec<String>,
    /// RFC 7662 introspection endpoint, when configured (generic oauth2).
    pub introspection_url: Option<reqwest::Url>,
}

/// One provider's knowledge: the auth types and params it accepts, its token endpoint, its
/// probe, and how its permissions compare.
pub(crate) trait ProviderApi {
    /// The auth types this provider accepts (the CRD's CEL rules in `api` say the same;
    /// tests/crd_schema.rs keeps the two in agreement).
    const AUTH: &'static [AuthType];

    /// Whether spending one of this provider's refresh tokens may invalidate it: a rotated
    /// token dies once used (Procore always, Salesforce when the app enables rotation, OAuth2
    /// servers may). Microsoft issues a new one but keeps the old valid; Dropbox and Google do
    /// not rotate.
    const MAY_ROTATE_REFRESH_TOKENS: bool;

    /// The provider's documented fixed request rate per host, if it publishes one. Most
    /// publish windows that differ per app and plan (Procore says not to assume 3,600/hour;
    /// SafetyCulture 200-800 per minute per endpoint): those are followed from their
    /// rate-limit headers and 429s instead.
    const RATE: Option<Rate> = None;

    /// `params` keys this provider understands.
    const PARAMS: &'static [&'static str];

    /// Checks params, endpoint and required permissions without any call.
    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError>;

    /// Where to ask for tokens (may discover, for the generic provider).
    fn token_config(
        &self,
        cx: &Cx<'_>,
    ) -> impl Future<Output = Result<TokenConfig, VerifyError>> + Send;

    /// The identity and permission probe, with what [`Providers::probe`](super::Providers::probe) decided it
    /// authenticates with: the tokens just minted, or the API key.
    fn probe(
        &self,
        cx: &Cx<'_>,
        access: Access<'_>,
    ) -> impl Future<Output = Result<Probe, VerifyError>> + Send;

    /// A token request failed with `error`. A provider that caches endpoint metadata forgets
    /// it when the failure suggests the endpoints moved, and answers whether to try once more
    /// with fresh metadata (only when the server said the endpoint is not there, so nothing
    /// was spent).
    fn endpoints_moved(&self, _cx: &Cx<'_>, _error: &VerifyError) -> bool {
        false
    }

    /// Whether `granted` satisfies the `required` permission other than by holding it
    /// exactly (the caller checks that first): a provider whose vocabulary ranks or folds
    /// permissions says so here. By default only equality satisfies.
    fn satisfies(&self, _granted: &BTreeSet<String>, _required: &str) -> bool {
        false
    }

    /// This provider's own token-endpoint error codes, which decide the class before the
    /// RFC 6749 codes do (Microsoft's AADSTS numbers, Salesforce's inactive user or org):
    /// the class, and the code to report.
    fn token_error_class(
        &self,
        _body: &classify::OAuthErrorBody,
    ) -> Option<(classify::Class, String)> {
        None
    }
}

/// An id from provider JSON, which may be a number or a string.
pub(crate) fn json_id(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
