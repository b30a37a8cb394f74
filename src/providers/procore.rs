//! Procore: DMSA client credentials or user refresh tokens (which rotate on every use).
//!
//! Hosts: production `login.procore.com` (auth) + `api.procore.com` (API). `spec.endpoint`
//! selects another environment: a known Procore host maps to its documented pair
//! (`sandbox.procore.com` or `login-sandbox.procore.com` -> the developer sandbox pair,
//! `api-monthly.procore.com` or `login-sandbox-monthly.procore.com` -> the monthly sandbox
//! pair); any other URL (a proxy, an emulator) serves both the auth and the API paths.
//!
//! Probe: `GET /rest/v1.0/me` (identity), `GET /rest/v1.0/companies` (`company:<id>`), and,
//! with `params.companyId`, `GET /rest/v1.0/settings/permissions` (`<tool>:<level>`) scoped to
//! `params.projectId` when set, plus `GET /rest/v1.0/projects` when a `project:<id>` is
//! required. Every call carries `Procore-Company-Id` when a company is configured.

use std::collections::BTreeSet;

use reqwest::{Method, Url};
use serde::Deserialize;

use super::classify::api_status;
use super::error::{DeadCause, Misconfiguration, VerifyError};
use super::http::{Reply, host, join, parse_endpoint};
use super::retry_after::RateLimitReset;
use super::{Access, ClientAuth, Cx, Probe, ProviderApi, TokenConfig};
use crate::api::{Account, AuthType};

pub(crate) struct Procore;

const RESET: Option<RateLimitReset> = Some(RateLimitReset::UnixSeconds("x-rate-limit-reset"));

/// Permission levels, lowest first; a higher level satisfies a lower one.
const LEVELS: [&str; 4] = ["none", "read_only", "standard", "admin"];

/// Splits `<tool>:<level>` into the tool and the level's rank. `company:`/`project:` entries
/// and unknown levels are not tool levels.
fn tool_level(permission: &str) -> Option<(&str, usize)> {
    let (tool, level) = permission.rsplit_once(':')?;
    if tool.is_empty() || tool == "company" || tool == "project" {
        return None;
    }
    Some((tool, LEVELS.iter().position(|l| *l == level)?))
}

/// Procore's level names (`None`, `Read Only`, `Read-only`, `Standard`, `Admin`) in our
/// vocabulary.
fn level_name(name: &str) -> Option<&'static str> {
    let normal: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    match normal.as_str() {
        "none" => Some("none"),
        "readonly" => Some("read_only"),
        "standard" => Some("standard"),
        "admin" => Some("admin"),
        _ => None,
    }
}

/// Auth and API base URLs for `spec.endpoint`.
fn hosts(cx: &Cx<'_>) -> Result<(Url, Url), VerifyError> {
    let pair = |auth: &str, api: &str| {
        (
            Url::parse(auth).expect("static URL"),
            Url::parse(api).expect("static URL"),
        )
    };
    let Some(endpoint) = cx.spec.endpoint.as_deref() else {
        return Ok(pair("https://login.procore.com", "https://api.procore.com"));
    };
    let url = parse_endpoint(cx.provider(), "spec.endpoint", endpoint)?;
    Ok(match host(&url).as_str() {
        "login.procore.com" | "api.procore.com" => {
            pair("https://login.procore.com", "https://api.procore.com")
        }
        "login-sandbox.procore.com" | "sandbox.procore.com" => pair(
            "https://login-sandbox.procore.com",
            "https://sandbox.procore.com",
        ),
        "login-sandbox-monthly.procore.com" | "api-monthly.procore.com" => pair(
            "https://login-sandbox-monthly.procore.com",
            "https://api-monthly.procore.com",
        ),
        _ => (url.clone(), url),
    })
}

