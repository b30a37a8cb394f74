//! Microsoft Entra ID (identity platform v2 token endpoint) and Microsoft Graph.
//!
//! Clouds (`params.cloud`): global `login.microsoftonline.com` + `graph.microsoft.com`; usgov
//! `login.microsoftonline.us` + `graph.microsoft.us`; usgovdod `login.microsoftonline.us` +
//! `dod-graph.microsoft.us`; china `login.partner.microsoftonline.cn` +
//! `microsoftgraph.chinacloudapi.cn`. The `.default` scope always names the cloud's Graph
//! host, whatever `spec.endpoint` says, because it identifies the resource, not a URL we call.
//!
//! `spec.endpoint`: a Microsoft login host replaces the login host only (and picks the cloud
//! when `params.cloud` is unset: `.us` -> usgov, `.cn` -> china); any other URL (a proxy, an
//! emulator) serves both the token path `/{tenant}/oauth2/v2.0/token` and Graph's `/v1.0/...`.
//!
//! Permissions: the token's `roles` (application permissions) and `scp` (delegated scopes),
//! read from the JWT payload without verification; a token that is not a readable JWT has no
//! claims, and then only `site:<id>` probes can establish permissions. `site:<id>` is held
//! when `GET /v1.0/sites/{id}` answers 200.

use std::collections::BTreeSet;

use reqwest::{Method, Url};
use serde::Deserialize;

use super::classify::{Class, OAuthErrorBody, api_status};
use super::error::{DeadCause, Misconfiguration, TransientKind, VerifyError, sanitize_code};
use super::http::{Reply, host, join, parse_endpoint};
use super::{Access, ClientAuth, Cx, Probe, ProviderApi, TokenConfig, jwt};
use crate::api::{Account, AuthType};

pub(crate) struct Microsoft;

struct Cloud {
    login: &'static str,
    graph: &'static str,
}

fn cloud_named(name: &str) -> Option<Cloud> {
    Some(match name {
        "global" => Cloud {
            login: "login.microsoftonline.com",
            graph: "graph.microsoft.com",
        },
        "usgov" => Cloud {
            login: "login.microsoftonline.us",
            graph: "graph.microsoft.us",
        },
        "usgovdod" => Cloud {
            login: "login.microsoftonline.us",
            graph: "dod-graph.microsoft.us",
        },
        // UNCONFIRMED: the identity docs name login.partner.microsoftonline.cn, the Graph docs
        // login.chinacloudapi.cn; both are accepted as endpoints, this one is the default.
        "china" => Cloud {
            login: "login.partner.microsoftonline.cn",
            graph: "microsoftgraph.chinacloudapi.cn",
        },
        _ => return None,
    })
}

const LOGIN_HOSTS: [&str; 4] = [
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.partner.microsoftonline.cn",
    "login.chinacloudapi.cn",
];

/// (login base, Graph base, Graph resource host for `.default`).
fn hosts(cx: &Cx<'_>) -> Result<(Url, Url, &'static str), VerifyError> {
    let endpoint = match cx.spec.endpoint.as_deref() {
        Some(e) => Some(parse_endpoint(cx.provider(), "spec.endpoint", e)?),
        None => None,
    };
    let login_override = endpoint
        .as_ref()
        .filter(|u| LOGIN_HOSTS.contains(&host(u).as_str()));
    let cloud_name = match (cx.param("cloud"), login_override) {
        (Some(name), _) => name.to_owned(),
        (None, Some(url)) if host(url).ends_with(".us") => "usgov".into(),
        (None, Some(url)) if host(url).ends_with(".cn") => "china".into(),
        _ => "global".into(),
    };
    let cloud = cloud_named(&cloud_name).ok_or_else(|| {
        cx.misconfigured(Misconfiguration::InvalidParam {
            name: "cloud".into(),
            value: cloud_name.clone(),
            hint: "one of global, usgov, usgovdod, china",
        })
    })?;
    let https = |h: &str| Url::parse(&format!("https://{h}")).expect("static host");
    Ok(match endpoint {
        Some(url) if login_override.is_some() => (url, https(cloud.graph), cloud.graph),
        Some(url) => (url.clone(), url, cloud.graph),
        None => (https(cloud.login), https(cloud.graph), cloud.graph),
    })
}

