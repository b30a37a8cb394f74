//! Any RFC 6749 authorization server: client credentials or refresh tokens, permissions =
//! granted scopes.
//!
//! `spec.endpoint` is the issuer. Unless `params.tokenUrl` is set, the token and
//! introspection endpoints come from RFC 8414 metadata at
//! `/.well-known/oauth-authorization-server` (inserted before the issuer's path), then from
//! `{issuer}/.well-known/openid-configuration`; the metadata is cached per issuer (see
//! [`DiscoveryCache`]). `params.introspectionUrl` adds or overrides RFC 7662 introspection;
//! `params.probeUrl` adds a `GET` with the access token (2xx = works, RFC 6750 401
//! `invalid_token` = dead, 403 `insufficient_scope` = denied); `params.scope` is requested with
//! the grant.
//!
//! Permissions: with introspection, the introspected `scope` (else the token response's, else
//! none); without, the token response's `scope`, or the requested scopes when it is omitted
//! (RFC 6749 §5.1). Introspection wins because servers do omit `scope` when they grant
//! nothing (oidc-provider does), which would otherwise read as "everything requested".
//!
//! Account: the introspected `sub`, else `username`, else `client_id`; else the access token's
//! own `sub` or `client_id` claim when it is a JWT; else, for client credentials, the client
//! id; else what the probe returns; and when nothing names a user, the client id.
//!
//! An RFC 9068 JWT access token from the issuer that introspection calls inactive right after
//! it was issued is read as its own introspection (`scope`, `sub`, `client_id` claims):
//! oidc-provider, for one, advertises introspection but cannot introspect its JWTs.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};

pub(crate) mod discovery;

pub(crate) use self::discovery::DiscoveryCache;
use self::discovery::{Metadata, metadata_ttl};
use super::classify::api_status;
use super::error::{DeadCause, Misconfiguration, TransientKind, VerifyError, sanitize_code};
use super::field::Field;
use super::grant::Grant;
use super::http::{Reply, join, parse_endpoint};
use super::token::{Introspected, introspect};
use super::{Access, ClientAuth, Cx, Probe, ProviderApi, TokenConfig, json_id, jwt};
use crate::api::{Account, AuthType};

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

/// The issuer's metadata, from the cache or fetched (and then cached).
async fn metadata(cx: &Cx<'_>, issuer: &Url) -> Result<Metadata, VerifyError> {
    if let Some(metadata) = cx.discovery.get(issuer, cx.http.now()) {
        return Ok(metadata);
    }
    let (metadata, ttl) = discover(cx, issuer).await?;
    if !ttl.is_zero() {
        cx.discovery
            .put(issuer, metadata.clone(), ttl, cx.http.now());
    }
    Ok(metadata)
}

async fn discover(cx: &Cx<'_>, issuer: &Url) -> Result<(Metadata, Duration), VerifyError> {
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
        return Ok((metadata, metadata_ttl(&reply)));
    }
    Err(cx.misconfigured(Misconfiguration::Other(
        "the issuer publishes no RFC 8414 or OpenID discovery metadata; set params.tokenUrl",
    )))
}

/// What a failed token or introspection call says about the endpoint it went to.
#[derive(Debug, PartialEq, Eq)]
enum Moved {
    /// Nothing: the endpoint answered about the credential.
    No,
    /// The server answered that nothing is there (404, 405, 410) or redirected: the request
    /// was not processed, so nothing was spent.
    Yes,
    /// No answer (connection refused or reset): maybe; the request may have been processed.
    Maybe,
}

fn moved(error: &VerifyError) -> Moved {
    let status = match error {
        VerifyError::Transient {
            kind: TransientKind::Connection,
            status: None,
            ..
        } => return Moved::Maybe,
        VerifyError::Dead { status, .. }
        | VerifyError::PermissionDenied { status, .. }
        | VerifyError::Transient { status, .. } => *status,
        VerifyError::Misconfigured {
            problem: Misconfiguration::RequestRejected { status, .. },
            ..
        } => *status,
        VerifyError::Misconfigured { .. } => None,
    };
    match status {
        Some(404 | 405 | 410 | 300..=399) => Moved::Yes,
        _ => Moved::No,
    }
}

