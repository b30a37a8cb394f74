//! Admission for custom resources, in kube-apiserver's order: prune unknown fields (and
//! nulls on non-nullable fields), apply schema defaults, check the structural schema
//! (types, required, enum, pattern, lengths, bounds, list uniqueness), then evaluate the
//! `x-kubernetes-validations` CEL rules with kube-cel. Failures become `422 Invalid` causes
//! with field paths, so tests see what a real cluster would answer.

use std::collections::BTreeSet;

use kube_cel::{CompiledSchema, ErrorKind, Validator, apply_defaults, compile_schema};
use serde_json::Value;

use crate::errors::Cause;

/// A CRD version's `openAPIV3Schema`, with its CEL rules compiled once at registration.
#[derive(Debug)]
pub(crate) struct CrdSchema {
    pub raw: Value,
    compiled: CompiledSchema,
    /// Whether any CEL rule sits outside `spec` (at the root, in `status`, ...).
    rules_outside_spec: bool,
}

/// Whether `schema` (or anything under it) carries `x-kubernetes-validations`.
fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            map.contains_key("x-kubernetes-validations") || map.values().any(has_rules)
        }
        Value::Array(items) => items.iter().any(has_rules),
        _ => false,
    }
}

impl CrdSchema {
    pub(crate) fn new(raw: Value) -> Result<Self, String> {
        let compiled = compile_schema(&raw);
        if compiled.has_errors() {
            let errors: Vec<String> = compiled
                .compilation_errors()
                .iter()
                .map(|e| e.to_string())
                .collect();
            return Err(format!("CEL rules do not compile: {}", errors.join("; ")));
        }
        let rules_outside_spec = raw.get("x-kubernetes-validations").is_some()
            || raw
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|props| {
                    props
                        .iter()
                        .any(|(name, sub)| name != "spec" && has_rules(sub))
                });
        Ok(Self {
            raw,
            compiled,
            rules_outside_spec,
        })
    }

    /// `object` with the schema's defaults applied.
    pub(crate) fn defaulted(&self, object: &Value) -> Value {
        apply_defaults(&self.raw, object)
    }

    /// Prunes, defaults and validates `object`; `old` is the stored object on updates (for
    /// CEL transition rules). Returns the object as it would be persisted.
    pub(crate) fn admit(
        &self,
        validator: &Validator,
        mut object: Value,
        old: Option<&Value>,
    ) -> Result<Value, Vec<Cause>> {
        prune(&self.raw, &mut object, true);
        let object = apply_defaults(&self.raw, &object);
        let mut causes = Vec::new();
        check(&self.raw, &object, "", &mut causes);
        // Validation ratcheting (GA since Kubernetes 1.30): errors on values an update left
        // unchanged are dropped (a status write to an object whose spec an older schema let
        // in is admitted), so when every rule sits in `spec` and the spec is unchanged (a
        // status write, a label), no rule can fail and none is evaluated.
        if let Some(old) = old {
            causes.retain(|c| {
                let now = value_at(&object, &c.field);
                now.is_none() || now != value_at(old, &c.field)
            });
        }
        let ratcheted = !self.rules_outside_spec
            && old.is_some_and(|old| old.get("spec") == object.get("spec"));
        if causes.is_empty()
            && !ratcheted
            && let Err(errors) = validator.validate_compiled(&self.compiled, &object, old)
        {
            for e in errors {
                let shown = match e.kind {
                    ErrorKind::ValidationFailure | ErrorKind::InvalidResult => e.message.clone(),
                    // Rules the engine cannot evaluate fail closed, as the apiserver does.
                    _ => format!(
                        "rule evaluation failed ({:?}): {}: {}",
                        e.kind, e.rule, e.message
                    ),
                };
                let type_name = value_at(&object, &e.field_path)
                    .map(json_type)
                    .unwrap_or("object");
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: e.field_path.clone(),
                    message: format!("Invalid value: \"{type_name}\": {shown}"),
                });
            }
        }
        if causes.is_empty() {
            Ok(object)
        } else {
            Err(causes)
        }
    }
}

fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(object);
    }
    path.split('.').try_fold(object, |v, field| v.get(field))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `s` matches the schema `pattern`; each pattern is compiled once per thread.
fn pattern_matches(pattern: &str, s: &str) -> Result<bool, regex_lite::Error> {
    thread_local! {
        static COMPILED: std::cell::RefCell<std::collections::HashMap<String, regex_lite::Regex>> =
            Default::default();
    }
    COMPILED.with(|compiled| {
        let mut compiled = compiled.borrow_mut();
        if let Some(re) = compiled.get(pattern) {
            return Ok(re.is_match(s));
        }
        let re = regex_lite::Regex::new(pattern)?;
        let matched = re.is_match(s);
        compiled.insert(pattern.to_owned(), re);
        Ok(matched)
    })
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// What an object's schema says of one of its keys.
enum Key<'a> {
    /// Declared (in `properties` or by an `additionalProperties` schema): this schema.
    Declared(&'a Value),
    /// Undeclared but kept: embedded-resource metadata, or an open object.
    Kept,
    /// Undeclared: pruning drops it, `fieldValidation=Strict` refuses it.
    Unknown,
}

fn key<'a>(schema: &'a Value, key: &str, embedded: bool) -> Key<'a> {
    let declared = schema
        .get("properties")
        .and_then(Value::as_object)
        .and_then(|p| p.get(key))
        .or(schema.get("additionalProperties").filter(|a| a.is_object()));
    if let Some(s) = declared {
        return Key::Declared(s);
    }
    let meta = embedded && matches!(key, "apiVersion" | "kind" | "metadata");
    let open = flag(schema, "x-kubernetes-preserve-unknown-fields")
        || schema.get("additionalProperties") == Some(&Value::Bool(true));
    if meta || open {
        Key::Kept
    } else {
        Key::Unknown
    }
}

