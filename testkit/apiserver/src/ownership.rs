//! Server-side apply field ownership, simplified: each (field manager, subresource) owns the
//! fields its last apply configuration set. When a manager's next apply leaves a field out,
//! the field is removed unless another manager's apply owns it (or something inside it) —
//! which is how an operator drops a status field or condition it no longer reports. A create,
//! PUT or non-apply patch makes its manager (the `fieldManager` parameter, else the client's
//! User-Agent up to the first `/`, else `unknown`) the sole owner of the fields it changed,
//! as an `Update` operation; an apply that sets such a field to another value conflicts with
//! it, as on kube-apiserver.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::patch::{ListMerge, field_schema, list_merge};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Segment {
    Field(String),
    /// A list-map item, named by its key fields (as a JSON object).
    Keyed(String),
    /// A set item, named by its value (as JSON).
    Member(String),
}

pub(crate) type FieldPath = Vec<Segment>;
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// The fields an apply configuration sets. `status_only` for the status subresource;
/// `status_subresource` when the main resource ignores `status`.
pub(crate) fn applied_fields(
    applied: &Value,
    schema: Option<&Value>,
    status_only: bool,
    status_subresource: bool,
) -> FieldSet {
    let mut set = FieldSet::new();
    for (key, value) in applied.as_object().into_iter().flatten() {
        let kept = match key.as_str() {
            "apiVersion" | "kind" => false,
            "status" => status_only || !status_subresource,
            _ => !status_only,
        };
        if !kept {
            continue;
        }
        let path = vec![Segment::Field(key.clone())];
        if key == "metadata" {
            // Only the user-settable, mergeable parts of metadata have owners.
            for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(v) = value.get(field) {
                    let mut p = path.clone();
                    p.push(Segment::Field(field.into()));
                    collect(v, None, false, field, p, &mut set);
                }
            }
        } else {
            collect(
                value,
                field_schema(schema, key),
                schema.is_some(),
                key,
                path,
                &mut set,
            );
        }
    }
    set
}

fn with(path: &FieldPath, segment: Segment) -> FieldPath {
    let mut p = path.clone();
    p.push(segment);
    p
}

fn collect(
    value: &Value,
    schema: Option<&Value>,
    custom: bool,
    field: &str,
    path: FieldPath,
    set: &mut FieldSet,
) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                collect(
                    v,
                    field_schema(schema, key),
                    custom,
                    key,
                    with(&path, Segment::Field(key.clone())),
                    set,
                );
            }
        }
        Value::Array(items) => {
            let item_schema = schema.and_then(|s| s.get("items"));
            match list_merge(custom, schema, field) {
                ListMerge::Map(keys) => {
                    for item in items {
                        let id: serde_json::Map<String, Value> = keys
                            .iter()
                            .map(|k| (k.clone(), item.get(k).cloned().unwrap_or(Value::Null)))
                            .collect();
                        let item_path = with(&path, Segment::Keyed(Value::Object(id).to_string()));
                        set.insert(item_path.clone());
                        if let Value::Object(fields) = item {
                            for (key, v) in fields.iter().filter(|(k, _)| !keys.contains(k)) {
                                collect(
                                    v,
                                    field_schema(item_schema, key),
                                    custom,
                                    key,
                                    with(&item_path, Segment::Field(key.clone())),
                                    set,
                                );
                            }
                        }
                    }
                }
                ListMerge::Set => {
                    for item in items {
                        set.insert(with(&path, Segment::Member(item.to_string())));
                    }
                }
                ListMerge::Replace => {
                    set.insert(path);
                }
            }
        }
        _ => {
            set.insert(path);
        }
    }
}

/// The value at `path`, if present.
pub(crate) fn value_at<'a>(value: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, segment| match (v, segment) {
            (Value::Object(map), Segment::Field(f)) => map.get(f),
            (Value::Array(items), segment) => position(items, segment).map(|i| &items[i]),
            _ => None,
        })
}

