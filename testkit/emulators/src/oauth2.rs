//! A generic RFC 6749 authorization server: RFC 8414 or OpenID discovery, `/token` (client
//! authentication by Basic or form), RFC 7662 `/introspect`, and an RFC 6750 protected
//! resource `/userinfo` for probes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Method;
use serde_json::json;

use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::{RefreshPolicy, State};
use crate::{now, oauth_error, opaque, scope_string};

/// Which discovery document the server publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// `/.well-known/oauth-authorization-server` (RFC 8414) and OpenID.
    Rfc8414,
    /// Only `/.well-known/openid-configuration`.
    OpenIdOnly,
    /// None.
    None,
}

/// The generic flavour.
pub struct GenericOAuth2 {
    discovery: Mutex<Discovery>,
    introspection: AtomicBool,
    scope_in_token_response: AtomicBool,
    probe_scope: Mutex<Option<String>>,
}

impl Default for GenericOAuth2 {
    fn default() -> Self {
        Self {
            discovery: Mutex::new(Discovery::Rfc8414),
            introspection: AtomicBool::new(false),
            scope_in_token_response: AtomicBool::new(true),
            probe_scope: Mutex::new(None),
        }
    }
}

/// A generic OAuth2 emulator (its base URL is the issuer).
pub type OAuth2Emulator = Emulator<GenericOAuth2>;

impl OAuth2Emulator {
    /// Which discovery document to publish (default RFC 8414).
    pub fn set_discovery(&self, discovery: Discovery) {
        *self.flavor().discovery.lock().unwrap() = discovery;
    }

    /// Publish `introspection_endpoint` in the metadata (the endpoint itself always works).
    pub fn advertise_introspection(&self, on: bool) {
        self.flavor().introspection.store(on, Ordering::SeqCst);
    }

    /// Whether token responses carry `scope` (RFC 6749 lets servers omit it when it equals
    /// the request).
    pub fn scope_in_token_response(&self, on: bool) {
        self.flavor()
            .scope_in_token_response
            .store(on, Ordering::SeqCst);
    }

    /// `/userinfo` answers 403 `insufficient_scope` unless the token carries this scope.
    pub fn require_probe_scope(&self, scope: &str) {
        *self.flavor().probe_scope.lock().unwrap() = Some(scope.into());
    }
}

impl GenericOAuth2 {
    fn metadata(&self, state: &State) -> Response {
        let base = &state.base_url;
        let mut body = json!({
            "issuer": base,
            "token_endpoint": format!("{base}/token"),
            "grant_types_supported": ["client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        });
        if self.introspection.load(Ordering::SeqCst) {
            body["introspection_endpoint"] = format!("{base}/introspect").into();
        }
        Response::json(200, body)
    }
}

impl Flavor for GenericOAuth2 {
    const REFRESH_POLICY: RefreshPolicy = RefreshPolicy::Rotate;

    fn handle(&self, state: &mut State, req: &Request) -> Response {
        let discovery = *self.discovery.lock().unwrap();
        match (&req.method, req.path.as_str()) {
            (&Method::GET, "/.well-known/oauth-authorization-server")
                if discovery == Discovery::Rfc8414 =>
            {
                self.metadata(state)
            }
            (&Method::GET, "/.well-known/openid-configuration") if discovery != Discovery::None => {
                self.metadata(state)
            }
            (&Method::POST, "/token") => match state.grant(req, &opaque) {
                Ok(issued) => {
                    let mut body = json!({"access_token": issued.access_token, "token_type": "Bearer", "expires_in": issued.expires_in.unwrap_or(3600)});
                    if self.scope_in_token_response.load(Ordering::SeqCst) {
                        body["scope"] = scope_string(&issued.scopes).into();
                    }
                    if let Some(refresh) = issued.refresh_token {
                        body["refresh_token"] = refresh.into();
                    }
                    Response::json(200, body)
                }
                Err(e) => oauth_error(&e, "request refused"),
            },
            (&Method::POST, "/introspect") => {
                let form = req.form();
                let (id, secret) = match req.basic() {
                    Some((id, secret)) => (id, Some(secret)),
                    None => (
                        form.get("client_id").cloned().unwrap_or_default(),
                        form.get("client_secret").cloned(),
                    ),
                };
                let authenticated = state.clients.get(&id).is_some_and(|c| c.secret == secret);
                if !authenticated {
                    return Response::json(401, json!({"error": "invalid_client"}))
                        .header("www-authenticate", "Basic realm=\"introspect\"");
                }
                let token = form.get("token").and_then(|t| state.access_tokens.get(t));
                let account = token.and_then(|t| state.accounts.get(&t.account));
                match (token, account) {
                    (Some(t), Some(a)) if !t.revoked && !a.inactive => Response::json(
                        200,
                        json!({
                            "active": true,
                            "scope": scope_string(&t.scopes),
                            "client_id": t.client,
                            "username": a.name,
                            "sub": a.id,
                            "token_type": "Bearer",
                            "exp": now() + 3600,
                            "iat": now(),
                        }),
                    ),
                    _ => Response::json(200, json!({"active": false})),
                }
            }
            (&Method::GET, "/userinfo") => {
                let Some((token, account)) = state.bearer(req) else {
                    return Response::json(401, json!({}))
                        .header("www-authenticate", "Bearer error=\"invalid_token\"");
                };
                if let Some(scope) = self.probe_scope.lock().unwrap().as_ref()
                    && !token.scopes.contains(scope)
                {
                    return Response::json(403, json!({})).header(
                        "www-authenticate",
                        &format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
                    );
                }
                Response::json(
                    200,
                    json!({"sub": account.id, "preferred_username": account.name}),
                )
            }
            _ => Response::json(404, json!({"error": "not_found"})),
        }
    }
}
