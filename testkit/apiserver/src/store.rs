//! The object store: every object as JSON under (resource, namespace, name), one global
//! resourceVersion counter, a bounded history of change events (for watch resumption, exact
//! and paginated lists) and the registered watches. All API semantics that need the whole
//! state at once live here: optimistic concurrency, generation, status subresource rules,
//! finalizers, garbage collection by ownerReferences and namespace termination.
//! Callers hold the mutex around a `State` for the duration of one request, never across
//! an await.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use kube_cel::Validator;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::errors::{ApiError, Cause, deleted_status};
use crate::ownership::{self, FieldPath, FieldSet};
use crate::patch::{self, PatchType};
use crate::resources::{CRD_GROUP, CRD_PLURAL, Registry, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};

/// Finalizer of an object deleted with `propagationPolicy: Orphan`.
const ORPHAN_FINALIZER: &str = "orphan";
/// Finalizer of an object deleted with `propagationPolicy: Foreground`.
const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// (resource store key `group/plural`, namespace or "", name).
pub(crate) type Key = (String, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
struct HistoryEntry {
    rv: u64,
    key: Key,
    change: Change,
    /// The object after the change; for deletions, its last state.
    object: Value,
    /// The object before the change (absent for additions).
    prev: Option<Value>,
}

/// What a watch stream sends next.
#[derive(Debug)]
pub(crate) enum Frame {
    Event(&'static str, Value),
    Bookmark { rv: u64, initial_events_end: bool },
    Error(Value),
}

/// Which objects a list or watch sees.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    pub resource: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    fn matches(&self, key: &Key, object: &Value) -> bool {
        key.0 == self.resource
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    /// The event a watcher with this filter sees for a change: an object entering the
    /// selection is ADDED, one leaving it DELETED, like kube-apiserver's watch cache.
    fn event_for(&self, entry: &HistoryEntry) -> Option<Frame> {
        let now = self.matches(&entry.key, &entry.object);
        let before = entry
            .prev
            .as_ref()
            .is_some_and(|p| self.matches(&entry.key, p));
        let kind = match (entry.change, before, now) {
            (Change::Added, _, true) => "ADDED",
            (Change::Deleted, _, true) => "DELETED",
            (Change::Modified, true, true) => "MODIFIED",
            (Change::Modified, false, true) => "ADDED",
            (Change::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(Frame::Event(kind, entry.object.clone()))
    }
}

struct Watcher {
    filter: Filter,
    tx: mpsc::UnboundedSender<Frame>,
}

/// Where a watch starts.
pub(crate) enum WatchStart {
    /// From now, after synthetic ADDED events for every current object; with
    /// `initial_events_end` a BOOKMARK marks the end of them (sendInitialEvents).
    Now { initial_events_end: bool },
    /// Replaying every change after this resourceVersion.
    After(u64),
}

/// List parameters after parsing.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// One page of a list.
pub(crate) struct ListPage {
    /// The resourceVersion the page shows the state at.
    pub resource_version: u64,
    pub items: Vec<Value>,
    /// Present when more items follow.
    pub continue_token: Option<String>,
    /// How many items follow.
    pub remaining: usize,
}

/// What happens to an object's dependents when it is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// The object goes at once; the garbage collector deletes the dependents afterwards.
    #[default]
    Background,
    /// The object stays (finalizer `foregroundDeletion`) until its dependents are gone.
    Foreground,
    /// The object stays (finalizer `orphan`) until its dependents' references are removed.
    Orphan,
}

/// Delete parameters after parsing.
#[derive(Debug, Default)]
pub(crate) struct DeleteOptions {
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub propagation: Propagation,
}

/// Server-side apply parameters from the query string.
#[derive(Debug, Default)]
pub(crate) struct PatchOptions {
    pub field_manager: Option<String>,
    pub force: bool,
    /// Who a non-apply patch is recorded as.
    pub writer: Writer,
}

/// Who a create, update or non-apply patch is recorded as.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// As kube-apiserver names it: the `fieldManager` parameter, else the User-Agent up to
    /// its first `/`, else `unknown`.
    pub manager: String,
    /// The apiVersion the request went through.
    pub api_version: String,
}

impl Writer {
    pub(crate) fn new(
        field_manager: Option<&str>,
        user_agent: Option<&str>,
        api_version: String,
    ) -> Self {
        let manager = field_manager
            .filter(|m| !m.is_empty())
            .or_else(|| {
                user_agent
                    .and_then(|ua| ua.split('/').next())
                    .filter(|p| !p.is_empty())
            })
            .unwrap_or("unknown")
            .to_string();
        Self {
            manager,
            api_version,
        }
    }
}

/// One entry of an object's field ownership: a manager, whether it wrote the status
/// subresource, and how (an apply, or another write through the given apiVersion).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Owner {
    manager: String,
    status: bool,
    /// `None` for an apply; the apiVersion of a create, update or non-apply patch.
    updated_through: Option<String>,
}