/// Leaf fields of `applying` (a manager's new field set, values from `applied`) that
/// `owned_by_other` owns with a different value in `live`: server-side apply conflicts.
pub(crate) fn conflicts(
    live: &Value,
    applied: &Value,
    applying: &FieldSet,
    owned_by_other: &FieldSet,
) -> Vec<FieldPath> {
    applying
        .iter()
        .filter(|p| matches!(p.last(), Some(Segment::Field(_))) && owned_by_other.contains(*p))
        .filter(|p| value_at(live, p) != value_at(applied, p))
        .cloned()
        .collect()
}

/// A field path as kube-apiserver prints it in conflict messages: `.status.conditions[type="Ready"].status`.
pub(crate) fn display(path: &FieldPath) -> String {
    path.iter()
        .map(|segment| match segment {
            Segment::Field(f) => format!(".{f}"),
            Segment::Keyed(id) => {
                let keys: Value = serde_json::from_str(id).unwrap_or(Value::Null);
                let parts: Vec<String> = keys
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("[{}]", parts.join(","))
            }
            Segment::Member(v) => format!("[{v}]"),
        })
        .collect()
}

/// Removes the fields `previous` owned that `current` no longer sets, unless `others` own
/// them or anything beneath them. Maps emptied by a removal go too.
pub(crate) fn remove_dropped(
    object: &mut Value,
    previous: &FieldSet,
    current: &FieldSet,
    others: &FieldSet,
) {
    for path in previous.difference(current) {
        if others.iter().any(|o| o.starts_with(path)) {
            continue;
        }
        remove_at(object, path);
    }
}

fn position(items: &[Value], segment: &Segment) -> Option<usize> {
    match segment {
        Segment::Keyed(id) => {
            let id: Value = serde_json::from_str(id).ok()?;
            let keys = id.as_object()?;
            items.iter().position(|item| {
                keys.iter()
                    .all(|(k, v)| item.get(k).unwrap_or(&Value::Null) == v)
            })
        }
        Segment::Member(value) => {
            let value: Value = serde_json::from_str(value).ok()?;
            items.iter().position(|item| *item == value)
        }
        Segment::Field(_) => None,
    }
}

/// Removes the value at `path`; returns whether `value` is left an empty map.
fn remove_at(value: &mut Value, path: &[Segment]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match (value, first) {
        (Value::Object(map), Segment::Field(f)) => {
            let emptied =
                rest.is_empty() || map.get_mut(f).is_some_and(|child| remove_at(child, rest));
            if emptied {
                map.remove(f);
            }
            map.is_empty()
        }
        (Value::Array(items), segment) => {
            if let Some(i) = position(items, segment) {
                if rest.is_empty() {
                    items.remove(i);
                } else {
                    // An emptied list item keeps its keys; it is not removed here.
                    remove_at(&mut items[i], rest);
                }
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_a_manager_stops_applying_are_removed_unless_another_owns_them() {
        let schema = json!({"properties": {"status": {"properties": {
            "rejected": {"type": "object", "properties": {"reason": {"type": "string"}}},
            "conditions": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"], "items": {"type": "object"}}}}}});
        let first = json!({"status": {"rejected": {"reason": "Bad"}, "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}});
        let second = json!({"status": {"conditions": [{"type": "A", "status": "True"}]}});
        let other = json!({"status": {"conditions": [{"type": "B", "status": "True"}]}});
        let owned = |doc: &Value| applied_fields(doc, Some(&schema), true, true);
        let mut object = first.clone();
        remove_dropped(&mut object, &owned(&first), &owned(&second), &owned(&other));
        assert_eq!(
            object,
            json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}})
        );
        let mut object = first.clone();
        remove_dropped(
            &mut object,
            &owned(&first),
            &owned(&second),
            &FieldSet::new(),
        );
        assert_eq!(
            object,
            json!({"status": {"conditions": [{"type": "A", "status": "True"}]}})
        );
    }
}
