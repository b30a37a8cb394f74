//! SafetyCulture: API tokens as bearer tokens; `GET /accounts/user/v1/user:WhoAmI`; rate-limit
//! headers `x-ratelimit-limit`/`-remaining`/`-reset` (seconds).

use http::Method;
use serde_json::json;

use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::State;

/// The SafetyCulture flavour.
#[derive(Default)]
pub struct SafetyCulture;

/// A SafetyCulture emulator.
pub type SafetyCultureEmulator = Emulator<SafetyCulture>;

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        json!({"statusCode": status, "error": code, "message": message}),
    )
}

impl Flavor for SafetyCulture {
    fn handle(&self, state: &mut State, req: &Request) -> Response {
        let Some(account) = state.api_key(req) else {
            return error(401, "Unauthorized", "invalid or expired token");
        };
        match (&req.method, req.path.as_str()) {
            (&Method::GET, "/accounts/user/v1/user:WhoAmI") => {
                let organisation = account
                    .permissions
                    .iter()
                    .find_map(|p| p.strip_prefix("organisation:"))
                    .unwrap_or_default();
                let (first, last) = account.name.split_once(' ').unwrap_or((&account.name, ""));
                Response::json(
                    200,
                    json!({"user_id": account.id, "organisation_id": organisation, "firstname": first, "lastname": last}),
                )
            }
            _ => error(404, "NotFound", "not found"),
        }
    }

    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        error(429, "TooManyRequests", "rate limit exceeded")
            .header("retry-after", &retry_after_secs.to_string())
            .header("x-ratelimit-limit", "200")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", &retry_after_secs.to_string())
    }
}
