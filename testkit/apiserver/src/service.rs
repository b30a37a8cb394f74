//! The request handler, as a tower `Service`: logs the request, applies injected faults,
//! routes it to discovery or to the store, and renders objects, lists (full or
//! PartialObjectMetadata) and `Status` errors as kube-apiserver would.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::faults::{Incoming, Injected, RequestRecord};
use crate::patch::PatchType;
use crate::render::Presentation;
use crate::routes::{self, Query, ResourcePath, Route};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{
    DeleteOptions, Filter, ListQuery, PatchOptions, Propagation, WatchStart, Writer,
};
use crate::watch::{self, WatchOptions};
use crate::{ApiServer, Inner, Verb, lock};

/// The response body type: whole JSON documents, or a stream of watch events.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> tower::Service<Request<B>> for ApiServer
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(handle(inner, req).await) })
    }
}

pub(crate) fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into()).boxed_unsync()
}

fn json_response(code: u16, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("static response parts are valid")
}

fn error_response(err: &ApiError) -> Response<ResponseBody> {
    let mut response = json_response(err.code, &err.to_status());
    // kube-apiserver sends the Status's retryAfterSeconds as a Retry-After header too.
    if let Some(secs) = err
        .details
        .as_ref()
        .and_then(|d| d.get("retryAfterSeconds"))
        .and_then(Value::as_u64)
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    response
}

fn header_str(parts: &http::request::Parts, name: header::HeaderName) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle<B>(inner: Arc<Inner>, req: Request<B>) -> Response<ResponseBody>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let query = Query::parse(parts.uri.query());
    let route = routes::parse(parts.uri.path());
    let verb = routes::verb(&parts.method, &route, &query);
    lock(&inner.log).push(RequestRecord {
        method: parts.method.clone(),
        path: target.clone(),
        verb,
        content_type: header_str(&parts, header::CONTENT_TYPE),
        accept: header_str(&parts, header::ACCEPT),
        user_agent: header_str(&parts, header::USER_AGENT),
        timestamp: jiff::Timestamp::now(),
    });
    let user_agent = header_str(&parts, header::USER_AGENT);
    let incoming = Incoming {
        method: &parts.method,
        verb,
        path: &target,
        user_agent: user_agent.as_deref(),
    };
    let latency = lock(&inner.faults).latency(&incoming);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = lock(&inner.faults).take_failure(&incoming) {
        return error_response(&ApiError::injected(code));
    }
    let chaos = lock(&inner.faults).take_chaos(&incoming);
    if let Some(Injected::Refuse(code)) = chaos {
        return error_response(&ApiError::injected(code));
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "reading the request body: {}",
                e.into()
            )));
        }
    };
    let response = match dispatch(&inner, &parts, route, verb, &query, &body) {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    match chaos {
        Some(Injected::AfterServing(code)) => error_response(&ApiError::injected(code)),
        _ => response,
    }
}

fn dispatch(
    inner: &Arc<Inner>,
    parts: &http::request::Parts,
    route: Route,
    verb: Verb,
    query: &Query,
    body: &Bytes,
) -> Result<Response<ResponseBody>, ApiError> {
    if !matches!(route, Route::Resource(_)) && parts.method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "{} is not supported on discovery endpoints",
            parts.method
        )));
    }
    let state = inner.state();
    let found = |doc: Option<Value>| {
        doc.map(|d| json_response(200, &d))
            .ok_or_else(ApiError::resource_not_found)
    };
    match route {
        Route::Version => Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-reconnect-standin",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "", "compiler": "rust", "platform": "linux/amd64",
            }),
        )),
        Route::CoreVersions => Ok(json_response(200, &state.registry.core_versions())),
        Route::Groups => Ok(json_response(200, &state.registry.group_list())),
        Route::Group(group) => found(state.registry.group(&group)),
        Route::ResourceList { group, version } => {
            found(state.registry.resource_list(&group, &version))
        }
        Route::OpenApiIndex => Ok(json_response(200, &state.registry.openapi_index())),
        Route::OpenApi { group, version } => found(state.registry.openapi(&group, &version)),
        Route::Unknown => Err(ApiError::resource_not_found()),
        Route::Resource(path) => {
            drop(state);
            resource(inner, parts, path, verb, query, body)
        }
    }
}

