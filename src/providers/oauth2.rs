//! Any RFC 6749 authorization server: client credentials or refresh tokens, permissions =
//! granted scopes.
//!
//! `spec.endpoint` is the issuer. Unless `params.tokenUrl` is set, the token and
//! introspection endpoints come from RFC 8414 metadata at
//! `/.well-known/oauth-authorization-server` (inserted before the issuer's path), then from
//! `{issuer}/.well-known/openid-configuration`. `params.introspectionUrl` adds or overrides
//! RFC 7662 introspection; `params.probeUrl` adds a `GET` with the access token (2xx = works,
//! RFC 6750 401 `invalid_token` = dead, 403 `insufficient_scope` = denied); `params.scope`
//! is requested with the grant. Permissions: the introspected `scope` when introspection is
//! configured, else the token response's `scope` (or, when it is omitted, the requested scopes,
//! per RFC 6749 §5.1).

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::classify::api_status;
use super::error::{DeadCause, Misconfiguration, TransientKind, VerifyError, sanitize_code};
use super::http::{Reply, join, parse_endpoint};
use super::token::{Grant, introspect};
use super::{ClientAuth, Cx, Probe, ProviderApi, TokenConfig, json_id, jwt};
use crate::api::Account;

pub(crate) struct Generic;

fn issuer(cx: &Cx<'_>) -> Result<Url, VerifyError> {
    let raw = cx.spec.endpoint.as_deref().ok_or_else(|| {
        cx.misconfigured(Misconfiguration::MissingEndpoint {
            hint: "the OAuth2 issuer URL (its RFC 8414 metadata names the token endpoint)",
        })
    })?;
    parse_endpoint(cx.provider(), "spec.endpoint", raw)
}

fn param_url(
    cx: &Cx<'_>,
    name: &'static str,
    what: &'static str,
) -> Result<Option<Url>, VerifyError> {
    cx.param(name)
        .map(|raw| parse_endpoint(cx.provider(), what, raw))
        .transpose()
}

fn requested_scopes(cx: &Cx<'_>) -> Vec<String> {
    cx.param("scope")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The discovery documents to try, in order.
fn metadata_urls(issuer: &Url) -> [Url; 2] {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    [rfc8414, join(issuer, "/.well-known/openid-configuration")]
}

async fn discover(cx: &Cx<'_>, issuer: &Url) -> Result<Metadata, VerifyError> {
    let provider = cx.provider();
    for url in metadata_urls(issuer) {
        let request = cx.http.request(Method::GET, url);
        let reply = cx
            .http
            .send("GET authorization server metadata", request)
            .await?;
        if reply.status == StatusCode::TOO_MANY_REQUESTS || reply.status.is_server_error() {
            return Err(api_status(
                provider,
                &reply,
                DeadCause::Rejected,
                None,
                None,
            ));
        }
        if !reply.is_success() {
            continue;
        }
        let metadata: Metadata = reply.json(provider)?;
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        if metadata
            .issuer
            .as_deref()
            .is_some_and(|i| !same(i, issuer.as_str()))
        {
            return Err(cx.misconfigured(Misconfiguration::InvalidEndpoint {
                what: "spec.endpoint",
                hint: "the discovery metadata names a different issuer",
            }));
        }
        return Ok(metadata);
    }
    Err(cx.misconfigured(Misconfiguration::Other(
        "the issuer publishes no RFC 8414 or OpenID discovery metadata; set params.tokenUrl",
    )))
}

impl ProviderApi for Generic {
    const PARAMS: &'static [&'static str] = &["tokenUrl", "introspectionUrl", "probeUrl", "scope"];

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        issuer(cx)?;
        param_url(cx, "tokenUrl", "params.tokenUrl")?;
        param_url(cx, "introspectionUrl", "params.introspectionUrl")?;
        param_url(cx, "probeUrl", "params.probeUrl")?;
        Ok(())
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        let provider = cx.provider();
        let issuer = issuer(cx)?;
        let introspection = param_url(cx, "introspectionUrl", "params.introspectionUrl")?;
        let scopes = requested_scopes(cx);
        if let Some(url) = param_url(cx, "tokenUrl", "params.tokenUrl")? {
            return Ok(TokenConfig {
                url,
                client_auth: ClientAuth::Basic,
                scopes,
                introspection_url: introspection,
            });
        }
        let metadata = discover(cx, &issuer).await?;
        let token = metadata.token_endpoint.as_deref().ok_or_else(|| {
            cx.misconfigured(Misconfiguration::Other(
                "the discovery metadata names no token_endpoint; set params.tokenUrl",
            ))
        })?;
        let introspection = match introspection {
            Some(url) => Some(url),
            None => metadata
                .introspection_endpoint
                .as_deref()
                .map(|u| parse_endpoint(provider, "introspection_endpoint in the metadata", u))
                .transpose()?,
        };
        // RFC 6749 §2.3.1: servers must support Basic; use the body only when the metadata
        // says Basic is not supported.
        let methods = &metadata.token_endpoint_auth_methods_supported;
        let client_auth = if !methods.is_empty()
            && !methods.iter().any(|m| m == "client_secret_basic")
            && methods.iter().any(|m| m == "client_secret_post")
        {
            ClientAuth::Body
        } else {
            ClientAuth::Basic
        };
        Ok(TokenConfig {
            url: parse_endpoint(provider, "token_endpoint in the metadata", token)?,
            client_auth,
            scopes,
            introspection_url: introspection,
        })
    }

    async fn probe(&self, cx: &Cx<'_>, grant: Option<&Grant>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let grant = grant.ok_or_else(|| {
            cx.misconfigured(Misconfiguration::Other("oauth2 needs an OAuth2 credential"))
        })?;
        let token = grant.access_token(provider)?;
        let claims = jwt::claims(token);
        let claim = |name| {
            claims
                .as_ref()
                .and_then(|c| jwt::string(c, name))
                .map(str::to_owned)
        };
        let mut account = Account {
            id: claim("sub")
                .or_else(|| claim("client_id"))
                .unwrap_or_default(),
            name: claim("preferred_username")
                .or_else(|| claim("email"))
                .unwrap_or_default(),
        };
        let mut permissions: BTreeSet<String> = grant
            .scopes
            .clone()
            .unwrap_or_else(|| requested_scopes(cx).into_iter().collect());

        if let Some(url) = &grant.introspection_url {
            let introspected = introspect(cx, url, grant.client_auth, token).await?;
            if let Some(scopes) = introspected.scopes {
                permissions = scopes;
            }
            if let Some(sub) = introspected.subject {
                account.id = sub;
            }
            if let Some(username) = introspected.username {
                account.name = username;
            }
        }

        if let Some(url) = param_url(cx, "probeUrl", "params.probeUrl")? {
            let request = cx
                .http
                .request(Method::GET, url)
                .bearer_auth(token.expose());
            let reply = cx.http.send("GET probeUrl", request).await?;
            if !reply.is_success() {
                return Err(probe_error(cx, &reply).with_account(&account));
            }
            if let Ok(body) =
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&reply.body)
            {
                if account.id.is_empty()
                    && let Some(id) = body.get("sub").or_else(|| body.get("id"))
                {
                    account.id = json_id(id);
                }
                if account.name.is_empty()
                    && let Some(name) = ["preferred_username", "email", "name"]
                        .iter()
                        .find_map(|k| body.get(*k).and_then(|v| v.as_str()))
                {
                    account.name = name.to_owned();
                }
            }
        }
        Ok(Probe {
            account,
            permissions,
            credential_expires_at: None,
        })
    }
}

