//! Salesforce: refresh tokens (rotating only when the connected app enables it) or client
//! credentials (the app's "Run As" integration user).
//!
//! `spec.endpoint` is the login host: `https://login.salesforce.com` (default),
//! `https://test.salesforce.com` (sandboxes), or the org's My Domain. Client credentials work
//! only on My Domain, so login/test are refused before any call. The token and userinfo
//! calls go to the endpoint; REST calls go to the `instance_url` the token response names
//! (it must pass the same https/loopback rule), which is how an emulator or proxy is reached.
//!
//! Permissions: the token's `scope` (`api`, `refresh_token`, ...) and `permission:<field>` for
//! each true field of the running user's `UserPermissionAccess` row (the default fields plus
//! any required ones).

use std::collections::BTreeSet;

use reqwest::{Method, Url};
use serde::Deserialize;

use super::classify::{Class, OAuthErrorBody, api_status};
use super::error::{DeadCause, Misconfiguration, TransientKind, VerifyError, sanitize_code};
use super::http::{Reply, host, join, parse_endpoint};
use super::{Access, ClientAuth, Cx, Probe, ProviderApi, TokenConfig};
use crate::api::{Account, AuthType};

pub(crate) struct Salesforce;

/// Fields always read from UserPermissionAccess, so a Superset policy can track them.
const DEFAULT_FIELDS: [&str; 3] = [
    "PermissionsApiEnabled",
    "PermissionsViewAllData",
    "PermissionsModifyAllData",
];

fn login(cx: &Cx<'_>) -> Result<Url, VerifyError> {
    let raw = cx
        .spec
        .endpoint
        .as_deref()
        .unwrap_or("https://login.salesforce.com");
    let url = parse_endpoint(cx.provider(), "spec.endpoint", raw)?;
    if cx.spec.auth == AuthType::ClientCredentials
        && matches!(
            host(&url).as_str(),
            "login.salesforce.com" | "test.salesforce.com"
        )
    {
        return Err(cx.misconfigured(Misconfiguration::Other(
            "the client credentials flow works only on the org's My Domain: set spec.endpoint to https://<MyDomain>.my.salesforce.com",
        )));
    }
    Ok(url)
}

fn api_version<'a>(cx: &'a Cx<'_>) -> Result<&'a str, VerifyError> {
    let version = cx.param("apiVersion").unwrap_or("v62.0");
    let digits = version.strip_prefix('v').unwrap_or("");
    let valid = digits.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
    });
    if !valid {
        return Err(cx.misconfigured(Misconfiguration::InvalidParam {
            name: "apiVersion".into(),
            value: version.into(),
            hint: "a REST API version such as v62.0",
        }));
    }
    Ok(version)
}

/// The UserPermissionAccess fields to read: the defaults plus every required one.
fn fields(cx: &Cx<'_>) -> Result<BTreeSet<String>, VerifyError> {
    let mut fields: BTreeSet<String> = DEFAULT_FIELDS.iter().map(|f| f.to_string()).collect();
    for required in cx
        .required
        .iter()
        .filter_map(|r| r.strip_prefix("permission:"))
    {
        // The field names go into SOQL: only identifiers.
        let identifier = !required.is_empty()
            && required
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !identifier {
            return Err(cx.misconfigured(Misconfiguration::InvalidPermission {
                value: format!("permission:{required}"),
                hint: "permission:<UserPermissionAccess field>, e.g. permission:PermissionsApiEnabled",
            }));
        }
        if !fields.iter().any(|f| f.eq_ignore_ascii_case(required)) {
            fields.insert(required.to_owned());
        }
    }
    Ok(fields)
}

