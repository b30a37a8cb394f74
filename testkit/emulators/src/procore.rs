//! Procore: `/oauth/token` (form or JSON; client credentials for DMSA, rotating refresh
//! tokens), `/oauth/token/info`, `/oauth/revoke`, and the REST probe calls `/rest/v1.0/me`,
//! `/companies`, `/projects`, `/settings/permissions`, with the `Procore-Company-Id` rules and
//! the hourly/spike rate-limit headers.

use std::sync::atomic::{AtomicBool, Ordering};

use http::Method;
use serde_json::json;

use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::{RefreshPolicy, State};
use crate::{id_json, now, oauth_error, opaque};

/// The Procore flavour.
#[derive(Default)]
pub struct Procore {
    disconnected: AtomicBool,
}

/// A Procore emulator.
pub type ProcoreEmulator = Emulator<Procore>;

impl ProcoreEmulator {
    /// Uninstalls the app from every company: company-scoped calls answer 403 "App is not
    /// connected to this company".
    pub fn disconnect_app(&self) {
        self.flavor().disconnected.store(true, Ordering::SeqCst);
    }
}

fn errors(status: u16, message: &str) -> Response {
    Response::json(status, json!({"errors": message}))
}

/// Procore's level names for our vocabulary.
fn level_name(level: &str) -> &'static str {
    match level {
        "admin" => "Admin",
        "standard" => "Standard",
        "read_only" => "Read Only",
        _ => "None",
    }
}

impl Flavor for Procore {
    const REFRESH_POLICY: RefreshPolicy = RefreshPolicy::Rotate;

    fn handle(&self, state: &mut State, req: &Request) -> Response {
        match (&req.method, req.path.as_str()) {
            (&Method::POST, "/oauth/token") => match state.grant(req, &opaque) {
                Ok(issued) => {
                    let mut body = json!({
                        "access_token": issued.access_token,
                        "token_type": "bearer",
                        "expires_in": issued.expires_in.unwrap_or(5400),
                        "created_at": now(),
                    });
                    if let Some(refresh) = issued.refresh_token {
                        body["refresh_token"] = refresh.into();
                    }
                    Response::json(200, body)
                }
                Err(e) => oauth_error(&e, "The refresh token is invalid"),
            },
            (&Method::POST, "/oauth/revoke") => {
                if let Some(token) = req.form().get("token") {
                    state.revoke(token);
                }
                Response::json(200, json!({}))
            }
            (&Method::GET, "/oauth/token/info") => match state.bearer(req) {
                Some((token, account)) => Response::json(
                    200,
                    json!({
                        "resource_owner_id": id_json(&account.id),
                        "scopes": [],
                        "expires_in_seconds": 5400,
                        "application": {"uid": token.client},
                        "created_at": now(),
                    }),
                ),
                None => errors(401, "The access token is invalid"),
            },
            (&Method::GET, path) if path.starts_with("/rest/v1.0/") => self.rest(state, req, path),
            _ => errors(404, "Not Found"),
        }
    }

    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        errors(429, "Rate limit exceeded")
            .header("retry-after", &retry_after_secs.to_string())
            .header("x-rate-limit-limit", "600")
            .header("x-rate-limit-remaining", "0")
            .header(
                "x-rate-limit-reset",
                &(now() + retry_after_secs).to_string(),
            )
    }
}

impl Procore {
    fn rest(&self, state: &mut State, req: &Request, path: &str) -> Response {
        let Some((token, account)) = state.bearer(req) else {
            return errors(401, "The access token is invalid");
        };
        let header = req.header("procore-company-id");
        // /me and /companies need no header for user tokens; DMSA tokens need it everywhere.
        let header_optional =
            matches!(path, "/rest/v1.0/me" | "/rest/v1.0/companies") && !token.app_only;
        let company = match header {
            Some(id) => Some(id.to_owned()),
            None if header_optional => None,
            None => return errors(400, "Missing Procore-Company-Id header!"),
        };
        if let Some(company) = &company {
            if self.disconnected.load(Ordering::SeqCst) {
                return errors(403, "App is not connected to this company");
            }
            if !account.permissions.contains(&format!("company:{company}")) {
                return errors(403, "You do not have access to this company");
            }
        }
        let prefixed = |prefix: &str| {
            account
                .permissions
                .iter()
                .filter_map(|p| p.strip_prefix(prefix).map(str::to_owned))
                .collect::<Vec<_>>()
        };
        match path {
            "/rest/v1.0/me" => Response::json(
                200,
                json!({"id": id_json(&account.id), "login": account.name, "name": account.name}),
            ),
            "/rest/v1.0/companies" => Response::json(
                200,
                prefixed("company:")
                    .iter()
                    .map(|id| json!({"id": id_json(id), "name": format!("Company {id}"), "is_active": true}))
                    .collect(),
            ),
            "/rest/v1.0/projects" => {
                if req.query.get("company_id").map(String::as_str) != company.as_deref() {
                    return errors(400, "company_id must match the Procore-Company-Id header");
                }
                Response::json(
                    200,
                    prefixed("project:")
                        .iter()
                        .map(|id| json!({"id": id_json(id), "name": format!("Project {id}")}))
                        .collect(),
                )
            }
            "/rest/v1.0/settings/permissions" => {
                if let Some(project) = req.query.get("project_id")
                    && !account.permissions.contains(&format!("project:{project}"))
                {
                    return errors(404, "Not Found");
                }
                let tools: Vec<_> = account
                    .permissions
                    .iter()
                    .filter_map(|p| p.rsplit_once(':'))
                    .filter(|(tool, _)| *tool != "company" && *tool != "project")
                    .enumerate()
                    .map(|(i, (tool, level))| {
                        json!({
                            "name": tool,
                            "friendly_name": tool,
                            "available_for_user": true,
                            "user_access_level": {"id": i, "name": level_name(level)},
                            "permitted_actions": [],
                            "can_create": level != "read_only" && level != "none",
                        })
                    })
                    .collect();
                Response::json(200, json!({"tools": tools}))
            }
            _ => errors(404, "Not Found"),
        }
    }
}