fn company_id<'a>(cx: &'a Cx<'_>) -> Result<Option<&'a str>, VerifyError> {
    let id = cx.param("companyId");
    if let Some(id) = id
        && !id.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(cx.misconfigured(Misconfiguration::InvalidParam {
            name: "companyId".into(),
            value: id.into(),
            hint: "a Procore company id (digits)",
        }));
    }
    if id.is_none() && cx.spec.auth == AuthType::ClientCredentials {
        // DMSA tokens need the Procore-Company-Id header even on /me and /companies.
        return Err(cx.misconfigured(Misconfiguration::MissingParam {
            name: "companyId",
            hint: "a Developer Managed Service Account works inside one company; set the company id",
        }));
    }
    Ok(id)
}

impl ProviderApi for Procore {
    const AUTH: &'static [AuthType] = &[AuthType::ClientCredentials, AuthType::RefreshToken];
    const MAY_ROTATE_REFRESH_TOKENS: bool = true;
    const PARAMS: &'static [&'static str] = &["companyId", "projectId"];

    /// `<tool>:<level>` is satisfied by the same tool at that level or higher (none <
    /// read_only < standard < admin); `company:<id>` and `project:<id>` only by equality.
    fn satisfies(&self, granted: &BTreeSet<String>, required: &str) -> bool {
        match tool_level(required) {
            Some((tool, level)) => {
                level == 0
                    || granted
                        .iter()
                        .filter_map(|g| tool_level(g))
                        .any(|(t, l)| t == tool && l >= level)
            }
            None => false,
        }
    }

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        hosts(cx)?;
        company_id(cx)?;
        Ok(())
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        let (auth, _) = hosts(cx)?;
        company_id(cx)?;
        Ok(TokenConfig {
            url: join(&auth, "/oauth/token"),
            client_auth: ClientAuth::Body,
            scopes: Vec::new(),
            introspection_url: None,
        })
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let (_, api) = hosts(cx)?;
        let company = company_id(cx)?;
        let project = cx.param("projectId");
        let token = access.token(provider)?;
        let get = |call, path: &str, query: Vec<(&'static str, String)>| {
            let mut request = cx
                .http
                .bearer(Method::GET, join(&api, path), token)
                .query(&query);
            if let Some(company) = company {
                request = request.header("Procore-Company-Id", company);
            }
            async move { checked(cx, cx.http.send(call, request).await?) }
        };

        let me: Me = get("GET /rest/v1.0/me", "/rest/v1.0/me", Vec::new())
            .await?
            .json(provider)?;
        let account = Account {
            id: super::json_id(&me.id),
            name: me.login.or(me.name).unwrap_or_default(),
        };
        let mut permissions = BTreeSet::new();
        let companies: Vec<Named> = get(
            "GET /rest/v1.0/companies",
            "/rest/v1.0/companies",
            Vec::new(),
        )
        .await
        .map_err(|e| e.with_account(&account))?
        .json(provider)?;
        permissions.extend(
            companies
                .iter()
                .map(|c| format!("company:{}", super::json_id(&c.id))),
        );

        if let Some(company) = company {
            let scope = match project {
                Some(project) => ("project_id", project.to_owned()),
                None => ("company_id", company.to_owned()),
            };
            let manifest: Manifest = get(
                "GET /rest/v1.0/settings/permissions",
                "/rest/v1.0/settings/permissions",
                vec![scope],
            )
            .await
            .map_err(|e| e.with_account(&account))?
            .json(provider)?;
            for tool in manifest.tools {
                // UNCONFIRMED: `available_for_user: false` is read as "no access at all".
                if tool.available_for_user == Some(false) {
                    continue;
                }
                if let Some(level) = tool
                    .user_access_level
                    .as_ref()
                    .and_then(|l| level_name(&l.name))
                {
                    permissions.insert(format!("{}:{level}", tool.name.to_ascii_lowercase()));
                }
            }
            if cx.required.iter().any(|r| r.starts_with("project:")) {
                let projects: Vec<Named> = get(
                    "GET /rest/v1.0/projects",
                    "/rest/v1.0/projects",
                    vec![("company_id", company.to_owned())],
                )
                .await
                .map_err(|e| e.with_account(&account))?
                .json(provider)?;
                permissions.extend(
                    projects
                        .iter()
                        .map(|p| format!("project:{}", super::json_id(&p.id))),
                );
            }
        }
        Ok(Probe {
            account,
            permissions,
            credential_expires_at: None,
        })
    }
}