fn tenant<'a>(cx: &'a Cx<'_>) -> Result<&'a str, VerifyError> {
    let tenant = cx.param("tenantId").ok_or_else(|| {
        cx.misconfigured(Misconfiguration::MissingParam {
            name: "tenantId",
            hint: "the Entra tenant id (GUID) or a verified domain",
        })
    })?;
    if !tenant
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(cx.misconfigured(Misconfiguration::InvalidParam {
            name: "tenantId".into(),
            value: tenant.into(),
            hint: "a tenant GUID or domain name",
        }));
    }
    Ok(tenant)
}

/// The sites to probe: every required `site:<id>` and `params.siteId`.
fn sites<'a>(cx: &'a Cx<'_>) -> Result<BTreeSet<&'a str>, VerifyError> {
    let sites: BTreeSet<&str> = cx
        .required
        .iter()
        .filter_map(|r| r.strip_prefix("site:"))
        .chain(cx.param("siteId"))
        .collect();
    if let Some(bad) = sites
        .iter()
        .find(|s| s.is_empty() || s.contains(['?', '#']))
    {
        return Err(cx.misconfigured(Misconfiguration::InvalidPermission {
            value: format!("site:{bad}"),
            hint: "a site id (host,collection-guid,site-guid), {hostname}:/{path} or root",
        }));
    }
    Ok(sites)
}

/// AADSTS codes (Microsoft's `error_codes`) that decide the class on their own; Microsoft
/// says to key on these and `error`, never on the description. Returns the first known code.
pub(crate) fn classify_aadsts(codes: &[u64]) -> Option<(Class, u64)> {
    codes.iter().find_map(|&code| {
        let class = match code {
            // Refresh token expired by inactivity, revoked, sign-in frequency, SPA cap, invalid.
            700082 | 70008 | 50173 | 70043 | 700084 | 70000 => Class::Dead(DeadCause::InvalidGrant),
            // Invalid or expired client secret, invalid client.
            7000215 | 7000222 | 70002 => Class::Dead(DeadCause::InvalidClient),
            // App not found in the tenant, or disabled.
            700016 | 7000112 => Class::Dead(DeadCause::AppDisconnected),
            // Consent missing, misconfigured permissions, Conditional Access block, bad scope.
            65001 | 650056 | 650057 | 53003 | 70011 => Class::Denied,
            // Tenant throttling.
            90055 => Class::Transient(TransientKind::RateLimited),
            // Request budget exceeded, service problems, loop detected.
            90024 | 90006 | 90033 | 50196 => Class::Transient(TransientKind::Unavailable),
            _ => return None,
        };
        Some((class, code))
    })
}

