//! How objects go out, per the client's Accept header: as stored (with the requested
//! apiVersion), as `PartialObjectMetadata` (metadata-only clients such as kube-runtime's
//! metadata watcher), or as a `meta.k8s.io/v1` `Table` (what `kubectl get` asks for), whose
//! columns are a CRD's additionalPrinterColumns after Name, or Name and Age.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceType};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Full,
    Metadata,
    Table,
}

/// The representation one request asked for.
pub(crate) struct Presentation {
    rt: Arc<ResourceType>,
    api_version: String,
    format: Format,
}

fn metadata_of(mut object: Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"].take()})
}

/// A `.a.b.c` JSONPath (the only form our printer columns use).
fn lookup<'a>(object: &'a Value, json_path: &str) -> Option<&'a Value> {
    json_path
        .trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(object, |v, field| v.get(field))
}

/// Ages the way kubectl shows them: 45s, 3m12s, 25m, 5h, 3d.
fn human_age(timestamp: &str) -> Option<String> {
    let then: jiff::Timestamp = timestamp.parse().ok()?;
    let secs = jiff::Timestamp::now().duration_since(then).as_secs().max(0);
    Some(match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    })
}

impl Presentation {
    pub(crate) fn new(rt: Arc<ResourceType>, version: &str, accept: &str) -> Self {
        // Accept lists alternatives in preference order; the first one we serve wins.
        let format = accept
            .split(',')
            .find_map(|alternative| {
                if alternative.contains("as=PartialObjectMetadata") {
                    Some(Format::Metadata)
                } else if alternative.contains("as=Table") {
                    Some(Format::Table)
                } else if alternative.contains("json") || alternative.contains("*/*") {
                    Some(Format::Full)
                } else {
                    None
                }
            })
            .unwrap_or(Format::Full);
        Self {
            api_version: rt.api_version(version),
            rt,
            format,
        }
    }

    fn columns(&self) -> Vec<PrinterColumn> {
        let name = PrinterColumn {
            name: "Name".into(),
            type_: "string".into(),
            format: "name".into(),
            json_path: ".metadata.name".into(),
            priority: 0,
        };
        let age = PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            json_path: ".metadata.creationTimestamp".into(),
            priority: 0,
        };
        let custom = &self.rt.printer_columns;
        let mut columns = vec![name];
        if custom.is_empty() {
            columns.push(age);
        } else {
            columns.extend(custom.iter().cloned());
        }
        columns
    }

    fn table(&self, objects: Vec<Value>, list_metadata: Value) -> Value {
        let columns = self.columns();
        let definitions: Vec<Value> = columns
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": "", "priority": c.priority}))
            .collect();
        let rows: Vec<Value> = objects
            .into_iter()
            .map(|object| {
                let cells: Vec<Value> = columns
                    .iter()
                    .map(|c| match lookup(&object, &c.json_path) {
                        Some(Value::String(s)) if c.type_ == "date" => {
                            human_age(s).map(Value::String).unwrap_or(Value::Null)
                        }
                        Some(v) => v.clone(),
                        None => Value::Null,
                    })
                    .collect();
                json!({"cells": cells, "object": metadata_of(object)})
            })
            .collect();
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "Table", "metadata": list_metadata, "columnDefinitions": definitions, "rows": rows})
    }

    /// One object (get, write responses, watch events).
    pub(crate) fn object(&self, mut object: Value) -> Value {
        match self.format {
            Format::Metadata => metadata_of(object),
            Format::Table => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                self.table(vec![object], json!({"resourceVersion": rv}))
            }
            Format::Full => {
                object["apiVersion"] = json!(self.api_version);
                object
            }
        }
    }

    /// A list response with its list metadata.
    pub(crate) fn list(&self, items: Vec<Value>, metadata: Value) -> Value {
        match self.format {
            Format::Table => self.table(items, metadata),
            Format::Metadata => {
                let items: Vec<Value> = items.into_iter().map(metadata_of).collect();
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": metadata, "items": items})
            }
            Format::Full => {
                // Items of built-in (typed) lists carry no apiVersion and kind; those of custom
                // resources (unstructured) do.
                let custom = self.rt.is_custom();
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|o| {
                        let mut item = self.object(o);
                        if !custom && let Some(map) = item.as_object_mut() {
                            map.remove("apiVersion");
                            map.remove("kind");
                        }
                        item
                    })
                    .collect();
                json!({"apiVersion": self.api_version, "kind": format!("{}List", self.rt.kind), "metadata": metadata, "items": items})
            }
        }
    }

    /// A BOOKMARK event's object: only a resourceVersion (and the end-of-initial-events mark).
    pub(crate) fn bookmark(&self, rv: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let (api_version, kind) = match self.format {
            Format::Full => (self.api_version.clone(), self.rt.kind.clone()),
            Format::Metadata => (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadata".to_string(),
            ),
            Format::Table => ("meta.k8s.io/v1".to_string(), "Table".to_string()),
        };
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata})
    }
}