/// RFC 6750 §3.1: the error code is in `WWW-Authenticate: Bearer error="..."`.
fn probe_error(cx: &Cx<'_>, reply: &Reply) -> VerifyError {
    let provider = cx.provider();
    let code = reply
        .headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_error)
        .and_then(|c| sanitize_code(&c));
    match code.as_deref() {
        Some("insufficient_scope") => VerifyError::denied(
            provider,
            reply.call,
            Some(reply.status.as_u16()),
            code,
            Vec::new(),
        ),
        Some("invalid_token") => VerifyError::dead(
            provider,
            reply.call,
            Some(reply.status.as_u16()),
            code,
            DeadCause::TokenRejected,
        ),
        _ if reply.status == StatusCode::TOO_MANY_REQUESTS => VerifyError::transient(
            provider,
            reply.call,
            TransientKind::RateLimited,
            Some(429),
            code,
            reply.retry_after(None),
        ),
        _ => api_status(provider, reply, DeadCause::TokenRejected, code, None),
    }
}

/// The `error` parameter of a Bearer challenge.
fn bearer_error(header: &str) -> Option<String> {
    let rest = header.trim().strip_prefix("Bearer")?;
    rest.split(',').find_map(|part| {
        let (name, value) = part.trim().split_once('=')?;
        (name.trim() == "error").then(|| value.trim().trim_matches('"').to_owned())
    })
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    introspection_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8414_metadata_goes_before_the_issuer_path() {
        let issuer = Url::parse("https://as.example.com/tenant1").unwrap();
        let [a, b] = metadata_urls(&issuer);
        assert_eq!(
            a.as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server/tenant1"
        );
        assert_eq!(
            b.as_str(),
            "https://as.example.com/tenant1/.well-known/openid-configuration"
        );
        let [a, _] = metadata_urls(&Url::parse("https://as.example.com").unwrap());
        assert_eq!(
            a.as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn reads_the_error_of_a_bearer_challenge() {
        assert_eq!(
            bearer_error(r#"Bearer realm="x", error="insufficient_scope", scope="a b""#).as_deref(),
            Some("insufficient_scope")
        );
        assert_eq!(bearer_error("Basic realm=\"x\""), None);
    }
}