impl ProviderApi for Generic {
    const AUTH: &'static [AuthType] = &[AuthType::ClientCredentials, AuthType::RefreshToken];
    const MAY_ROTATE_REFRESH_TOKENS: bool = true;
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
        let metadata = metadata(cx, &issuer).await?;
        let token = metadata.token_endpoint.as_deref().ok_or_else(|| {
            cx.misconfigured(Misconfiguration::Other(
                "the discovery metadata names no token_endpoint; set params.tokenUrl",
            ))
        })?;
        let introspection = match introspection {
            Some(url) => Some(url),
            None => metadata.introspection_url(provider)?,
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

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let token = access.token(provider)?;
        let introspection = access
            .grant()
            .and_then(|g| Some((g.introspection_url.as_ref()?, g)));
        let introspected = match introspection {
            Some((url, grant)) => match introspect_once_more_if_moved(cx, url, grant).await {
                Ok(introspected) => Some(introspected),
                // The token was issued a moment ago: an issuer that cannot introspect its own
                // RFC 9068 JWT access tokens (oidc-provider stores only opaque ones) calls it
                // inactive, and then the JWT is its own introspection.
                Err(e) if is_inactive(&e) => Some(self_contained(cx, token).ok_or(e)?),
                Err(e) => return Err(e),
            },
            None => None,
        };
        let permissions = granted(cx, access.scopes(), introspected.as_ref());
        let mut account = named_before_probe(cx, token, introspected.as_ref())?;

        if let Some(url) = param_url(cx, "probeUrl", "params.probeUrl")? {
            let request = cx.http.bearer(Method::GET, url, token);
            let reply = cx.http.send("GET probeUrl", request).await?;
            if !reply.is_success() {
                let known = or_the_client(cx, account.clone())?;
                return Err(probe_error(cx, &reply).with_account(&known));
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
            account: or_the_client(cx, account)?,
            permissions,
            credential_expires_at: None,
        })
    }

    fn endpoints_moved(&self, cx: &Cx<'_>, error: &VerifyError) -> bool {
        if cx.param("tokenUrl").is_some() {
            return false;
        }
        let Ok(issuer) = issuer(cx) else {
            return false;
        };
        match moved(error) {
            Moved::No => false,
            Moved::Maybe => {
                cx.discovery.forget(&issuer);
                false
            }
            Moved::Yes => {
                cx.discovery.forget(&issuer);
                true
            }
        }
    }
}

/// The scopes the token holds: with introspection, the introspected `scope`, else the token
/// response's, else none; without, the token response's, else the requested ones.
fn granted(
    cx: &Cx<'_>,
    scopes: Option<&BTreeSet<String>>,
    introspected: Option<&Introspected>,
) -> BTreeSet<String> {
    match introspected {
        Some(i) => i
            .scopes
            .clone()
            .or_else(|| scopes.cloned())
            .unwrap_or_default(),
        None => scopes
            .cloned()
            .unwrap_or_else(|| requested_scopes(cx).into_iter().collect()),
    }
}

/// The account as far as it is known before the probe: the introspected `sub`, `username` or
/// `client_id`; else a JWT access token's `sub` or `client_id`; else, for client credentials,
/// the client id. The name: the introspected `username`, else the JWT's
/// `preferred_username` or `email`.
fn named_before_probe(
    cx: &Cx<'_>,
    token: &crate::secret::Redacted,
    introspected: Option<&Introspected>,
) -> Result<Account, VerifyError> {
    let claims = jwt::claims(token);
    let claim = |name| {
        claims
            .as_ref()
            .and_then(|c| jwt::string(c, name))
            .map(str::to_owned)
    };
    let introspected_id = introspected.and_then(|i| {
        [&i.subject, &i.username, &i.client_id]
            .into_iter()
            .find_map(|v| v.clone().filter(|v| !v.is_empty()))
    });
    let client = match cx.spec.auth {
        AuthType::ClientCredentials => Some(cx.need(Field::ClientId)?.expose().to_owned()),
        _ => None,
    };
    Ok(Account {
        id: introspected_id
            .or_else(|| claim("sub"))
            .or_else(|| claim("client_id"))
            .or(client)
            .unwrap_or_default(),
        name: introspected
            .and_then(|i| i.username.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| claim("preferred_username"))
            .or_else(|| claim("email"))
            .unwrap_or_default(),
    })
}

