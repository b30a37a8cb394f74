//! The one place shared code turns a [`Provider`] into its [`ProviderApi`] (the `with_api!`
//! dispatch). Provider modules implement the trait and never come here, so the generic code
//! they use (token grants, permission comparison) takes the provider's API as a parameter
//! instead of dispatching itself: no module both uses the providers and is used by them.

use std::collections::BTreeSet;

use super::budget::Rate;
use super::error::{Misconfiguration, VerifyError};
use super::grant::Grant;
use super::rules::{Cx, ProviderApi};
use super::{permissions, token};
use crate::api::{AuthType, Provider};

/// Obtains tokens for `cx` from its provider ([`token::obtain`]).
pub(super) async fn obtain(cx: &Cx<'_>) -> Result<Grant, VerifyError> {
    with_api!(cx.provider(), api => token::obtain(&api, cx).await)
}

/// The documented fixed rate of `provider`, per host ([`ProviderApi::RATE`]).
pub(crate) fn documented_rate(provider: Provider) -> Option<Rate> {
    fn rate_of<P: ProviderApi>(_: &P) -> Option<Rate> {
        P::RATE
    }
    with_api!(provider, api => rate_of(&api))
}

/// Required permissions that `granted` does not satisfy, sorted, in `provider`'s vocabulary
/// ([`permissions::missing`]).
pub fn missing_permissions(
    provider: Provider,
    granted: &BTreeSet<String>,
    required: &BTreeSet<String>,
) -> Vec<String> {
    with_api!(provider, api => permissions::missing(&api, granted, required))
}

/// Rejects, before any call (and so before a refresh token is spent), what no call can fix:
/// unsupported auth types, unknown or invalid params, unusable endpoints.
pub(super) fn preflight(cx: &Cx<'_>) -> Result<(), VerifyError> {
    let spec = cx.spec;
    let provider = spec.provider;
    let supported = supported_auth(provider);
    if !supported.contains(&spec.auth) {
        return Err(VerifyError::misconfigured(
            provider,
            Misconfiguration::UnsupportedAuth {
                auth: spec.auth,
                supported: supported
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
        ));
    }
    let known = with_api!(provider, api => known_params(&api));
    if let Some(name) = spec.params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(VerifyError::misconfigured(
            provider,
            Misconfiguration::UnknownParam {
                name: name.clone(),
                known: known.join(", "),
            },
        ));
    }
    with_api!(provider, api => api.validate(cx))
}

fn known_params<P: ProviderApi>(_: &P) -> &'static [&'static str] {
    P::PARAMS
}

fn auth_of<P: ProviderApi>(_: &P) -> &'static [AuthType] {
    P::AUTH
}

fn rotation_of<P: ProviderApi>(_: &P) -> bool {
    P::MAY_ROTATE_REFRESH_TOKENS
}

/// The auth types `provider` accepts ([`ProviderApi::AUTH`]).
pub fn supported_auth(provider: Provider) -> &'static [AuthType] {
    with_api!(provider, api => auth_of(&api))
}

/// Whether spending a refresh token of `provider` may invalidate it
/// ([`ProviderApi::MAY_ROTATE_REFRESH_TOKENS`]).
pub fn may_rotate_refresh_tokens(provider: Provider) -> bool {
    with_api!(provider, api => rotation_of(&api))
}

// The provider rule stays reachable as a method of `api::Provider` (tests and users call
// `provider.supported_auth()`), defined here so that `api` never imports `providers`.
impl Provider {
    /// The auth types this provider accepts; the CRD's CEL rules say the same.
    pub fn supported_auth(self) -> &'static [AuthType] {
        supported_auth(self)
    }
}