impl ProviderApi for Microsoft {
    const AUTH: &'static [AuthType] = &[AuthType::ClientCredentials, AuthType::RefreshToken];
    const MAY_ROTATE_REFRESH_TOKENS: bool = false;
    const PARAMS: &'static [&'static str] = &["tenantId", "cloud", "siteId", "scope"];

    fn token_error_class(&self, body: &OAuthErrorBody) -> Option<(Class, String)> {
        let (class, aadsts) = classify_aadsts(&body.error_codes)?;
        let error = sanitize_code(&body.error).unwrap_or_default();
        Some((class, format!("{error}/AADSTS{aadsts}")))
    }

    /// Every entry compares case-insensitively: permission names (Entra treats them so) and
    /// `site:<id>` (a host name and two GUIDs, none case-sensitive).
    fn satisfies(&self, granted: &BTreeSet<String>, required: &str) -> bool {
        granted.iter().any(|g| g.eq_ignore_ascii_case(required))
    }

    fn validate(&self, cx: &Cx<'_>) -> Result<(), VerifyError> {
        hosts(cx)?;
        tenant(cx)?;
        sites(cx)?;
        Ok(())
    }

    async fn token_config(&self, cx: &Cx<'_>) -> Result<TokenConfig, VerifyError> {
        let (login, _, graph_host) = hosts(cx)?;
        let tenant = tenant(cx)?;
        let scopes = match (cx.param("scope"), cx.spec.auth) {
            (Some(scope), _) => scope.split_whitespace().map(str::to_owned).collect(),
            (None, AuthType::ClientCredentials) => vec![format!("https://{graph_host}/.default")],
            // A refresh keeps the scopes of the original grant when none are requested.
            (None, _) => Vec::new(),
        };
        Ok(TokenConfig {
            url: join(&login, &format!("/{tenant}/oauth2/v2.0/token")),
            client_auth: ClientAuth::Body,
            scopes,
            introspection_url: None,
        })
    }

    async fn probe(&self, cx: &Cx<'_>, access: Access<'_>) -> Result<Probe, VerifyError> {
        let provider = cx.provider();
        let (_, graph, _) = hosts(cx)?;
        let token = access.token(provider)?;
        let app_only = cx.spec.auth == AuthType::ClientCredentials;
        let get = |call, path: String| {
            let request = cx.http.bearer(Method::GET, join(&graph, &path), token);
            cx.http.send(call, request)
        };

        let claims = jwt::claims(token);
        if claims.is_none() {
            tracing::debug!(
                "access token is not a readable JWT; treating it as carrying no claims"
            );
        }
        let mut permissions = BTreeSet::new();
        let mut has_roles = false;
        if let Some(claims) = &claims {
            if let Some(roles) = claims.get("roles").and_then(|r| r.as_array()) {
                has_roles = !roles.is_empty();
                permissions.extend(roles.iter().filter_map(|r| r.as_str()).map(str::to_owned));
            }
            if let Some(scp) = jwt::string(claims, "scp") {
                permissions.extend(scp.split_whitespace().map(str::to_owned));
            }
        }

        let account = if app_only {
            // The app is the account. /organization needs Directory.Read.All, which a sync app
            // may lack: a 403 there only means we learn the name from the token instead.
            let reply = get("GET /v1.0/organization", "/v1.0/organization".into()).await?;
            let org = match reply.status.as_u16() {
                200 => reply
                    .json::<Collection<Org>>(provider)?
                    .value
                    .into_iter()
                    .next(),
                403 => None,
                _ => return Err(graph_error(cx, &reply)),
            };
            let claim = |name| claims.as_ref().and_then(|c| jwt::string(c, name));
            Account {
                id: claim("appid")
                    .or(claim("azp"))
                    .map(str::to_owned)
                    .or_else(|| org.as_ref().map(|o| o.id.clone()))
                    .unwrap_or_default(),
                name: claim("app_displayname")
                    .map(str::to_owned)
                    .or_else(|| org.map(|o| o.display_name))
                    .unwrap_or_default(),
            }
        } else {
            let reply = get("GET /v1.0/me", "/v1.0/me".into()).await?;
            if !reply.is_success() {
                return Err(graph_error(cx, &reply));
            }
            let me: Me = reply.json(provider)?;
            Account {
                id: me.id,
                name: me
                    .user_principal_name
                    .or(me.display_name)
                    .unwrap_or_default(),
            }
        };

        // Microsoft: app-only tokens may carry no `roles` at all; such an app can do nothing.
        if app_only && claims.is_some() && !has_roles {
            return Err(VerifyError::PermissionDenied {
                provider,
                missing: super::permissions::missing(self, &permissions, cx.required),
                account: Some(account),
                granted: permissions,
                call: None,
                status: None,
                code: Some("no_roles".into()),
            });
        }

        for site in sites(cx)? {
            let reply = get("GET /v1.0/sites/{id}", format!("/v1.0/sites/{site}")).await?;
            match reply.status.as_u16() {
                200 => {
                    permissions.insert(format!("site:{site}"));
                }
                403 | 404 => {}
                _ => return Err(graph_error(cx, &reply).with_account(&account)),
            }
        }
        Ok(Probe {
            account,
            permissions,
            credential_expires_at: None,
        })
    }
}

