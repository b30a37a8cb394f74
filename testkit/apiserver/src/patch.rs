//! The four PATCH flavours kube-apiserver accepts: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), strategic merge patch (built-in types only, like the real server) and
//! server-side apply. Lists are merged by key where the real server would: for custom
//! resources from the schema's `x-kubernetes-list-type`/`x-kubernetes-list-map-keys`, for
//! built-in types from a table of the keyed lists they declare (containers by name,
//! conditions by type, ...).

use serde_json::{Map, Value};

use crate::errors::ApiError;

/// Which patch the request's Content-Type asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body: YAML (a JSON superset) for apply, JSON otherwise.
pub(crate) fn parse_body(kind: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let parsed = match kind {
        // Most clients send JSON (kube, client-go); only YAML needs the slower parser.
        PatchType::Apply => serde_json::from_slice::<Value>(body).or_else(|_| {
            std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_saphyr::from_str::<Value>(s).map_err(|e| e.to_string()))
        }),
        _ => serde_json::from_slice::<Value>(body).map_err(|e| e.to_string()),
    };
    parsed.map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies a non-apply patch to `target`. `schema` is the CRD schema for custom resources.
pub(crate) fn patch(
    kind: PatchType,
    target: &Value,
    patch: &Value,
    schema: Option<&Value>,
) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match kind {
        PatchType::Merge => json_patch::merge(&mut doc, patch),
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding JSON patch: {e}")))?;
            // kube-apiserver does not say which operation failed.
            json_patch::patch(&mut doc, &ops).map_err(|_| ApiError::patch_failed())?;
        }
        PatchType::Strategic => strategic_merge(&mut doc, patch),
        PatchType::Apply => apply(&mut doc, patch, schema),
    }
    Ok(doc)
}

/// The schema of field `key` of an object with schema `schema`.
pub(crate) fn field_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    schema.and_then(|s| {
        s.get("properties")
            .and_then(|p| p.get(key))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
    })
}

/// How the list in field `key` merges: from its schema for custom resources (`custom`),
/// from the built-in table otherwise.
pub(crate) fn list_merge(custom: bool, list_schema: Option<&Value>, key: &str) -> ListMerge {
    match (custom, list_schema) {
        (true, Some(s)) => schema_list(s),
        (true, None) => ListMerge::Replace,
        (false, _) => builtin_list(key),
    }
}

/// How a list is merged when a patch or apply configuration carries one.
pub(crate) enum ListMerge {
    /// The list is replaced whole (`atomic`, and every list without merge semantics).
    Replace,
    /// Primitive items, unioned (`x-kubernetes-list-type: set`, `finalizers`).
    Set,
    /// Object items identified by these keys.
    Map(Vec<String>),
}

/// Keyed lists of the built-in types, by field name (their `patchMergeKey`s / list-map keys).
fn builtin_list(field: &str) -> ListMerge {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "finalizers" => return ListMerge::Set,
        _ => return ListMerge::Replace,
    };
    ListMerge::Map(vec![key.to_string()])
}

fn schema_list(schema: &Value) -> ListMerge {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListMerge::Set,
        Some("map") => ListMerge::Map(
            schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListMerge::Replace,
    }
}

fn same_item(keys: &[String], a: &Value, b: &Value) -> bool {
    keys.iter().all(|k| a.get(k) == b.get(k))
}

/// Strategic merge patch: merge semantics, except that keyed lists of built-in types are
/// merged by key (with `$patch: delete` items removing entries), `finalizers` is unioned,
/// `$patch: replace` replaces a map, and `$deleteFromPrimitiveList/<field>` removes values.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch_map.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_map.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            // $setElementOrder and $retainKeys only affect ordering and pruning of maps.
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Array(items) => {
                let existing = target_map
                    .entry(key.clone())
                    .or_insert(Value::Array(Vec::new()));
                merge_list(existing, items, builtin_list(key), strategic_merge);
            }
            Value::Object(_) => {
                strategic_merge(target_map.entry(key.clone()).or_insert(Value::Null), value)
            }
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
    }
}

fn merge_list(
    existing: &mut Value,
    items: &[Value],
    how: ListMerge,
    mut merge_item: impl FnMut(&mut Value, &Value),
) {
    let live = match existing {
        Value::Array(live) => live,
        other => {
            *other = Value::Array(Vec::new());
            other.as_array_mut().expect("just set")
        }
    };
    match how {
        ListMerge::Replace => *live = items.to_vec(),
        ListMerge::Set => {
            for item in items {
                if !live.contains(item) {
                    live.push(item.clone());
                }
            }
        }
        ListMerge::Map(keys) => {
            for item in items {
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match live.iter().position(|l| same_item(&keys, l, item)) {
                    Some(i) if delete => {
                        live.remove(i);
                    }
                    Some(i) => merge_item(&mut live[i], item),
                    None if delete => {}
                    None => {
                        let mut fresh = Value::Null;
                        merge_item(&mut fresh, item);
                        live.push(fresh);
                    }
                }
            }
        }
    }
}

/// Server-side apply's merge of an applied configuration into the live object: maps are
/// merged, lists merged per their list type, scalars replaced, `null` removes a field.
fn apply(live: &mut Value, applied: &Value, schema: Option<&Value>) {
    let Some(applied_map) = applied.as_object() else {
        *live = applied.clone();
        return;
    };
    if !live.is_object() {
        *live = Value::Object(Map::new());
    }
    let live_map = live.as_object_mut().expect("made an object above");
    for (key, value) in applied_map {
        let child_schema = field_schema(schema, key);
        match value {
            Value::Null => {
                live_map.remove(key);
            }
            Value::Array(items) => {
                let how = list_merge(schema.is_some(), child_schema, key);
                let item_schema = child_schema.and_then(|s| s.get("items"));
                let existing = live_map
                    .entry(key.clone())
                    .or_insert(Value::Array(Vec::new()));
                merge_list(existing, items, how, |l, item| apply(l, item, item_schema));
            }
            Value::Object(_) => apply(
                live_map.entry(key.clone()).or_insert(Value::Null),
                value,
                child_schema,
            ),
            scalar => {
                live_map.insert(key.clone(), scalar.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_deletes_marked_items() {
        let live = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}], "x": 1}});
        let p = json!({"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "b", "$patch": "delete"}, {"name": "c", "image": "3"}]}});
        let out = patch(PatchType::Strategic, &live, &p, None).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "a", "image": "2"}, {"name": "c", "image": "3"}], "x": 1}})
        );
    }

    #[test]
    fn apply_merges_list_map_items_by_schema_keys() {
        let schema = json!({"properties": {"status": {"properties": {"conditions": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            "items": {"type": "object"}}}}}});
        let live = json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}});
        let applied = json!({"status": {"conditions": [{"type": "B", "status": "False"}]}});
        let out = patch(PatchType::Apply, &live, &applied, Some(&schema)).unwrap();
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "A", "status": "True"}, {"type": "B", "status": "False"}])
        );
    }
}