impl ProviderApi for Salesforce {
    const AUTH: &'static [AuthType] = &[AuthType::ClientCredentials, AuthType::RefreshToken];
    const MAY_ROTATE_REFRESH_TOKENS: bool = true;
    const PARAMS: &'static [&'static str] = &["apiVersion"];

    /// Salesforce's token-endpoint codes for a user or org that is switched off (from
    /// integration vendors' write-ups; Salesforce publishes no table).
    fn token_error_class(&self, body: &OAuthErrorBody) -> Option<(Class, String)> {
        match body.error.as_str() {
            "inactive_user" | "inactive_org" => Some((
                Class::Dead(DeadCause::AccountInactive),
                sanitize_code(&body.error)?,
            )),
            _ => None,
        }
    }

    /// `permission:<field>` compares case-insensitively (SOQL field names are
    /// case-insensitive); scopes only by equality.
    fn satisfies(&self, granted: &BTreeSet<String>, required: &str) -> bool {
        required.starts_with("permission:")
            && granted.iter().any(|g| g.eq_ignore_ascii_case(required))
    }

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        login(cx)?;
        api_version(cx)?;
        fields(cx)?;
        Ok(())
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        Ok(TokenConfig {
            url: join(&login(cx)?, "/services/oauth2/token"),
            client_auth: ClientAuth::Body,
            scopes: Vec::new(),
            introspection_url: None,
        })
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let version = api_version(cx)?;
        let token = access.token(provider)?;
        let instance = match access.grant().and_then(|g| g.instance_url.as_ref()) {
            Some(url) => parse_endpoint(provider, "instance_url in the token response", url)?,
            None => {
                return Err(VerifyError::transient(
                    provider,
                    "POST token endpoint",
                    TransientKind::Malformed,
                    Some(200),
                    Some("no_instance_url".into()),
                    None,
                ));
            }
        };

        let request = cx.http.bearer(
            Method::GET,
            join(&instance, "/services/oauth2/userinfo"),
            token,
        );
        let reply = checked(
            cx,
            cx.http
                .send("GET /services/oauth2/userinfo", request)
                .await?,
        )?;
        let user: UserInfo = reply.json(provider)?;
        let account = Account {
            id: user.user_id,
            name: user.preferred_username.unwrap_or_default(),
        };

        let fields = fields(cx)?;
        // UNCONFIRMED (public tooling, not an official reference): UserPermissionAccess answers
        // one row for the running user, with one boolean per Permissions* field.
        let soql = format!(
            "SELECT {} FROM UserPermissionAccess",
            fields.iter().cloned().collect::<Vec<_>>().join(",")
        );
        let request = cx
            .http
            .bearer(
                Method::GET,
                join(&instance, &format!("/services/data/{version}/query")),
                token,
            )
            .query(&[("q", soql)]);
        let reply = checked(cx, cx.http.send("GET /services/data/query", request).await?)
            .map_err(|e| e.with_account(&account))?;
        let result: QueryResult = reply.json(provider)?;

        let mut permissions: BTreeSet<String> = access.scopes().cloned().unwrap_or_default();
        if let Some(row) = result.records.first() {
            for (field, value) in row {
                if field.starts_with("Permissions") && value.as_bool() == Some(true) {
                    permissions.insert(format!("permission:{field}"));
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

/// REST errors are `[{"message","errorCode"}]`: 401 `INVALID_SESSION_ID` dead, 403
/// `REQUEST_LIMIT_EXCEEDED` (the daily API quota) transient, any other 403 denied.
fn checked(cx: &Cx<'_>, reply: Reply) -> Result<Reply, VerifyError> {
    if reply.is_success() {
        return Ok(reply);
    }
    let code = serde_json::from_slice::<Vec<RestError>>(&reply.body)
        .ok()
        .and_then(|errors| errors.into_iter().next())
        .and_then(|e| sanitize_code(&e.error_code));
    if reply.status == 403 && code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED") {
        return Err(VerifyError::transient(
            cx.provider(),
            reply.call,
            TransientKind::RateLimited,
            Some(403),
            code,
            reply.retry_after(None),
        ));
    }
    Err(api_status(
        cx.provider(),
        &reply,
        DeadCause::TokenRejected,
        code,
        None,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestError {
    error_code: String,
}

#[derive(Deserialize)]
struct UserInfo {
    user_id: String,
    #[serde(default)]
    preferred_username: Option<String>,
}

#[derive(Deserialize)]
struct QueryResult {
    #[serde(default)]
    records: Vec<serde_json::Map<String, serde_json::Value>>,
}