/// A Graph error: `{"error":{"code","message","innerError"}}`; 401 dead, 403 denied, 429/5xx
/// transient with Retry-After.
fn graph_error(cx: &Cx<'_>, reply: &Reply) -> VerifyError {
    let code = serde_json::from_slice::<GraphError>(&reply.body)
        .ok()
        .and_then(|e| sanitize_code(&e.error.code));
    api_status(cx.provider(), reply, DeadCause::TokenRejected, code, None)
}

#[derive(Deserialize)]
struct GraphError {
    error: GraphErrorBody,
}

#[derive(Deserialize)]
struct GraphErrorBody {
    code: String,
}

#[derive(Deserialize)]
struct Collection<T> {
    value: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Org {
    id: String,
    #[serde(default)]
    display_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Me {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    user_principal_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{spec, with_cx};

    fn mapped(endpoint: Option<&str>, cloud: Option<&str>) -> (String, String, String) {
        let mut params = vec![("tenantId", "t")];
        params.extend(cloud.map(|c| ("cloud", c)));
        let spec = spec("microsoft", "ClientCredentials", endpoint, &params);
        with_cx(&spec, |cx| {
            let (login, graph, resource) = hosts(cx).unwrap();
            (login.to_string(), graph.to_string(), resource.to_owned())
        })
    }

    #[test]
    fn clouds_pick_login_and_graph_hosts_and_the_default_scope_resource() {
        let m = |l: &str, g: &str, r: &str| (l.to_owned(), g.to_owned(), r.to_owned());
        assert_eq!(
            mapped(None, None),
            m(
                "https://login.microsoftonline.com/",
                "https://graph.microsoft.com/",
                "graph.microsoft.com"
            )
        );
        assert_eq!(
            mapped(None, Some("usgov")),
            m(
                "https://login.microsoftonline.us/",
                "https://graph.microsoft.us/",
                "graph.microsoft.us"
            )
        );
        assert_eq!(
            mapped(None, Some("usgovdod")),
            m(
                "https://login.microsoftonline.us/",
                "https://dod-graph.microsoft.us/",
                "dod-graph.microsoft.us"
            )
        );
        assert_eq!(
            mapped(None, Some("china")).1,
            "https://microsoftgraph.chinacloudapi.cn/"
        );
    }

    #[test]
    fn a_login_host_endpoint_replaces_login_only_and_implies_the_cloud() {
        let (login, graph, resource) = mapped(Some("https://login.microsoftonline.us"), None);
        assert_eq!(login, "https://login.microsoftonline.us/");
        assert_eq!(graph, "https://graph.microsoft.us/");
        assert_eq!(resource, "graph.microsoft.us");
        let (_, graph, _) = mapped(Some("https://login.chinacloudapi.cn"), None);
        assert_eq!(graph, "https://microsoftgraph.chinacloudapi.cn/");
        let (_, graph, _) = mapped(Some("https://login.microsoftonline.us"), Some("usgovdod"));
        assert_eq!(graph, "https://dod-graph.microsoft.us/");
    }

    #[test]
    fn any_other_endpoint_serves_login_and_graph_but_the_scope_keeps_the_cloud() {
        let (login, graph, resource) = mapped(Some("http://localhost:9000/ms"), Some("usgov"));
        assert_eq!(login, "http://localhost:9000/ms");
        assert_eq!(graph, "http://localhost:9000/ms");
        assert_eq!(resource, "graph.microsoft.us");
    }

    #[test]
    fn aadsts_codes_decide_before_the_error_field() {
        assert_eq!(
            classify_aadsts(&[1, 700082]),
            Some((Class::Dead(DeadCause::InvalidGrant), 700082))
        );
        assert_eq!(classify_aadsts(&[65001]), Some((Class::Denied, 65001)));
        assert_eq!(
            classify_aadsts(&[90055]).map(|c| c.0),
            Some(Class::Transient(TransientKind::RateLimited))
        );
        assert_eq!(classify_aadsts(&[12345]), None);
    }
}