/// Drops fields the schema does not declare (unless it preserves unknown fields) and nulls
/// on non-nullable fields, as structural-schema pruning does.
fn prune(schema: &Value, value: &mut Value, root: bool) {
    let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
    match value {
        Value::Object(map) => {
            map.retain(|k, v| match key(schema, k, embedded) {
                Key::Declared(s) => !v.is_null() || flag(s, "nullable"),
                Key::Kept => true,
                Key::Unknown => false,
            });
            for (k, v) in map.iter_mut() {
                if let Key::Declared(s) = key(schema, k, embedded) {
                    prune(s, v, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    prune(s, item, false);
                }
            }
        }
        _ => {}
    }
}

/// The fields `value` sets that the schema does not know (what pruning would drop), as
/// kube-apiserver names them for `fieldValidation=Strict`: `spec.bogus`, `spec.items[0].x`.
pub(crate) fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_unknown(schema, value, true, "", &mut out);
    out
}

fn collect_unknown(schema: &Value, value: &Value, root: bool, path: &str, out: &mut Vec<String>) {
    let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match key(schema, k, embedded) {
                    Key::Declared(s) => collect_unknown(s, v, false, &child(path, k), out),
                    Key::Kept => {}
                    Key::Unknown => out.push(child(path, k)),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    collect_unknown(s, item, false, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn child(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Structural checks of `value` against `schema`, collecting one cause per violation.
fn check(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut invalid = |reason: &'static str, message: String| {
        causes.push(Cause {
            reason,
            field: path.to_string(),
            message,
        })
    };
    if value.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            invalid(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}",
                    schema["type"].as_str().unwrap_or("object")
                ),
            );
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let ok = match expected {
            "string" => value.is_string(),
            "integer" => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            _ => true,
        } || (flag(schema, "x-kubernetes-int-or-string")
            && (value.is_string() || value.is_i64()));
        if !ok {
            invalid(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type {expected}: {}",
                    json_type(value),
                    shown(value)
                ),
            );
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(shown).collect();
        invalid(
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                list.join(", ")
            ),
        );
    }
    let limit = |name: &str| schema.get(name).and_then(Value::as_u64);
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = limit("maxLength").filter(|m| len > *m) {
                invalid(
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {max} bytes"),
                );
            }
            if let Some(min) = limit("minLength").filter(|m| len < *m) {
                invalid(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {}: {path} in body should be at least {min} chars long",
                        shown(value)
                    ),
                );
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match pattern_matches(pattern, s) {
                    Ok(true) => {}
                    Ok(_) => invalid(
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {}: {path} in body should match '{pattern}'",
                            shown(value)
                        ),
                    ),
                    Err(e) => invalid(
                        "FieldValueInvalid",
                        format!("schema pattern {pattern:?} does not compile: {e}"),
                    ),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive = flag(schema, "exclusiveMaximum");
                if x > max || (exclusive && x == max) {
                    let rel = if exclusive {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    invalid(
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {path} in body should be {rel} {max}"),
                    );
                }
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive = flag(schema, "exclusiveMinimum");
                if x < min || (exclusive && x == min) {
                    let rel = if exclusive {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    invalid(
                        "FieldValueInvalid",
                        format!("Invalid value: {n}: {path} in body should be {rel} {min}"),
                    );
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = limit("maxItems").filter(|m| len > *m) {
                invalid(
                    "FieldValueTooMany",
                    format!("Too many: {len}: must have at most {max} items"),
                );
            }
            if let Some(min) = limit("minItems").filter(|m| len < *m) {
                invalid(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {len}: {path} in body should have at least {min} items"
                    ),
                );
            }
            check_list_uniqueness(schema, items, path, causes);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::Object(map) => {
            let len = map.len() as u64;
            if let Some(max) = limit("maxProperties").filter(|m| len > *m) {
                invalid(
                    "FieldValueTooMany",
                    format!("Too many: {len}: must have at most {max} items"),
                );
            }
            if let Some(min) = limit("minProperties").filter(|m| len < *m) {
                invalid(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {len}: {path} in body should have at least {min} properties"
                    ),
                );
            }
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = required.as_str()
                    && !map.contains_key(name)
                {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        field: child(path, name),
                        message: "Required value".to_string(),
                    });
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, v) in map {
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = properties.and_then(|p| p.get(key)).or(additional) {
                    check(s, v, &child(path, key), causes);
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: map` items must be unique by their keys, `set` items by value.
fn check_list_uniqueness(schema: &Value, items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| k.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let identity = match list_type {
            Some("map") => {
                let mut id = serde_json::Map::new();
                for k in &keys {
                    id.insert(k.to_string(), item.get(*k).cloned().unwrap_or(Value::Null));
                }
                Value::Object(id)
            }
            Some("set") => item.clone(),
            _ => return,
        };
        if !seen.insert(identity.to_string()) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("{path}[{i}]"),
                message: format!("Duplicate value: {identity}"),
            });
        }
    }
}
