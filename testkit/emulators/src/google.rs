//! Google: `/token` (refresh tokens that do not rotate; `invalid_grant` "Token has been
//! expired or revoked.") and Drive's `GET /drive/v3/about?fields=user` (`fields` required,
//! any `drive` scope), with Google's error envelope.

use http::Method;
use serde_json::json;

use crate::server::{Emulator, Fault, Flavor, Request, Response};
use crate::state::State;
use crate::{oauth_error, opaque, scope_string};

/// The Google flavour.
#[derive(Default)]
pub struct Google;

/// A Google (OAuth + Drive) emulator.
pub type GoogleEmulator = Emulator<Google>;

impl GoogleEmulator {
    /// The next `n` Drive calls answer 403 `userRateLimitExceeded` (a rate limit, not a
    /// permission problem).
    pub fn user_rate_limit_next(&self, n: usize) {
        self.fail_next_on(
            "/drive/v3/about",
            n,
            Fault::Respond(google_error(
                403,
                "PERMISSION_DENIED",
                "userRateLimitExceeded",
                "User Rate Limit Exceeded",
            )),
        );
    }
}

fn google_error(code: u16, status: &str, reason: &str, message: &str) -> Response {
    Response::json(
        code,
        json!({"error": {"code": code, "message": message, "status": status, "errors": [{"message": message, "domain": "global", "reason": reason}]}}),
    )
}

impl Flavor for Google {
    fn handle(&self, state: &mut State, req: &Request) -> Response {
        match (&req.method, req.path.as_str()) {
            (&Method::POST, "/token") => match state.grant(req, &opaque) {
                Ok(issued) => Response::json(
                    200,
                    json!({
                        "access_token": issued.access_token,
                        "expires_in": 3599,
                        "scope": scope_string(&issued.scopes),
                        "token_type": "Bearer",
                    }),
                ),
                Err(e) => oauth_error(&e, "Token has been expired or revoked."),
            },
            (&Method::GET, "/drive/v3/about") => {
                let Some((token, account)) = state.bearer(req) else {
                    return google_error(
                        401,
                        "UNAUTHENTICATED",
                        "authError",
                        "Request had invalid authentication credentials.",
                    );
                };
                if !token
                    .scopes
                    .iter()
                    .any(|s| s.starts_with("https://www.googleapis.com/auth/drive"))
                {
                    let mut response = google_error(
                        403,
                        "PERMISSION_DENIED",
                        "insufficientPermissions",
                        "Request had insufficient authentication scopes.",
                    );
                    response.body = json!({"error": {"code": 403, "message": "Request had insufficient authentication scopes.", "status": "PERMISSION_DENIED", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}}).to_string().into_bytes();
                    return response.header("www-authenticate", "Bearer realm=\"https://accounts.google.com/\", error=\"insufficient_scope\"");
                }
                if req.query.get("fields").is_none_or(|f| f.is_empty()) {
                    return google_error(
                        400,
                        "INVALID_ARGUMENT",
                        "required",
                        "The 'fields' parameter is required for this method.",
                    );
                }
                Response::json(
                    200,
                    json!({"user": {"kind": "drive#user", "displayName": account.name, "emailAddress": account.email, "permissionId": account.id, "me": true}}),
                )
            }
            _ => google_error(404, "NOT_FOUND", "notFound", "Not Found"),
        }
    }

    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        )
        .header("retry-after", &retry_after_secs.to_string())
    }
}