/// Every connected credential names an account: when nothing named a user (a refresh token,
/// no introspection, an opaque token, no probe), the connection is known by its app.
fn or_the_client(cx: &Cx<'_>, mut account: Account) -> Result<Account, VerifyError> {
    if account.id.is_empty() {
        account.id = cx.need(Field::ClientId)?.expose().to_owned();
    }
    Ok(account)
}

fn is_inactive(error: &VerifyError) -> bool {
    matches!(error, VerifyError::Dead { code: Some(c), .. } if c == "inactive")
}

/// What an RFC 9068 JWT access token from this issuer says about itself (claims read without
/// verifying the signature: the token came straight from the issuer's token endpoint).
fn self_contained(cx: &Cx<'_>, token: &crate::secret::Redacted) -> Option<Introspected> {
    let claims = jwt::claims(token)?;
    let issuer = issuer(cx).ok()?;
    let from_issuer = jwt::string(&claims, "iss")
        .is_some_and(|iss| iss.trim_end_matches('/') == issuer.as_str().trim_end_matches('/'));
    if !from_issuer {
        return None;
    }
    let string = |name| jwt::string(&claims, name).map(str::to_owned);
    tracing::debug!("introspection calls the JWT access token inactive; reading its claims");
    Some(Introspected {
        scopes: string("scope").map(|s| s.split_whitespace().map(str::to_owned).collect()),
        subject: string("sub"),
        username: string("username"),
        client_id: string("client_id"),
    })
}