fn resource(
    inner: &Arc<Inner>,
    parts: &http::request::Parts,
    path: ResourcePath,
    verb: Verb,
    query: &Query,
    body: &Bytes,
) -> Result<Response<ResponseBody>, ApiError> {
    let not_found = ApiError::resource_not_found;
    let rt = inner
        .state()
        .registry
        .find(&path.group, &path.version, &path.plural)
        .ok_or_else(not_found)?;
    if !rt.namespaced && path.namespace.is_some() {
        return Err(not_found());
    }
    let status_only = match path.subresource.as_deref() {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(_) => return Err(not_found()),
    };
    if query.get("dryRun").is_some() {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the reconnect stand-in",
        ));
    }
    let accept = header_str(parts, header::ACCEPT).unwrap_or_default();
    let view = Presentation::new(rt.clone(), &path.version, &accept);
    let ns = path.namespace.as_deref();
    let name = path.name.as_deref();
    let parse_body = || -> Result<Value, ApiError> {
        // kubectl's typed clients send protobuf for built-in types and do not fall back to
        // JSON: the kinds `kubectl create` sends are decoded, anything else is a 415.
        let content_type = header_str(parts, header::CONTENT_TYPE).unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if media == crate::protobuf::MEDIA_TYPE {
            return crate::protobuf::decode(body).map_err(|why| {
                let mut err = ApiError::unsupported_media_type(&content_type);
                err.message = format!("{}: {why}", err.message);
                err
            });
        }
        if !media.is_empty() && media != "application/json" && media != "*/*" {
            return Err(ApiError::unsupported_media_type(&content_type));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    };
    let filter = || -> Result<Filter, ApiError> {
        Ok(Filter {
            resource: rt.store_key(),
            namespace: ns.map(str::to_string),
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(
                query.get("fieldSelector").unwrap_or_default(),
                &rt.plural,
            )?,
        })
    };
    let writer = || {
        Writer::new(
            query.get("fieldManager"),
            header_str(parts, header::USER_AGENT).as_deref(),
            rt.api_version(&path.version),
        )
    };
    // fieldValidation=Strict (what `kubectl apply` sends): unknown fields of a custom resource
    // are an error instead of being pruned.
    if query.get("fieldValidation") == Some("Strict")
        && let Some(schema) = &rt.schema
        && matches!(verb, Verb::Create | Verb::Update | Verb::Patch)
    {
        let content_type = header_str(parts, header::CONTENT_TYPE).unwrap_or_default();
        let submitted = match PatchType::from_content_type(&content_type) {
            Some(PatchType::Json) => None,
            Some(kind) if verb == Verb::Patch => crate::patch::parse_body(kind, body).ok(),
            _ => serde_json::from_slice::<Value>(body).ok(),
        };
        let unknown = submitted
            .map(|doc| crate::validation::unknown_fields(&schema.raw, &doc))
            .unwrap_or_default();
        if !unknown.is_empty() {
            let listed: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            let version = &path.version;
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                listed.join(", "),
                kind = rt.kind,
            )));
        }
    }
    match (verb, name) {
        (Verb::Get, Some(name)) => {
            let object = inner.state().get(&rt, ns, name)?;
            Ok(json_response(200, &view.object(object)))
        }
        (Verb::List, None) => list(inner, &view, filter()?, query),
        (Verb::Watch, None) => start_watch(inner, view, filter()?, query),
        (Verb::Create, None) => {
            let mut state = inner.state();
            let object = state.create(&rt, ns, parse_body()?)?;
            state.record_write(&rt, &writer(), false, None, &object);
            drop(state);
            Ok(json_response(201, &view.object(object)))
        }
        (Verb::Update, Some(name)) => {
            let body = parse_body()?;
            let unconditional = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if unconditional && !rt.allows_unconditional_update() {
                return Err(ApiError::resource_version_required(&rt, name));
            }
            let mut state = inner.state();
            let old = state.get(&rt, ns, name).ok();
            let object = state.update(&rt, ns, name, body, status_only)?;
            state.record_write(&rt, &writer(), status_only, old.as_ref(), &object);
            drop(state);
            Ok(json_response(200, &view.object(object)))
        }
        (Verb::Patch, Some(name)) => {
            let content_type = header_str(parts, header::CONTENT_TYPE).unwrap_or_default();
            let kind = PatchType::from_content_type(&content_type)
                .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
            let options = PatchOptions {
                field_manager: query.get("fieldManager").map(str::to_string),
                force: query.flag("force"),
                writer: writer(),
            };
            let written = inner
                .state()
                .patch(&rt, ns, name, kind, body, &options, status_only)?;
            Ok(json_response(
                if written.created { 201 } else { 200 },
                &view.object(written.body),
            ))
        }
        (Verb::Delete, Some(name)) => {
            let options = delete_options(body, query)?;
            let result = inner.state().delete(&rt, ns, name, &options)?;
            let result = if result.get("kind") == Some(&json!("Status")) {
                result
            } else {
                view.object(result)
            };
            Ok(json_response(200, &result))
        }
        (Verb::DeleteCollection, None) => {
            // Like kube-apiserver: the list of what was deleted.
            let mut state = inner.state();
            let deleted = state.delete_collection(&filter()?);
            let rv = state.resource_version();
            drop(state);
            Ok(json_response(
                200,
                &view.list(deleted, json!({"resourceVersion": rv.to_string()})),
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{} is not allowed on {}",
            parts.method,
            parts.uri.path()
        ))),
    }
}