impl Owner {
    fn applier(manager: &str, status: bool) -> Self {
        Self {
            manager: manager.to_string(),
            status,
            updated_through: None,
        }
    }

    /// How kube-apiserver names this owner in a conflict.
    fn describe(&self) -> String {
        match &self.updated_through {
            None => format!("conflict with \"{}\"", self.manager),
            Some(api_version) => format!("conflict with \"{}\" using {api_version}", self.manager),
        }
    }
}

/// What a write produced: the object (or Status) to return and whether it was created.
pub(crate) struct Written {
    pub body: Value,
    pub created: bool,
}

/// The whole stored state of the stand-in.
pub(crate) struct State {
    pub registry: Registry,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<HistoryEntry>,
    history_limit: usize,
    /// Events up to and including this resourceVersion have left the history.
    floor: u64,
    watchers: HashMap<u64, Watcher>,
    next_watch: u64,
    validator: Validator,
    rng: u64,
    /// Field ownership: by object uid, by owner.
    managed: HashMap<String, BTreeMap<Owner, FieldSet>>,
}

fn meta(object: &Value, field: &str) -> Option<String> {
    object
        .get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn finalizers(object: &Value) -> Vec<Value> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// kube-apiserver's explanation of a bad DNS-1123 label (namespace names).
const DNS_LABEL_RULE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
/// kube-apiserver's explanation of a bad DNS-1123 subdomain (most object names).
const DNS_SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value, or the name part of a label or annotation key: at most 63 characters,
/// alphanumerics with `-`, `_` or `.` inside.
fn is_label_value(s: &str) -> bool {
    let inner_ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = |b: Option<u8>| b.is_none_or(|b| b.is_ascii_alphanumeric());
    s.len() <= 63 && inner_ok && ends_ok(s.bytes().next()) && ends_ok(s.bytes().last())
}

/// A qualified name: `[prefix/]name`, prefix a DNS subdomain.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    !name.is_empty()
        && is_label_value(name)
        && prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p))
}

/// kube-apiserver's checks on `metadata.labels` and `metadata.annotations` keys and values.
fn label_and_annotation_causes(object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let entries = |field: &str| {
        object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    for (key, value) in entries("labels") {
        let text = value.as_str().unwrap_or_default();
        if !is_qualified_name(&key) {
            causes.push(Cause { reason: "FieldValueInvalid", field: "metadata.labels".into(), message: format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character") });
        }
        if !value.is_string() || !is_label_value(text) {
            causes.push(Cause { reason: "FieldValueInvalid", field: format!("metadata.labels.{key}"), message: format!("Invalid value: {value}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character") });
        }
    }
    let annotations = entries("annotations");
    for (key, value) in &annotations {
        if !is_qualified_name(key) {
            causes.push(Cause { reason: "FieldValueInvalid", field: "metadata.annotations".into(), message: format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character") });
        }
        if !value.is_string() {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: format!("metadata.annotations.{key}"),
                message: "Invalid value: annotation values must be strings".into(),
            });
        }
    }
    let size: usize = annotations
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > 256 * 1024 {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "metadata.annotations".into(),
            message: "Too long: must have at most 262144 bytes".into(),
        });
    }
    causes
}

/// What decoding into `ObjectMeta` does to metadata: empty or null labels, annotations,
/// finalizers and ownerReferences disappear (they are `omitempty`).
fn normalize_metadata(object: &mut Value) {
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
            let empty = m.get(field).is_some_and(|v| {
                v.is_null()
                    || v.as_object().is_some_and(Map::is_empty)
                    || v.as_array().is_some_and(Vec::is_empty)
            });
            if empty {
                m.remove(field);
            }
        }
        m.retain(|_, v| !v.is_null());
    }
}

/// The object without the parts whose change does not bump `metadata.generation`.
fn generation_relevant(object: &Value, status_subresource: bool) -> Value {
    let mut v = object.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        if status_subresource {
            map.remove("status");
        }
    }
    v
}

impl State {
    pub(crate) fn new(history_limit: usize) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(std::process::id());
        let mut state = Self {
            registry: Registry::with_builtins(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            floor: 0,
            watchers: HashMap::new(),
            next_watch: 0,
            validator: Validator::new(),
            rng: seed | 1,
            managed: HashMap::new(),
        };
        let namespaces = state
            .registry
            .find("", "v1", "namespaces")
            .expect("built in");
        for ns in ["default", "kube-system", "kube-public"] {
            state
                .create(&namespaces, None, json!({"metadata": {"name": ns}}))
                .expect("fresh store accepts the standard namespaces");
        }
        state
    }

    pub(crate) fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim_history();
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: uids and generated names only need to be unique, not secure.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn new_uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        let hex = format!("{a:016x}{b:016x}");
        format!(
            "{}-{}-4{}-a{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
        let ns = if rt.namespaced {
            namespace.unwrap_or_default()
        } else {
            ""
        };
        (rt.store_key(), ns.to_string(), name.to_string())
    }

