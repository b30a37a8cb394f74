//! Microsoft identity platform v2 (`/{tenant}/oauth2/v2.0/token`, with `error_codes`) and
//! Graph (`/v1.0/organization`, `/v1.0/me`, `/v1.0/sites/{id}`). Access tokens are JWTs
//! carrying `roles` (client credentials) or `scp` (delegated), unless a test asks for opaque
//! tokens.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use serde_json::json;

use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::{Account, GrantError, RefreshPolicy, State};
use crate::{now, opaque, scope_string};

/// The Microsoft flavour.
pub struct Microsoft {
    tenant: Mutex<String>,
    graph_host: Mutex<String>,
    opaque_tokens: AtomicBool,
}

impl Default for Microsoft {
    fn default() -> Self {
        Self {
            tenant: Mutex::new("contoso-tenant".into()),
            graph_host: Mutex::new("graph.microsoft.com".into()),
            opaque_tokens: AtomicBool::new(false),
        }
    }
}

/// A Microsoft Entra + Graph emulator.
pub type MicrosoftEmulator = Emulator<Microsoft>;

impl MicrosoftEmulator {
    /// The tenant id the token endpoint accepts (default `contoso-tenant`).
    pub fn set_tenant(&self, tenant: &str) {
        *self.flavor().tenant.lock().unwrap() = tenant.into();
    }

    /// The Graph host whose `.default` scope client credentials must ask for (default
    /// `graph.microsoft.com`; `graph.microsoft.us` emulates GCC High).
    pub fn set_graph_host(&self, host: &str) {
        *self.flavor().graph_host.lock().unwrap() = host.into();
    }

    /// Issue opaque (non-JWT) access tokens from now on.
    pub fn use_opaque_tokens(&self) {
        self.flavor().opaque_tokens.store(true, Ordering::SeqCst);
    }

    /// The client's secret has expired (AADSTS7000222).
    pub fn expire_client_secret(&self, client: &str) {
        self.with_state(|s| {
            if let Some(c) = s.clients.get_mut(client) {
                c.secret_expired = true;
            }
        });
    }

    /// The client lacks admin consent (AADSTS65001).
    pub fn require_consent(&self, client: &str) {
        self.with_state(|s| {
            if let Some(c) = s.clients.get_mut(client) {
                c.consent_required = true;
            }
        });
    }
}

fn aad_error(error: &str, status: u16, code: u64) -> Response {
    Response::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: emulated error. Trace ID: 0000"),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
            "error_uri": "https://login.microsoftonline.com/error?code=0",
        }),
    )
}

fn graph_error(status: u16, code: &str) -> Response {
    Response::json(
        status,
        json!({"error": {"code": code, "message": "emulated", "innerError": {"request-id": "0", "date": "2026-01-01T00:00:00"}}}),
    )
}

fn jwt(claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.c2lnbmF0dXJl")
}

impl Microsoft {
    fn mint(
        &self,
        tenant: String,
    ) -> impl Fn(&mut State, &Account, &str, bool, &BTreeSet<String>) -> String {
        let opaque_tokens = self.opaque_tokens.load(Ordering::SeqCst);
        move |state, account, client, app_only, scopes| {
            if opaque_tokens {
                return opaque(state, account, client, app_only, scopes);
            }
            let serial = state.mint("jti");
            let mut claims = json!({"aud": "https://graph.microsoft.com", "tid": tenant, "jti": serial, "iat": now()});
            if app_only {
                claims["appid"] = client.into();
                claims["app_displayname"] = account.name.clone().into();
                claims["oid"] = account.id.clone().into();
                if !scopes.is_empty() {
                    claims["roles"] = scopes.iter().cloned().collect::<Vec<_>>().into();
                }
            } else {
                claims["oid"] = account.id.clone().into();
                claims["upn"] = account.name.clone().into();
                claims["scp"] = scope_string(scopes).into();
            }
            jwt(claims)
        }
    }

    fn token(&self, state: &mut State, req: &Request, tenant: &str) -> Response {
        let expected = self.tenant.lock().unwrap().clone();
        if tenant != expected {
            return aad_error("invalid_request", 400, 90002);
        }
        let form = req.form();
        if form.get("grant_type").map(String::as_str) == Some("client_credentials") {
            let wanted = format!("https://{}/.default", self.graph_host.lock().unwrap());
            if form.get("scope") != Some(&wanted) {
                return aad_error("invalid_scope", 400, 70011);
            }
        }
        match state.grant(req, &self.mint(expected)) {
            Ok(issued) => {
                let mut body = json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": issued.access_token});
                if !issued.app_only {
                    body["scope"] = scope_string(&issued.scopes).into();
                }
                if let Some(refresh) = issued.refresh_token {
                    body["refresh_token"] = refresh.into();
                }
                Response::json(200, body)
            }
            Err(GrantError::InvalidClient) => aad_error("invalid_client", 401, 7000215),
            Err(GrantError::SecretExpired) => aad_error("invalid_client", 401, 7000222),
            Err(GrantError::ConsentRequired) => aad_error("invalid_grant", 400, 65001),
            Err(GrantError::InvalidGrant) => aad_error("invalid_grant", 400, 70008),
            Err(GrantError::InactiveAccount) => aad_error("invalid_grant", 400, 50173),
            Err(GrantError::UnsupportedGrantType) => {
                aad_error("unsupported_grant_type", 400, 70003)
            }
            Err(GrantError::InvalidRequest) => aad_error("invalid_request", 400, 900144),
        }
    }

    fn graph(&self, state: &State, req: &Request) -> Response {
        let Some((token, account)) = state.bearer(req) else {
            return graph_error(401, "InvalidAuthenticationToken");
        };
        let holds = |names: &[&str]| names.iter().any(|n| token.scopes.contains(*n));
        match req.path.as_str() {
            "/v1.0/organization" => {
                if token.app_only && !holds(&["Directory.Read.All", "Organization.Read.All"]) {
                    return graph_error(403, "Authorization_RequestDenied");
                }
                Response::json(
                    200,
                    json!({"value": [{"id": self.tenant.lock().unwrap().clone(), "displayName": "Contoso", "verifiedDomains": []}]}),
                )
            }
            "/v1.0/me" => {
                if token.app_only {
                    return graph_error(400, "BadRequest");
                }
                Response::json(
                    200,
                    json!({"id": account.id, "displayName": account.name, "userPrincipalName": account.email}),
                )
            }
            path => match path.strip_prefix("/v1.0/sites/") {
                Some(site) if account.permissions.contains(&format!("site:{site}")) => {
                    if !holds(&["Sites.Read.All", "Sites.ReadWrite.All", "Sites.Selected"]) {
                        return graph_error(403, "accessDenied");
                    }
                    Response::json(
                        200,
                        json!({"id": site, "displayName": "Site", "name": "site", "webUrl": "https://contoso.sharepoint.com/sites/site"}),
                    )
                }
                Some(_) => graph_error(404, "itemNotFound"),
                None => graph_error(404, "ResourceNotFound"),
            },
        }
    }
}

impl Flavor for Microsoft {
    const REFRESH_POLICY: RefreshPolicy = RefreshPolicy::Reissue;

    fn handle(&self, state: &mut State, req: &Request) -> Response {
        if req.method == Method::POST
            && let Some(tenant) = req
                .path
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
        {
            return self.token(state, req, tenant);
        }
        if req.method == Method::GET && req.path.starts_with("/v1.0/") {
            return self.graph(state, req);
        }
        graph_error(404, "ResourceNotFound")
    }

    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        graph_error(429, "TooManyRequests").header("retry-after", &retry_after_secs.to_string())
    }
}