fn delete_options(body: &Bytes, query: &Query) -> Result<DeleteOptions, ApiError> {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions are not valid JSON: {e}")))?
    };
    let text = |pointer: &str| {
        options
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let policy =
        text("/propagationPolicy").or_else(|| query.get("propagationPolicy").map(str::to_string));
    let propagation = match policy.as_deref() {
        Some("Orphan") => Propagation::Orphan,
        Some("Foreground") => Propagation::Foreground,
        Some("Background") => Propagation::Background,
        Some(other) => {
            return Err(ApiError::invalid_options(
                "DeleteOptions",
                vec![crate::errors::Cause {
                    reason: "FieldValueNotSupported",
                    field: "propagationPolicy".into(),
                    message: format!(
                        "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                }],
            ));
        }
        None if options.get("orphanDependents") == Some(&json!(true))
            || query.get("orphanDependents") == Some("true") =>
        {
            Propagation::Orphan
        }
        None => Propagation::Background,
    };
    Ok(DeleteOptions {
        precondition_uid: text("/preconditions/uid"),
        precondition_rv: text("/preconditions/resourceVersion"),
        propagation,
    })
}

fn list(
    inner: &Arc<Inner>,
    view: &Presentation,
    filter: Filter,
    query: &Query,
) -> Result<Response<ResponseBody>, ApiError> {
    let list_query = ListQuery {
        limit: query.get("limit").and_then(|l| l.parse().ok()),
        continue_token: query
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: query.get("resourceVersion").map(str::to_string),
        resource_version_match: query
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .map(str::to_string),
    };
    let page = inner.state().list(&filter, &list_query)?;
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = page.continue_token {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    Ok(json_response(200, &view.list(page.items, metadata)))
}

fn start_watch(
    inner: &Arc<Inner>,
    view: Presentation,
    filter: Filter,
    query: &Query,
) -> Result<Response<ResponseBody>, ApiError> {
    let bookmarks = query.flag("allowWatchBookmarks");
    let start = if query.flag("sendInitialEvents") {
        if query.get("resourceVersionMatch") != Some("NotOlderThan") || !bookmarks {
            return Err(ApiError::bad_request(
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true",
            ));
        }
        WatchStart::Now {
            initial_events_end: true,
        }
    } else {
        match query
            .get("resourceVersion")
            .filter(|rv| !rv.is_empty() && *rv != "0")
        {
            None => WatchStart::Now {
                initial_events_end: false,
            },
            Some(rv) => {
                WatchStart::After(rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}"))
                })?)
            }
        }
    };
    let (id, rx) = inner.state().watch(filter, start);
    let options = WatchOptions {
        view,
        bookmarks,
        timeout: query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(std::time::Duration::from_secs),
        bookmark_interval: *lock(&inner.bookmark_interval),
    };
    let body = watch::stream_body(inner.clone(), id, rx, options);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static response parts are valid"))
}