    /// Stores (or with `None` removes) an object under a new resourceVersion and tells the
    /// watchers. Returns the stored object.
    fn commit(&mut self, key: Key, object: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let (change, object, prev) = match object {
            Some(mut object) => {
                meta_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
                let prev = self.objects.insert(key.clone(), object.clone());
                (
                    if prev.is_some() {
                        Change::Modified
                    } else {
                        Change::Added
                    },
                    object,
                    prev,
                )
            }
            None => {
                let prev = self
                    .objects
                    .remove(&key)
                    .expect("commit removes only stored objects");
                let mut last = prev.clone();
                meta_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
                (Change::Deleted, last, Some(prev))
            }
        };
        let entry = HistoryEntry {
            rv,
            key,
            change,
            object: object.clone(),
            prev,
        };
        for watcher in self.watchers.values() {
            if let Some(frame) = watcher.filter.event_for(&entry) {
                // A closed receiver is dropped below.
                let _ = watcher.tx.send(frame);
            }
        }
        self.watchers.retain(|_, w| !w.tx.is_closed());
        self.history.push_back(entry);
        self.trim_history();
        object
    }

    fn lookup(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Key, &Value), ApiError> {
        let key = Self::key(rt, namespace, name);
        match self.objects.get(&key) {
            Some(v) => Ok((key, v)),
            None => Err(ApiError::not_found(rt, name)),
        }
    }

