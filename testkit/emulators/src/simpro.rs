//! Simpro: API keys as bearer tokens on `/api/v1.0/` (`info/`, `currentUser/`, `companies/`).
//! The 401/403 bodies are undocumented; these are plausible stand-ins.

use http::Method;
use serde_json::json;

use crate::id_json;
use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::State;

/// The Simpro flavour.
#[derive(Default)]
pub struct Simpro;

/// A Simpro emulator (its base URL is the instance URL).
pub type SimproEmulator = Emulator<Simpro>;

fn error(status: u16, message: &str) -> Response {
    Response::json(status, json!({"errors": [{"message": message}]}))
}

impl Flavor for Simpro {
    fn handle(&self, state: &mut State, req: &Request) -> Response {
        if req.method != Method::GET {
            return error(405, "Method not allowed");
        }
        let Some(account) = state.api_key(req) else {
            return error(401, "Unauthorized");
        };
        let companies: Vec<String> = account
            .permissions
            .iter()
            .filter_map(|p| p.strip_prefix("company:").map(str::to_owned))
            .collect();
        match req.path.as_str() {
            "/api/v1.0/info/" => Response::json(
                200,
                json!({"Version": "24.0.0", "Country": "AU", "MultiCompany": companies.len() > 1}),
            ),
            "/api/v1.0/currentUser/" => Response::json(
                200,
                json!([{
                    "ID": id_json(&account.id),
                    "Name": account.name,
                    "Type": "employee",
                    "TypeID": id_json(&account.id),
                    "AccessibleCompanies": companies.iter().map(|c| json!({"ID": id_json(c), "Name": format!("Company {c}")})).collect::<Vec<_>>(),
                }]),
            ),
            "/api/v1.0/companies/" => Response::json(
                200,
                companies
                    .iter()
                    .map(|c| json!({"ID": id_json(c), "Name": format!("Company {c}")}))
                    .collect(),
            ),
            path => match path.strip_prefix("/api/v1.0/companies/") {
                Some(id) if companies.iter().any(|c| c == id.trim_end_matches('/')) => {
                    Response::json(
                        200,
                        json!({"ID": id_json(id.trim_end_matches('/')), "Name": "Company"}),
                    )
                }
                Some(_) => error(404, "Not found"),
                None => error(404, "Not found"),
            },
        }
    }
}