/// Introspection of the grant's access token. When the discovered introspection endpoint
/// answers that it is not there, the cached metadata is dropped and the rediscovered endpoint
/// is asked once, if it differs.
async fn introspect_once_more_if_moved(
    cx: &Cx<'_>,
    url: &Url,
    grant: &Grant,
) -> Result<Introspected, VerifyError> {
    let provider = cx.provider();
    let token = grant.access_token(provider)?;
    let error = match introspect(&Generic, cx, url, grant.client_auth, token).await {
        Ok(introspected) => return Ok(introspected),
        Err(e) => e,
    };
    let discovered = cx.param("introspectionUrl").is_none();
    let Ok(issuer) = issuer(cx) else {
        return Err(error);
    };
    match moved(&error) {
        Moved::Yes if discovered => {}
        Moved::Maybe if discovered => {
            cx.discovery.forget(&issuer);
            return Err(error);
        }
        _ => return Err(error),
    }
    cx.discovery.forget(&issuer);
    match metadata(cx, &issuer).await?.introspection_url(provider)? {
        Some(fresh) if &fresh != url => {
            introspect(&Generic, cx, &fresh, grant.client_auth, token).await
        }
        _ => Err(error),
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

#[cfg(test)]
mod tests {
    use super::discovery::METADATA_CACHE_SIZE;
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

    fn reply(cache_control: Option<&str>) -> Reply {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = cache_control {
            headers.insert(reqwest::header::CACHE_CONTROL, value.parse().unwrap());
        }
        Reply {
            call: "GET authorization server metadata",
            status: StatusCode::OK,
            headers,
            body: Default::default(),
        }
    }

    #[test]
    fn metadata_lives_for_max_age_capped_at_a_day_and_an_hour_by_default() {
        let ttl = |v| metadata_ttl(&reply(v));
        assert_eq!(ttl(None), Duration::from_secs(3600));
        assert_eq!(ttl(Some("public, max-age=120")), Duration::from_secs(120));
        assert_eq!(ttl(Some("max-age=\"60\"")), Duration::from_secs(60));
        assert_eq!(ttl(Some("max-age=9999999")), Duration::from_secs(86_400));
        assert_eq!(ttl(Some("private")), Duration::from_secs(3600));
        for uncacheable in ["no-store", "max-age=600, no-cache", "max-age=0"] {
            assert_eq!(ttl(Some(uncacheable)), Duration::ZERO, "{uncacheable}");
        }
    }

    fn metadata(token: &str) -> Metadata {
        Metadata {
            issuer: None,
            token_endpoint: Some(token.into()),
            introspection_endpoint: None,
            token_endpoint_auth_methods_supported: Vec::new(),
        }
    }

    #[test]
    fn cached_metadata_expires_and_can_be_forgotten() {
        let cache = DiscoveryCache::default();
        let issuer = Url::parse("https://as.example.com").unwrap();
        let now = jiff::Timestamp::from_second(1_900_000_000).unwrap();
        cache.put(&issuer, metadata("t"), Duration::from_secs(60), now);
        let at = |secs| now + jiff::SignedDuration::from_secs(secs);
        assert!(cache.get(&issuer, at(59)).is_some());
        assert!(cache.get(&issuer, at(60)).is_none());
        assert!(cache.get(&issuer, now).is_some());
        cache.forget(&issuer);
        assert!(cache.get(&issuer, now).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_drops_what_expires_first() {
        let cache = DiscoveryCache::default();
        let now = jiff::Timestamp::from_second(1_900_000_000).unwrap();
        let issuer = |i: usize| Url::parse(&format!("https://as{i}.example.com")).unwrap();
        for i in 0..METADATA_CACHE_SIZE {
            let ttl = Duration::from_secs(if i == 7 { 10 } else { 1000 + i as u64 });
            cache.put(&issuer(i), metadata("t"), ttl, now);
        }
        cache.put(&issuer(9999), metadata("t"), Duration::from_secs(60), now);
        assert_eq!(cache.0.lock().unwrap().len(), METADATA_CACHE_SIZE);
        assert!(
            cache.get(&issuer(7), now).is_none(),
            "the soonest to expire goes"
        );
        assert!(cache.get(&issuer(9999), now).is_some());
        assert!(cache.get(&issuer(0), now).is_some());
    }

    #[test]
    fn only_not_found_and_redirect_answers_say_the_endpoints_moved() {
        let p = crate::api::Provider::OAuth2;
        let dead = |status| VerifyError::dead(p, "c", Some(status), None, DeadCause::Rejected);
        assert_eq!(moved(&dead(404)), Moved::Yes);
        assert_eq!(moved(&dead(410)), Moved::Yes);
        let rejected = VerifyError::misconfigured(
            p,
            Misconfiguration::RequestRejected {
                call: "c",
                status: Some(405),
                code: Some("invalid_request".into()),
            },
        );
        assert_eq!(moved(&rejected), Moved::Yes);
        assert_eq!(moved(&dead(401)), Moved::No);
        assert_eq!(moved(&dead(400)), Moved::No);
        let refused = VerifyError::transient(p, "c", TransientKind::Connection, None, None, None);
        assert_eq!(moved(&refused), Moved::Maybe);
        let timeout = VerifyError::transient(p, "c", TransientKind::Timeout, None, None, None);
        assert_eq!(moved(&timeout), Moved::No);
    }

    #[test]
    fn a_jwt_from_the_issuer_is_its_own_introspection_and_a_foreign_one_is_not() {
        use base64::Engine;
        let jwt = |payload: &str| {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload);
            crate::secret::Redacted::new(format!("e30.{payload}.sig"))
        };
        let spec = crate::providers::testing::spec(
            "oauth2",
            "ClientCredentials",
            Some("https://as.example.com/"),
            &[],
        );
        crate::providers::testing::with_cx(&spec, |cx| {
            let own = jwt(r#"{"iss":"https://as.example.com","sub":"svc","scope":"a b"}"#);
            let read = self_contained(cx, &own).expect("from the issuer");
            assert_eq!(read.subject.as_deref(), Some("svc"));
            assert_eq!(read.scopes, Some(["a".to_owned(), "b".to_owned()].into()));
            let foreign = jwt(r#"{"iss":"https://other.example.com","sub":"svc"}"#);
            assert!(self_contained(cx, &foreign).is_none());
            assert!(self_contained(cx, &crate::secret::Redacted::new("opaque")).is_none());
        });
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
