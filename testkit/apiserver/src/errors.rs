//! Failures as kube-apiserver reports them: a `Status` object (kind Status, apiVersion v1,
//! status Failure) with the HTTP code, a machine-readable reason and details, so clients
//! (kube-rs `Error::Api`, kubectl) see exactly what a real cluster would send.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// One field-level cause of a `422 Invalid`, as listed in `details.causes`.
#[derive(Clone, Debug)]
pub(crate) struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

/// An error response on its way to becoming a `Status` body.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// `details` naming an object: kube-apiserver omits an empty group.
fn object_details(rt: &ResourceType, name: &str) -> Value {
    let mut details = json!({"name": name, "kind": rt.plural});
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    details
}

fn summary(causes: &[Cause]) -> String {
    let summary: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if summary.len() == 1 {
        summary[0].clone()
    } else {
        format!("[{}]", summary.join(", "))
    }
}

fn causes_json(causes: Vec<Cause>) -> Vec<Value> {
    causes
        .into_iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect()
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.group_resource()),
        )
        .with_details(object_details(rt, name))
    }

    pub(crate) fn namespace_not_found(namespace: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .with_details(json!({"name": namespace, "kind": "namespaces"}))
    }

    pub(crate) fn namespace_terminating(namespace: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            ),
        )
    }

    /// A path that names no resource: kube-apiserver does not repeat the path.
    pub(crate) fn resource_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.group_resource()),
        )
        .with_details(object_details(rt, name))
    }

    pub(crate) fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                rt.group_resource()
            ),
        )
        .with_details(object_details(rt, name))
    }

    /// A 409 Conflict with a message of its own (server-side apply field conflicts).
    pub(crate) fn conflict_message(message: String) -> Self {
        Self::new(409, "Conflict", message)
    }

    pub(crate) fn stale(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub(crate) fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let message = format!(
            "{} \"{name}\" is invalid: {}",
            rt.qualified_kind(),
            summary(&causes)
        );
        let mut details = json!({"name": name, "kind": rt.kind, "causes": causes_json(causes)});
        if !rt.group.is_empty() {
            details["group"] = json!(rt.group);
        }
        Self::new(422, "Invalid", message).with_details(details)
    }

    /// A `422 Invalid` for an update that must carry a resourceVersion (custom resources and
    /// CRDs do not allow unconditional updates). kube-apiserver names the resource, not the
    /// kind, here.
    pub(crate) fn resource_version_required(rt: &ResourceType, name: &str) -> Self {
        let causes = vec![Cause {
            reason: "FieldValueInvalid",
            field: "metadata.resourceVersion".into(),
            message: "Invalid value: 0: must be specified for an update".into(),
        }];
        let message = format!(
            "{} \"{name}\" is invalid: {}",
            rt.group_resource(),
            summary(&causes)
        );
        let mut details = object_details(rt, name);
        details["causes"] = json!(causes_json(causes));
        Self::new(422, "Invalid", message).with_details(details)
    }

    /// A `422 Invalid` for request options (`ListOptions`, `PatchOptions`, ...).
    pub(crate) fn invalid_options(kind: &str, causes: Vec<Cause>) -> Self {
        let message = format!("{kind}.meta.k8s.io \"\" is invalid: {}", summary(&causes));
        Self::new(422, "Invalid", message).with_details(
            json!({"group": "meta.k8s.io", "kind": kind, "causes": causes_json(causes)}),
        )
    }

    /// A JSON patch whose `test` failed or whose path does not exist.
    pub(crate) fn patch_failed() -> Self {
        Self::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
        .with_details(json!({}))
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn too_large_resource_version(requested: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        )
        .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}))
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/json-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    /// The error an injected fault answers with: the reason kube-apiserver gives that code.
    pub(crate) fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        let mut err = Self::new(code, reason, format!("injected fault: {reason}"));
        if code == 429 || code == 503 {
            err.details = Some(json!({"retryAfterSeconds": 1}));
        }
        err
    }

    /// The `Status` body.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// The `Status` a successful immediate delete returns.
pub(crate) fn deleted_status(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut details = object_details(rt, name);
    details["uid"] = json!(uid);
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}
