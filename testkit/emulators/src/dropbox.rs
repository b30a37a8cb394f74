//! Dropbox: `/oauth2/token` (refresh tokens that do not rotate) and the RPC endpoint
//! `POST /2/users/get_current_account` (scope `account_info.read`), with auth.stone error
//! unions (`{"error_summary", "error": {".tag"}}`) and 429 `{reason, retry_after}`.

use http::Method;
use serde_json::json;

use crate::server::{Emulator, Flavor, Request, Response};
use crate::state::State;
use crate::{oauth_error, opaque, scope_string};

/// The Dropbox flavour.
#[derive(Default)]
pub struct Dropbox;

/// A Dropbox emulator.
pub type DropboxEmulator = Emulator<Dropbox>;

fn auth_error(tag: &str, extra: Option<(&str, &str)>) -> Response {
    let mut error = json!({".tag": tag});
    if let Some((k, v)) = extra {
        error[k] = v.into();
    }
    Response::json(
        401,
        json!({"error_summary": format!("{tag}/.."), "error": error}),
    )
}

impl Flavor for Dropbox {
    fn handle(&self, state: &mut State, req: &Request) -> Response {
        match (&req.method, req.path.as_str()) {
            (&Method::POST, "/oauth2/token") => match state.grant(req, &opaque) {
                Ok(issued) => Response::json(
                    200,
                    json!({
                        "access_token": issued.access_token,
                        "token_type": "bearer",
                        "expires_in": 14400,
                        "scope": scope_string(&issued.scopes),
                    }),
                ),
                Err(e) => oauth_error(&e, "refresh token is invalid or revoked"),
            },
            (&Method::POST, "/2/users/get_current_account") => {
                if !(req.body.is_empty() || req.body.as_ref() == b"null") {
                    return Response::text(
                        400,
                        "Error in call to API function \"users/get_current_account\": unexpected body",
                    );
                }
                let token = req
                    .bearer()
                    .and_then(|t| state.access_tokens.get(t).cloned());
                let Some(token) = token.filter(|t| !t.revoked) else {
                    return auth_error("invalid_access_token", None);
                };
                let Some(account) = state.accounts.get(&token.account).cloned() else {
                    return auth_error("invalid_access_token", None);
                };
                if account.inactive {
                    return auth_error("user_suspended", None);
                }
                if !token.scopes.contains("account_info.read") {
                    return auth_error(
                        "missing_scope",
                        Some(("required_scope", "account_info.read")),
                    );
                }
                Response::json(
                    200,
                    json!({
                        "account_id": account.id,
                        "name": {"given_name": account.name, "surname": "", "familiar_name": account.name, "display_name": account.name, "abbreviated_name": "A"},
                        "email": account.email,
                        "email_verified": true,
                        "disabled": false,
                        "account_type": {".tag": "business"},
                        "root_info": {".tag": "user", "root_namespace_id": "1", "home_namespace_id": "1"},
                    }),
                )
            }
            _ => Response::text(404, "Unknown endpoint"),
        }
    }

    fn rate_limited(&self, retry_after_secs: u64) -> Response {
        Response::json(
            429,
            json!({"error_summary": "too_many_requests/..", "error": {"reason": {".tag": "too_many_requests"}, "retry_after": retry_after_secs}}),
        )
        .header("retry-after", &retry_after_secs.to_string())
    }
}
