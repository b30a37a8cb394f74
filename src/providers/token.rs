//! OAuth2 token requests on the `oauth2` crate, with our reqwest client plugged in through
//! oauth2's `AsyncHttpClient` (its own reqwest feature pins an older reqwest).
//!
//! oauth2 reads every non-200 answer as an error body and drops the status and headers, so
//! the transport answers 429 and 5xx itself (transient, whatever the body says, with
//! Retry-After) and remembers the status of anything else for classification.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use ::oauth2::basic::{BasicRevocationErrorResponse, BasicTokenType};
use ::oauth2::{
    AccessToken, AsyncHttpClient, ClientId, ClientSecret, EmptyExtraTokenFields, EndpointNotSet,
    ExtraTokenFields, HttpRequest, HttpResponse, IntrospectionUrl, RefreshToken, RequestTokenError,
    Scope, StandardRevocableToken, StandardTokenIntrospectionResponse, StandardTokenResponse,
    TokenIntrospectionResponse, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use super::classify::{OAuthErrorBody, token_error};
use super::error::{Call, DeadCause, TransientKind, VerifyError, sanitize_code};
use super::field::Field;
use super::grant::{Grant, TOKEN_CALL};
use super::http::Http;
use super::{ClientAuth, Cx, ProviderApi, Tokens};
use crate::api::AuthType;
use crate::secret::Redacted;

const INTROSPECTION_CALL: Call = "POST introspection endpoint";

/// Token response fields beyond RFC 6749 that a probe needs (Salesforce).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ExtraFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_url: Option<String>,
}

impl ExtraTokenFields for ExtraFields {}

type TokenResp = StandardTokenResponse<ExtraFields, BasicTokenType>;
type Introspection = StandardTokenIntrospectionResponse<EmptyExtraTokenFields, BasicTokenType>;
type Client<HasIntrospection, HasToken> = ::oauth2::Client<
    OAuthErrorBody,
    TokenResp,
    Introspection,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    HasIntrospection,
    EndpointNotSet,
    HasToken,
>;

/// Obtains tokens with the client-credentials or refresh-token grant; once more when the
/// provider says its cached endpoints moved.
#[instrument(skip_all, fields(provider = %cx.provider(), auth = %cx.spec.auth))]
pub(crate) async fn obtain<P: ProviderApi + Sync>(
    api: &P,
    cx: &Cx<'_>,
) -> Result<Grant, VerifyError> {
    match obtain_once(api, cx).await {
        Err(e) if api.endpoints_moved(cx, &e) => {
            tracing::debug!("token endpoint moved; trying the rediscovered one");
            obtain_once(api, cx).await
        }
        outcome => outcome,
    }
}

async fn obtain_once<P: ProviderApi + Sync>(api: &P, cx: &Cx<'_>) -> Result<Grant, VerifyError> {
    let provider = cx.provider();
    let config = api.token_config(cx).await?;
    let client =
        client(cx, config.client_auth)?.set_token_uri(TokenUrl::from_url(config.url.clone()));
    let scopes = config.scopes.iter().map(|s| Scope::new(s.clone()));
    let transport = Transport::new(&cx.http, TOKEN_CALL);
    let spent = match cx.spec.auth {
        AuthType::RefreshToken => Some(cx.need(Field::RefreshToken)?),
        _ => None,
    };
    let result = match spent {
        Some(refresh_token) => {
            let refresh_token = RefreshToken::new(refresh_token.expose().to_owned());
            client
                .exchange_refresh_token(&refresh_token)
                .add_scopes(scopes)
                .request_async(&transport)
                .await
        }
        None => {
            client
                .exchange_client_credentials()
                .add_scopes(scopes)
                .request_async(&transport)
                .await
        }
    };
    let response =
        result.map_err(|e| transport.classify(e, &config.scopes, |b| api.token_error_class(b)))?;
    let new_refresh = response
        .refresh_token()
        .map(|t| Redacted::new(t.secret().as_str()))
        .filter(|t| !t.is_empty() && Some(t) != spent);
    if new_refresh.is_some() {
        tracing::debug!("provider issued a new refresh token");
    }
    let access_token = Redacted::new(response.access_token().secret().as_str());
    let token_type = response.token_type().as_ref().to_owned();
    // Both are written to the target Secret: an empty token is no token, and one larger than
    // any credential value would make the Secret too large to write. (A new refresh token is
    // not judged by size: refusing it here would lose it.)
    let oversized = [access_token.expose(), token_type.as_str()]
        .iter()
        .any(|v| v.len() > super::MAX_VALUE_BYTES);
    if access_token.is_empty() || oversized {
        return Err(VerifyError::transient(
            provider,
            TOKEN_CALL,
            TransientKind::Malformed,
            Some(200),
            None,
            None,
        ));
    }
    Ok(Grant {
        tokens: Tokens {
            access_token: Some(access_token),
            token_type: Some(token_type),
            expires_at: response.expires_in().and_then(|d| {
                cx.http
                    .now()
                    .checked_add(jiff::SignedDuration::try_from(d).ok()?)
                    .ok()
            }),
            refresh_token: new_refresh,
        },
        scopes: response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect()),
        instance_url: response.extra_fields().instance_url.clone(),
        introspection_url: config.introspection_url,
        client_auth: config.client_auth,
    })
}

/// What RFC 7662 introspection said about an active token.
pub(crate) struct Introspected {
    pub scopes: Option<BTreeSet<String>>,
    pub subject: Option<String>,
    pub username: Option<String>,
    pub client_id: Option<String>,
}