    pub(crate) fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.lookup(rt, namespace, name).map(|(_, v)| v.clone())
    }

    /// The objects as they were at resourceVersion `rv`, rebuilt by undoing later history.
    fn objects_at(&self, rv: u64) -> Result<BTreeMap<Key, Value>, ApiError> {
        if rv < self.floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.floor + 1
            )));
        }
        let mut snapshot = self.objects.clone();
        for entry in self.history.iter().rev().take_while(|e| e.rv > rv) {
            match (&entry.change, &entry.prev) {
                (Change::Added, _) => {
                    snapshot.remove(&entry.key);
                }
                (_, Some(prev)) => {
                    snapshot.insert(entry.key.clone(), prev.clone());
                }
                (_, None) => {}
            }
        }
        Ok(snapshot)
    }

    pub(crate) fn list(&self, filter: &Filter, query: &ListQuery) -> Result<ListPage, ApiError> {
        let parse_rv = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))
        };
        let requested = query.resource_version.as_deref().filter(|s| !s.is_empty());
        let (snapshot_rv, start_after) = if let Some(token) = &query.continue_token {
            let (rv, key) = decode_continue(token)?;
            (rv, Some(key))
        } else {
            match (requested, query.resource_version_match.as_deref()) {
                (None, Some(_)) => {
                    return Err(ApiError::invalid_options(
                        "ListOptions",
                        vec![Cause {
                            reason: "FieldValueForbidden",
                            field: "resourceVersionMatch".into(),
                            message: "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                        }],
                    ));
                }
                (Some(rv), Some("Exact")) => {
                    let rv = parse_rv(rv)?;
                    if rv > self.rv {
                        return Err(ApiError::too_large_resource_version(rv, self.rv));
                    }
                    (rv, None)
                }
                (Some(rv), None | Some("NotOlderThan")) => {
                    let rv = parse_rv(rv)?;
                    if rv > self.rv {
                        return Err(ApiError::too_large_resource_version(rv, self.rv));
                    }
                    (self.rv, None)
                }
                (Some(_), Some(other)) => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported resourceVersionMatch {other:?}"
                    )));
                }
                (None, None) => (self.rv, None),
            }
        };
        let snapshot = if snapshot_rv == self.rv {
            None
        } else {
            Some(self.objects_at(snapshot_rv)?)
        };
        let objects = snapshot.as_ref().unwrap_or(&self.objects);
        let matching: Vec<(&Key, &Value)> = objects
            .iter()
            .filter(|(k, v)| filter.matches(k, v))
            .filter(|(k, _)| start_after.as_ref().is_none_or(|after| *k > after))
            .collect();
        // A resourceVersion="0" list is served from the cache, which ignores limit.
        let limit = query.limit.filter(|l| *l > 0 && requested != Some("0"));
        let (page, rest) = match limit {
            Some(limit) if matching.len() > limit => matching.split_at(limit),
            _ => (&matching[..], &[][..]),
        };
        let token = (!rest.is_empty())
            .then(|| encode_continue(snapshot_rv, page.last().expect("limit > 0").0));
        Ok(ListPage {
            resource_version: snapshot_rv,
            items: page.iter().map(|(_, v)| (*v).clone()).collect(),
            continue_token: token,
            remaining: rest.len(),
        })
    }

    /// Registers a watch; the receiver yields its frames. `None` id: the watch already ended
    /// (its resourceVersion was too old and the only frame is the 410 error).
    pub(crate) fn watch(
        &mut self,
        filter: Filter,
        start: WatchStart,
    ) -> (Option<u64>, mpsc::UnboundedReceiver<Frame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        match start {
            WatchStart::After(rv) if rv < self.floor => {
                let err = ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    self.floor + 1
                ));
                let _ = tx.send(Frame::Error(err.to_status()));
                return (None, rx);
            }
            WatchStart::After(rv) => {
                for entry in self.history.iter().filter(|e| e.rv > rv) {
                    if let Some(frame) = filter.event_for(entry) {
                        let _ = tx.send(frame);
                    }
                }
            }
            WatchStart::Now { initial_events_end } => {
                for (key, object) in &self.objects {
                    if filter.matches(key, object) {
                        let _ = tx.send(Frame::Event("ADDED", object.clone()));
                    }
                }
                if initial_events_end {
                    let _ = tx.send(Frame::Bookmark {
                        rv: self.rv,
                        initial_events_end: true,
                    });
                }
            }
        }
        self.next_watch += 1;
        self.watchers
            .insert(self.next_watch, Watcher { filter, tx });
        (Some(self.next_watch), rx)
    }

    /// Queues a BOOKMARK at the current resourceVersion, in order with the watch's events.
    pub(crate) fn bookmark(&self, id: u64) {
        if let Some(w) = self.watchers.get(&id) {
            let _ = w.tx.send(Frame::Bookmark {
                rv: self.rv,
                initial_events_end: false,
            });
        }
    }

    pub(crate) fn unwatch(&mut self, id: u64) {
        self.watchers.remove(&id);
    }

    /// Ends every open watch stream (clients see the response body end).
    pub(crate) fn close_watches(&mut self) {
        self.watchers.clear();
    }

    pub(crate) fn open_watches(&self) -> usize {
        self.watchers.len()
    }

    fn check_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        let key = (
            "/namespaces".to_string(),
            String::new(),
            namespace.to_string(),
        );
        match self.objects.get(&key) {
            None => Err(ApiError::namespace_not_found(namespace)),
            Some(ns) if meta(ns, "deletionTimestamp").is_some() => {
                Err(ApiError::namespace_terminating(namespace))
            }
            Some(_) => Ok(()),
        }
    }

    /// Type-specific admission: schema validation for custom resources, Secret `stringData`.
    fn admit(
        &self,
        rt: &ResourceType,
        mut object: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let name = meta(&object, "name").unwrap_or_default();
        let name_problem = if rt.plural == "namespaces" {
            (!is_dns_label(&name)).then_some(DNS_LABEL_RULE)
        } else {
            (!is_dns_subdomain(&name)).then_some(DNS_SUBDOMAIN_RULE)
        };
        if let Some(rule) = name_problem {
            return Err(ApiError::invalid(
                rt,
                &name,
                vec![Cause {
                    reason: "FieldValueInvalid",
                    field: "metadata.name".into(),
                    message: format!("Invalid value: {name:?}: {rule}"),
                }],
            ));
        }
        normalize_metadata(&mut object);
        let metadata_causes = label_and_annotation_causes(&object);
        if !metadata_causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, metadata_causes));
        }
        if let Some(schema) = &rt.schema {
            return schema
                .admit(&self.validator, object, old)
                .map_err(|causes| ApiError::invalid(rt, &name, causes));
        }
        match rt.plural.as_str() {
            "secrets" => {
                let string_data = object.as_object_mut().and_then(|o| o.remove("stringData"));
                if let Some(Value::Object(string_data)) = string_data {
                    if !object.get("data").is_some_and(Value::is_object) {
                        object["data"] = json!({});
                    }
                    for (k, v) in string_data {
                        let encoded = base64::engine::general_purpose::STANDARD
                            .encode(v.as_str().unwrap_or_default());
                        object["data"][k] = json!(encoded);
                    }
                }
                for (k, v) in object
                    .get("data")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let decodes = v.as_str().is_some_and(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !decodes {
                        return Err(ApiError::bad_request(format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data.{k}"
                        )));
                    }
                }
                if object.get("type").is_none_or(Value::is_null) {
                    object["type"] = json!("Opaque");
                }
                if object
                    .get("data")
                    .is_some_and(|d| d.is_null() || d.as_object().is_some_and(Map::is_empty))
                    && let Some(o) = object.as_object_mut()
                {
                    o.remove("data");
                }
            }
            "namespaces" => {
                // The namespace's name is always a label, and its finalizer is the namespace
                // controller's.
                let m = meta_mut(&mut object);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
                if object.pointer("/spec/finalizers").is_none() {
                    object["spec"] = json!({"finalizers": ["kubernetes"]});
                }
                if object.pointer("/status/phase").is_none() {
                    object["status"] = json!({"phase": "Active"});
                }
            }
            _ => {}
        }
        Ok(object)
    }

    fn stamp_type(rt: &ResourceType, object: &mut Value, version: &str) -> Result<(), ApiError> {
        let expected = rt.api_version(version);
        if let Some(given) = object.get("apiVersion").and_then(Value::as_str)
            && !rt.versions.iter().any(|v| rt.api_version(v) == given)
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given}) does not match the expected API version ({expected})"
            )));
        }
        if let Some(given) = object.get("kind").and_then(Value::as_str)
            && given != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({given}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        object["apiVersion"] = json!(expected);
        object["kind"] = json!(rt.kind);
        Ok(())
    }

    pub(crate) fn create(
        &mut self,
        rt: &Arc<ResourceType>,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Self::stamp_type(rt, &mut object, &rt.versions[0])?;
        if rt.namespaced {
            let ns = namespace.ok_or_else(|| {
                ApiError::method_not_allowed(format!(
                    "{} must be created in a namespace",
                    rt.plural
                ))
            })?;
            if meta(&object, "namespace").is_some_and(|g| !g.is_empty() && g != ns) {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            self.check_namespace(ns)?;
            meta_mut(&mut object).insert("namespace".into(), json!(ns));
        } else {
            meta_mut(&mut object).remove("namespace");
        }
        let name = match (
            meta(&object, "name").filter(|n| !n.is_empty()),
            meta(&object, "generateName"),
        ) {
            (Some(name), _) => name,
            (None, Some(prefix)) => {
                const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let suffix: String = (0..5)
                    .map(|_| ALPHABET[(self.random() % ALPHABET.len() as u64) as usize] as char)
                    .collect();
                format!("{prefix}{suffix}")
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired",
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
        };
        let key = Self::key(rt, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        let uid = self.new_uid();
        let m = meta_mut(&mut object);
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(server_owned);
        }
        // Types without a generation keep what the client sent, as kube-apiserver does.
        if rt.tracks_generation {
            m.remove("generation");
        }
        if rt.tracks_generation {
            m.insert("generation".into(), json!(1));
        }
        if rt.status_subresource
            && let Some(o) = object.as_object_mut()
        {
            o.remove("status");
        }
        let mut object = self.admit(rt, object, None)?;
        if rt.group == CRD_GROUP && rt.plural == CRD_PLURAL {
            self.establish_crd(rt, &name, &mut object)?;
        }
        Ok(self.commit(key, Some(object)))
    }

    /// Serves the type a CRD object describes and records that in its status, as the
    /// apiextensions controllers would (at once: names are always accepted).
    fn establish_crd(
        &mut self,
        rt: &ResourceType,
        name: &str,
        crd: &mut Value,
    ) -> Result<(), ApiError> {
        self.registry.register_crd(crd).map_err(|e| {
            ApiError::invalid(
                rt,
                name,
                vec![Cause {
                    reason: "FieldValueInvalid",
                    field: "spec".into(),
                    message: e,
                }],
            )
        })?;
        let now = now_rfc3339();
        crd["status"] = json!({"conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ], "acceptedNames": crd["spec"]["names"].clone(), "storedVersions": []});
        Ok(())
    }

    /// Registers a CRD as if it had been applied: created, or replaced when it exists.
    pub(crate) fn put_crd(&mut self, crd: Value) -> Result<(), ApiError> {
        let rt = self
            .registry
            .find(CRD_GROUP, "v1", CRD_PLURAL)
            .expect("built in");
        let name = meta(&crd, "name").unwrap_or_default();
        match self.create(&rt, None, crd.clone()) {
            Err(e) if e.reason == "AlreadyExists" => {
                self.update(&rt, None, &name, crd, false).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// PUT: replaces the object (or with `status_only`, only its status).
    pub(crate) fn update(
        &mut self,
        rt: &Arc<ResourceType>,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if let Some(given) = meta(&body, "name").filter(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        let (key, old) = self.lookup(rt, namespace, name)?;
        // kube-apiserver applies the schema's defaults to what it reads from storage: an
        // object stored before a default existed (or under another schema) is updated, and
        // its generation compared, as defaulted.
        let old = match &rt.schema {
            Some(schema) => schema.defaulted(old),
            None => old.clone(),
        };
        if let Some(rv) = meta(&body, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(&rv) != meta(&old, "resourceVersion").as_ref()
        {
            return Err(ApiError::stale(rt, name));
        }
        let mut new = if status_only {
            let mut new = old.clone();
            match body.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    new.as_object_mut()
                        .expect("stored objects are objects")
                        .remove("status");
                }
            }
            new
        } else {
            let mut new = body;
            let version = new
                .get("apiVersion")
                .and_then(Value::as_str)
                .and_then(|av| av.rsplit('/').next())
                .filter(|v| rt.versions.iter().any(|rv| rv == v))
                .unwrap_or(&rt.versions[0])
                .to_string();
            Self::stamp_type(rt, &mut new, &version)?;
            let m = meta_mut(&mut new);
            for server_owned in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old["metadata"].get(server_owned) {
                    Some(v) => m.insert(server_owned.into(), v.clone()),
                    None => m.remove(server_owned),
                };
            }
            m.remove("managedFields");
            if rt.status_subresource {
                match old.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        new.as_object_mut().expect("object").remove("status");
                    }
                }
            }
            new
        };
        meta_mut(&mut new).insert(
            "resourceVersion".into(),
            old["metadata"]["resourceVersion"].clone(),
        );
        let mut new = self.admit(rt, new, Some(&old))?;
        if rt.group == CRD_GROUP && rt.plural == CRD_PLURAL && !status_only {
            // Keep the establishment time; only a changed spec re-registers the type.
            new["status"] = old.get("status").cloned().unwrap_or(Value::Null);
            if new.get("spec") != old.get("spec") {
                self.establish_crd(rt, name, &mut new)?;
            }
        }
        let deleting = meta(&old, "deletionTimestamp").is_some();
        if deleting {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(rt, name, vec![Cause {
                    reason: "FieldValueForbidden",
                    field: "metadata.finalizers".into(),
                    message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                }]));
            }
        }
        if rt.tracks_generation
            && generation_relevant(&new, rt.status_subresource)
                != generation_relevant(&old, rt.status_subresource)
        {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut new).insert("generation".into(), json!(generation));
        }
        if new == old {
            // kube-apiserver skips no-op writes: no new resourceVersion, no watch event.
            return Ok(old);
        }
        let stored = self.commit(key.clone(), Some(new));
        if deleting && finalizers(&stored).is_empty() {
            self.remove(key);
            self.collect_garbage();
        }
        Ok(stored)
    }

    /// PATCH of any type; server-side apply creates the object when it is absent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        rt: &Arc<ResourceType>,
        namespace: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &[u8],
        options: &PatchOptions,
        status_only: bool,
    ) -> Result<Written, ApiError> {
        let field_manager = options.field_manager.as_deref();
        if kind == PatchType::Strategic && rt.is_custom() {
            let mut err =
                ApiError::unsupported_media_type("application/strategic-merge-patch+json");
            err.message = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into();
            return Err(err);
        }
        if kind == PatchType::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(ApiError::invalid_options(
                "PatchOptions",
                vec![Cause {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            ));
        }
        let patch_doc = patch::parse_body(kind, body)?;
        if kind != PatchType::Json && !patch_doc.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        let schema = rt.schema.as_ref().map(|s| &s.raw);
        let current = self.lookup(rt, namespace, name).map(|(_, v)| v.clone());
        match current {
            Err(err) if kind != PatchType::Apply || status_only => Err(err),
            Err(_) => {
                if let Some(given) = meta(&patch_doc, "name").filter(|n| n != name) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({given}) does not match the name on the URL ({name})"
                    )));
                }
                let mut object = patch::patch(kind, &json!({}), &patch_doc, schema)?;
                meta_mut(&mut object).insert("name".into(), json!(name));
                let created = self.create(rt, namespace, object)?;
                if let (Some(manager), Some(uid)) = (field_manager, meta(&created, "uid")) {
                    let owned =
                        ownership::applied_fields(&patch_doc, schema, false, rt.status_subresource);
                    self.managed
                        .entry(uid)
                        .or_default()
                        .insert(Owner::applier(manager, false), owned);
                }
                Ok(Written {
                    body: created,
                    created: true,
                })
            }
            Ok(current) => {
                let mut patched = patch::patch(kind, &current, &patch_doc, schema)?;
                let (Some(manager), PatchType::Apply) = (field_manager, kind) else {
                    let body = self.update(rt, namespace, name, patched, status_only)?;
                    self.record_write(rt, &options.writer, status_only, Some(&current), &body);
                    return Ok(Written {
                        body,
                        created: false,
                    });
                };
                let uid = meta(&current, "uid").unwrap_or_default();
                let owner = Owner::applier(manager, status_only);
                let owned = ownership::applied_fields(
                    &patch_doc,
                    schema,
                    status_only,
                    rt.status_subresource,
                );
                let managers = self.managed.get(&uid).cloned().unwrap_or_default();
                let previous = managers.get(&owner).cloned().unwrap_or_default();
                let conflicts: Vec<(Owner, FieldPath)> = managers
                    .iter()
                    .filter(|(k, _)| **k != owner)
                    .flat_map(|(k, set)| {
                        ownership::conflicts(&current, &patch_doc, &owned, set)
                            .into_iter()
                            .map(move |p| (k.clone(), p))
                    })
                    .collect();
                if !conflicts.is_empty() && !options.force {
                    let listed: Vec<String> = conflicts
                        .iter()
                        .map(|(owner, p)| {
                            format!("{}: {}", owner.describe(), ownership::display(p))
                        })
                        .collect();
                    return Err(ApiError::conflict_message(format!(
                        "Apply failed with {} conflict{}: {}",
                        conflicts.len(),
                        if conflicts.len() == 1 { "" } else { "s" },
                        listed.join(", ")
                    )));
                }
                // Forcing takes the conflicting fields away from their previous managers.
                let mut managers = managers;
                for (other, path) in &conflicts {
                    if let Some(set) = managers.get_mut(other) {
                        set.remove(path);
                    }
                }
                let others: FieldSet = managers
                    .iter()
                    .filter(|(k, _)| **k != owner)
                    .flat_map(|(_, set)| set.iter().cloned())
                    .collect();
                ownership::remove_dropped(&mut patched, &previous, &owned, &others);
                let body = self.update(rt, namespace, name, patched, status_only)?;
                managers.insert(owner, owned);
                self.managed.insert(uid, managers);
                Ok(Written {
                    body,
                    created: false,
                })
            }
        }
    }

    /// Records a create, update or non-apply patch: `manager` becomes the sole owner of
    /// every field whose value it changed (all it set, for a create).
    pub(crate) fn record_write(
        &mut self,
        rt: &ResourceType,
        writer: &Writer,
        status_only: bool,
        old: Option<&Value>,
        new: &Value,
    ) {
        let Some(uid) = meta(new, "uid") else {
            return;
        };
        let schema = rt.schema.as_ref().map(|s| &s.raw);
        let changed: FieldSet =
            ownership::applied_fields(new, schema, status_only, rt.status_subresource)
                .into_iter()
                .filter(|p| {
                    old.is_none_or(|old| ownership::value_at(old, p) != ownership::value_at(new, p))
                })
                .collect();
        let managers = self.managed.entry(uid).or_default();
        for set in managers.values_mut() {
            set.retain(|p| !changed.contains(p));
        }
        if changed.is_empty() {
            return;
        }
        let owner = Owner {
            manager: writer.manager.clone(),
            status: status_only,
            updated_through: Some(writer.api_version.clone()),
        };
        managers.entry(owner).or_default().extend(changed);
    }

    pub(crate) fn delete(
        &mut self,
        rt: &Arc<ResourceType>,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let (key, object) = self.lookup(rt, namespace, name)?;
        let uid = meta(object, "uid").unwrap_or_default();
        if let Some(want) = options.precondition_uid.as_ref().filter(|u| **u != uid) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        let rv = meta(object, "resourceVersion").unwrap_or_default();
        if let Some(want) = options.precondition_rv.as_ref().filter(|r| **r != rv) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }
        let response = match options.propagation {
            Propagation::Background => {
                let outcome = self.delete_key(key.clone(), None);
                self.collect_garbage();
                // A namespace is answered as marked for termination (its finalizer), whether
                // or not it is already gone here.
                match outcome {
                    Some(still_there) => still_there,
                    None => deleted_status(rt, name, &uid),
                }
            }
            policy => {
                // kube-apiserver adds the finalizer and answers with the object; the garbage
                // collector then handles the dependents and removes the finalizer. Here that
                // happens at once, with the same sequence of events.
                let finalizer = if policy == Propagation::Orphan {
                    ORPHAN_FINALIZER
                } else {
                    FOREGROUND_FINALIZER
                };
                let marked = self
                    .delete_key(key.clone(), Some(finalizer))
                    .unwrap_or_else(|| deleted_status(rt, name, &uid));
                if policy == Propagation::Orphan {
                    self.orphan_dependents(&uid);
                } else {
                    self.collect_garbage_without(Some(&uid));
                }
                self.remove_finalizer(&key, finalizer);
                self.collect_garbage();
                marked
            }
        };
        Ok(response)
    }

    /// Takes a garbage-collection finalizer off an object and removes the object when no
    /// finalizers are left.
    fn remove_finalizer(&mut self, key: &Key, finalizer: &str) {
        let Some(mut object) = self.objects.get(key).cloned() else {
            return;
        };
        if let Some(list) = object
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            list.retain(|f| f.as_str() != Some(finalizer));
        }
        normalize_metadata(&mut object);
        let done = finalizers(&object).is_empty();
        self.commit(key.clone(), Some(object));
        if done {
            self.remove(key.clone());
        }
    }

    /// Deletes every object of the collection that the filter selects; returns them as they
    /// were when deleted (marked for deletion when finalizers hold them).
    pub(crate) fn delete_collection(&mut self, filter: &Filter) -> Vec<Value> {
        let keys: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, v)| filter.matches(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        let mut deleted = Vec::new();
        for key in keys {
            let before = self.objects.get(&key).cloned();
            match self.delete_key(key, None) {
                Some(marked) => deleted.push(marked),
                None => deleted.extend(before),
            }
        }
        self.collect_garbage();
        deleted
    }

    /// Starts deleting an object: with finalizers (or for a namespace, or with `finalizer`,
    /// which is added) it is marked with a deletionTimestamp, its generation bumped, and kept;
    /// otherwise removed. Returns the object still stored, if any.
    fn delete_key(&mut self, key: Key, finalizer: Option<&str>) -> Option<Value> {
        let object = self.objects.get(&key)?.clone();
        let is_namespace = key.0 == "/namespaces";
        if finalizers(&object).is_empty() && !is_namespace && finalizer.is_none() {
            self.remove(key);
            return None;
        }
        let deleting = meta(&object, "deletionTimestamp").is_some();
        let mut marked = object;
        if let Some(finalizer) = finalizer
            && !finalizers(&marked).iter().any(|f| f == finalizer)
        {
            let m = meta_mut(&mut marked);
            let list = m.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                list.push(json!(finalizer));
            }
        }
        if !deleting {
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            if !is_namespace {
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            if let Some(generation) = m.get("generation").and_then(Value::as_i64) {
                m.insert("generation".into(), json!(generation + 1));
            }
            if is_namespace {
                marked["status"] = json!({"phase": "Terminating"});
            }
        }
        if Some(&marked) == self.objects.get(&key) {
            return Some(marked);
        }
        Some(self.commit(key, Some(marked)))
    }

    /// Removes an object for good. A CustomResourceDefinition takes its type and every
    /// object of it along.
    fn remove(&mut self, key: Key) {
        let removed = self.commit(key.clone(), None);
        if key.0 != format!("{CRD_GROUP}/{CRD_PLURAL}") {
            return;
        }
        let text = |pointer: &str| {
            removed
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (group, plural) = (text("/spec/group"), text("/spec/names/plural"));
        let resource = format!("{group}/{plural}");
        let instances: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.0 == resource)
            .cloned()
            .collect();
        for instance in instances {
            self.commit(instance, None);
        }
        self.registry.unregister(&group, &plural);
    }

    fn orphan_dependents(&mut self, owner_uid: &str) {
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| owner_uids(v).iter().any(|u| u == owner_uid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in dependents {
            let mut object = self.objects[&key].clone();
            if let Some(refs) = object
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
            }
            normalize_metadata(&mut object);
            self.commit(key, Some(object));
        }
    }

    /// The garbage collector's and namespace controller's visible effects, run to a fixed
    /// point after every deletion: dependents whose owners are all gone are deleted, dangling
    /// owner references are dropped, terminating namespaces are emptied and then removed.
    fn collect_garbage(&mut self) {
        self.collect_garbage_without(None);
    }

    /// [`State::collect_garbage`] as if the object with uid `gone` (being deleted in the
    /// foreground) were already gone.
    fn collect_garbage_without(&mut self, gone: Option<&str>) {
        loop {
            let uids: HashSet<String> = self
                .objects
                .values()
                .filter_map(|v| meta(v, "uid"))
                .filter(|u| Some(u.as_str()) != gone)
                .collect();
            let terminating: HashSet<String> = self
                .objects
                .iter()
                .filter(|(k, v)| k.0 == "/namespaces" && meta(v, "deletionTimestamp").is_some())
                .map(|(k, _)| k.2.clone())
                .collect();
            let mut work: Vec<(Key, bool)> = Vec::new();
            for (key, object) in &self.objects {
                if meta(object, "deletionTimestamp").is_some() {
                    continue;
                }
                let owners = owner_uids(object);
                let dangling = owners.iter().filter(|u| !uids.contains(*u)).count();
                if terminating.contains(&key.1) || (dangling > 0 && dangling == owners.len()) {
                    work.push((key.clone(), true));
                } else if dangling > 0 {
                    work.push((key.clone(), false));
                }
            }
            let empty_namespaces: Vec<Key> = terminating
                .iter()
                .filter(|ns| !self.objects.keys().any(|k| k.1 == **ns))
                .map(|ns| ("/namespaces".to_string(), String::new(), ns.clone()))
                .collect();
            if work.is_empty() && empty_namespaces.is_empty() {
                return;
            }
            for (key, delete) in work {
                if delete {
                    self.delete_key(key, None);
                } else {
                    let mut object = self.objects[&key].clone();
                    if let Some(refs) = object
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| {
                            r.get("uid")
                                .and_then(Value::as_str)
                                .is_some_and(|u| uids.contains(u))
                        });
                    }
                    normalize_metadata(&mut object);
                    self.commit(key, Some(object));
                }
            }
            for key in empty_namespaces {
                self.commit(key, None);
            }
        }
    }
}

fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn encode_continue(rv: u64, after: &Key) -> String {
    let token = json!({"rv": rv, "start": [after.0, after.1, after.2]});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let part = |i: usize| {
        v.pointer(&format!("/start/{i}"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(bad)
    };
    Ok((rv, (part(0)?, part(1)?, part(2)?)))
}
