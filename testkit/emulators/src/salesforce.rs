//! Salesforce: `/services/oauth2/token` (answering with `instance_url` = this emulator, so
//! REST calls come back here), `/services/oauth2/userinfo`, and the REST query of
//! `UserPermissionAccess` under `/services/data/vXX.X/query`. REST errors are
//! `[{"message","errorCode"}]`; every REST answer carries `Sforce-Limit-Info`.

use std::sync::atomic::{AtomicBool, Ordering};

use http::Method;
use serde_json::{Map, Value, json};

use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::{GrantError, State};
use crate::{now, opaque, scope_string};

/// The Salesforce flavour.
#[derive(Default)]
pub struct Salesforce {
    quota_exhausted: AtomicBool,
}

/// A Salesforce emulator (its base URL is the My Domain and the instance URL).
pub type SalesforceEmulator = Emulator<Salesforce>;

impl SalesforceEmulator {
    /// The org's daily API quota is used up: REST calls answer 403 `REQUEST_LIMIT_EXCEEDED`.
    pub fn exhaust_daily_quota(&self) {
        self.flavor().quota_exhausted.store(true, Ordering::SeqCst);
    }
}

const ORG: &str = "00D000000000001";

fn rest_error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, json!([{"message": message, "errorCode": code}]))
}

impl Flavor for Salesforce {
    fn handle(&self, state: &mut State, req: &Request) -> Response {
        match (&req.method, req.path.as_str()) {
            (&Method::POST, "/services/oauth2/token") => match state.grant(req, &opaque) {
                Ok(issued) => {
                    let base = state.base_url.clone();
                    let mut body = json!({
                        "access_token": issued.access_token,
                        "signature": "c2lnbmF0dXJl",
                        "scope": scope_string(&issued.scopes),
                        "instance_url": base,
                        "id": format!("{base}/id/{ORG}/{}", issued.account.id),
                        "token_type": "Bearer",
                        "issued_at": (now() * 1000).to_string(),
                    });
                    if let Some(refresh) = issued.refresh_token {
                        body["refresh_token"] = refresh.into();
                    }
                    Response::json(200, body)
                }
                Err(e) => {
                    let (error, description) = match e {
                        GrantError::InactiveAccount => ("inactive_user", "user is inactive"),
                        GrantError::InvalidGrant => {
                            ("invalid_grant", "expired access/refresh token")
                        }
                        GrantError::InvalidClient => {
                            ("invalid_client", "invalid client credentials")
                        }
                        GrantError::UnsupportedGrantType => {
                            ("unsupported_grant_type", "grant type not supported")
                        }
                        _ => ("invalid_request", "invalid request"),
                    };
                    Response::json(
                        400,
                        json!({"error": error, "error_description": description}),
                    )
                }
            },
            (&Method::GET, "/services/oauth2/userinfo") => match state.bearer(req) {
                Some((_, account)) => Response::json(
                    200,
                    json!({
                        "sub": format!("{}/id/{ORG}/{}", state.base_url, account.id),
                        "user_id": account.id,
                        "organization_id": ORG,
                        "preferred_username": account.name,
                        "email": account.email,
                        "urls": {"rest": format!("{}/services/data/v{{version}}/", state.base_url)},
                    }),
                ),
                None => rest_error(401, "INVALID_SESSION_ID", "Session expired or invalid"),
            },
            (&Method::GET, path) if path.starts_with("/services/data/") => {
                self.rest(state, req, path)
            }
            _ => rest_error(404, "NOT_FOUND", "The requested resource does not exist"),
        }
    }

    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        Response::json(
            429,
            json!({"error": "rate_limit_exceeded", "error_description": "rate limit exceeded"}),
        )
        .header("retry-after", &retry_after_secs.to_string())
    }
}

impl Salesforce {
    fn rest(&self, state: &State, req: &Request, path: &str) -> Response {
        let Some((token, account)) = state.bearer(req) else {
            return rest_error(401, "INVALID_SESSION_ID", "Session expired or invalid");
        };
        if self.quota_exhausted.load(Ordering::SeqCst) {
            return rest_error(
                403,
                "REQUEST_LIMIT_EXCEEDED",
                "TotalRequests Limit exceeded.",
            );
        }
        if !token.scopes.contains("api") && !token.scopes.contains("full") {
            return rest_error(
                403,
                "INSUFFICIENT_ACCESS",
                "This session is not valid for use with the REST API",
            );
        }
        let response = match path.split('/').nth(4) {
            Some("query") => {
                let Some(q) = req.query.get("q") else {
                    return rest_error(400, "MALFORMED_QUERY", "q is required");
                };
                let upper = q.to_ascii_uppercase();
                let (Some(select), Some(from)) = (upper.find("SELECT "), upper.find(" FROM "))
                else {
                    return rest_error(400, "MALFORMED_QUERY", "unexpected query");
                };
                if !upper[from..].contains("USERPERMISSIONACCESS") {
                    return rest_error(
                        400,
                        "INVALID_TYPE",
                        "only UserPermissionAccess is emulated",
                    );
                }
                let mut record = Map::new();
                record.insert("attributes".into(), json!({"type": "UserPermissionAccess"}));
                for field in q[select + 7..from].split(',').map(str::trim) {
                    let held = account
                        .permissions
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&format!("permission:{field}")));
                    record.insert(field.to_owned(), Value::Bool(held));
                }
                Response::json(
                    200,
                    json!({"totalSize": 1, "done": true, "records": [record]}),
                )
            }
            _ => Response::json(200, json!({})),
        };
        response.header("sforce-limit-info", "api-usage=1/15000")
    }
}