/// RFC 7662 introspection of the access token, authenticated as the client. An inactive token
/// is dead.
#[instrument(skip_all, fields(provider = %cx.provider()))]
pub(crate) async fn introspect<P: ProviderApi>(
    api: &P,
    cx: &Cx<'_>,
    url: &reqwest::Url,
    client_auth: ClientAuth,
    access_token: &Redacted,
) -> Result<Introspected, VerifyError> {
    let client =
        client(cx, client_auth)?.set_introspection_url(IntrospectionUrl::from_url(url.clone()));
    let token = AccessToken::new(access_token.expose().to_owned());
    let transport = Transport::new(&cx.http, INTROSPECTION_CALL);
    let response = client
        .introspect(&token)
        .set_token_type_hint("access_token")
        .request_async(&transport)
        .await
        .map_err(|e| transport.classify(e, &[], |b| api.token_error_class(b)))?;
    if !response.active() {
        return Err(VerifyError::dead(
            cx.provider(),
            INTROSPECTION_CALL,
            Some(200),
            Some("inactive".into()),
            DeadCause::TokenRejected,
        ));
    }
    Ok(Introspected {
        scopes: response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect()),
        subject: response.sub().map(str::to_owned),
        username: response.username().map(str::to_owned),
        client_id: response.client_id().map(|c| c.as_str().to_owned()),
    })
}

fn client(
    cx: &Cx<'_>,
    auth: ClientAuth,
) -> Result<Client<EndpointNotSet, EndpointNotSet>, VerifyError> {
    let client_id = cx.need(Field::ClientId)?;
    let mut client =
        Client::new(ClientId::new(client_id.expose().to_owned())).set_auth_type(match auth {
            ClientAuth::Body => ::oauth2::AuthType::RequestBody,
            ClientAuth::Basic => ::oauth2::AuthType::BasicAuth,
        });
    let secret = match cx.spec.auth {
        AuthType::ClientCredentials => Some(cx.need(Field::ClientSecret)?),
        _ => cx.material.client_secret.as_ref().filter(|s| !s.is_empty()),
    };
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
    }
    Ok(client)
}

/// oauth2's HTTP client: our reqwest client, remembering the status oauth2 would drop.
struct Transport<'a> {
    http: &'a Http,
    call: Call,
    status: Mutex<Option<StatusCode>>,
}

/// A failure the transport already classified.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Classified(VerifyError);

impl<'a> Transport<'a> {
    fn new(http: &'a Http, call: Call) -> Self {
        Self {
            http,
            call,
            status: Mutex::new(None),
        }
    }

    fn status(&self) -> Option<StatusCode> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps oauth2's error onto our classes. oauth2's own error text is never used: its
    /// `Parse` variant carries the response body.
    fn classify(
        &self,
        error: RequestTokenError<Classified, OAuthErrorBody>,
        scopes: &[String],
        own_codes: impl FnOnce(&OAuthErrorBody) -> Option<(super::classify::Class, String)>,
    ) -> VerifyError {
        let provider = self.http.provider;
        let status = self.status().map(|s| s.as_u16());
        match error {
            RequestTokenError::Request(Classified(e)) => e,
            RequestTokenError::ServerResponse(body) => {
                let own = own_codes(&body);
                token_error(provider, self.call, status, &body, scopes, own)
            }
            // A body that is not the JSON we expect: on success a malformed answer (transient);
            // on a 4xx the endpoint refused the credential without a parseable code (Procore's
            // refresh-token error shape is UNCONFIRMED, so this branch is how it is classified).
            RequestTokenError::Parse(..) | RequestTokenError::Other(_) => match status {
                // Redirects are not followed: a token endpoint that redirects is misconfigured.
                Some(s) if (300..400).contains(&s) => VerifyError::misconfigured(
                    provider,
                    super::Misconfiguration::RequestRejected {
                        call: self.call,
                        status,
                        code: None,
                    },
                ),
                Some(s) if (400..500).contains(&s) => {
                    VerifyError::dead(provider, self.call, status, None, DeadCause::Rejected)
                }
                _ => VerifyError::transient(
                    provider,
                    self.call,
                    TransientKind::Malformed,
                    status,
                    None,
                    None,
                ),
            },
        }
    }
}

impl<'c> AsyncHttpClient<'c> for Transport<'_> {
    type Error = Classified;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Classified>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let provider = self.http.provider;
            let (parts, body) = request.into_parts();
            let url = reqwest::Url::parse(&parts.uri.to_string()).map_err(|_| {
                Classified(VerifyError::transient(
                    provider,
                    self.call,
                    TransientKind::Connection,
                    None,
                    None,
                    None,
                ))
            })?;
            let request = self
                .http
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body);
            let reply = self
                .http
                .send(self.call, request)
                .await
                .map_err(Classified)?;
            *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(reply.status);
            if reply.status == StatusCode::TOO_MANY_REQUESTS || reply.status.is_server_error() {
                let code = serde_json::from_slice::<OAuthErrorBody>(&reply.body)
                    .ok()
                    .and_then(|b| sanitize_code(&b.error));
                let kind = if reply.status == StatusCode::TOO_MANY_REQUESTS {
                    TransientKind::RateLimited
                } else {
                    TransientKind::Unavailable
                };
                return Err(Classified(VerifyError::transient(
                    provider,
                    self.call,
                    kind,
                    Some(reply.status.as_u16()),
                    code,
                    reply.retry_after(None),
                )));
            }
            let mut response = http::Response::builder().status(reply.status);
            if let Some(headers) = response.headers_mut() {
                *headers = reply.headers;
            }
            response.body(reply.body.to_vec()).map_err(|_| {
                Classified(VerifyError::transient(
                    provider,
                    self.call,
                    TransientKind::Malformed,
                    None,
                    None,
                    None,
                ))
            })
        })
    }
}