/// Procore errors carry no codes, only messages (/error-reference), so the one 403 that means
/// "dead" — the app was uninstalled from the company — is recognised by its documented text.
/// Every other 403 is a permission refusal.
fn checked(cx: &Cx<'_>, reply: Reply) -> Result<Reply, VerifyError> {
    if reply.is_success() {
        return Ok(reply);
    }
    let provider = cx.provider();
    if reply.status == 403
        && String::from_utf8_lossy(&reply.body)
            .to_ascii_lowercase()
            .contains("app is not connected to this company")
    {
        return Err(VerifyError::dead(
            provider,
            reply.call,
            Some(403),
            Some("app_not_connected".into()),
            DeadCause::AppDisconnected,
        ));
    }
    if reply.status == 400 && String::from_utf8_lossy(&reply.body).contains("Procore-Company-Id") {
        return Err(cx.misconfigured(Misconfiguration::MissingParam {
            name: "companyId",
            hint: "Procore asks for the Procore-Company-Id header on this call",
        }));
    }
    Err(api_status(
        provider,
        &reply,
        DeadCause::TokenRejected,
        None,
        RESET,
    ))
}

#[derive(Deserialize)]
struct Me {
    id: serde_json::Value,
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Named {
    id: serde_json::Value,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    tools: Vec<Tool>,
}

#[derive(Deserialize)]
struct Tool {
    name: String,
    #[serde(default)]
    available_for_user: Option<bool>,
    #[serde(default)]
    user_access_level: Option<Level>,
}

#[derive(Deserialize)]
struct Level {
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_levels_parse_and_rank() {
        assert_eq!(tool_level("documents:admin"), Some(("documents", 3)));
        assert_eq!(tool_level("budget:read_only"), Some(("budget", 1)));
        assert_eq!(tool_level("company:12"), None);
        assert_eq!(tool_level("documents:owner"), None);
    }

    fn mapped(endpoint: Option<&str>) -> (String, String) {
        let spec = crate::providers::testing::spec("procore", "RefreshToken", endpoint, &[]);
        crate::providers::testing::with_cx(&spec, |cx| {
            let (auth, api) = hosts(cx).unwrap();
            (auth.to_string(), api.to_string())
        })
    }

    #[test]
    fn endpoint_selects_the_documented_host_pair_or_one_base() {
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let production = pair("https://login.procore.com/", "https://api.procore.com/");
        let sandbox = pair(
            "https://login-sandbox.procore.com/",
            "https://sandbox.procore.com/",
        );
        let monthly = pair(
            "https://login-sandbox-monthly.procore.com/",
            "https://api-monthly.procore.com/",
        );
        assert_eq!(mapped(None), production);
        assert_eq!(mapped(Some("https://api.procore.com")), production);
        assert_eq!(mapped(Some("https://sandbox.procore.com")), sandbox);
        assert_eq!(mapped(Some("https://login-sandbox.procore.com/")), sandbox);
        assert_eq!(mapped(Some("https://api-monthly.procore.com")), monthly);
        assert_eq!(
            mapped(Some("http://127.0.0.1:8080")),
            pair("http://127.0.0.1:8080/", "http://127.0.0.1:8080/")
        );
    }

    #[test]
    fn procore_level_names_map_to_the_vocabulary() {
        assert_eq!(level_name("Read Only"), Some("read_only"));
        assert_eq!(level_name("Read-only"), Some("read_only"));
        assert_eq!(level_name("Admin"), Some("admin"));
        assert_eq!(level_name("Owner"), None);
    }
}
