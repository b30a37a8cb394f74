//! The resource types the stand-in serves: the built-in kinds the operator touches and every
//! registered CustomResourceDefinition, plus the discovery documents (`/api`, `/apis`,
//! `/apis/<group>/<version>`) that kubectl and dynamic clients read to find them.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::validation::CrdSchema;

/// How one resource (group + plural) behaves.
#[derive(Debug)]
pub(crate) struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// Served versions; objects are stored once and read back under any of them.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Writes to the main resource ignore `status`; `/status` writes change only `status`.
    pub status_subresource: bool,
    /// `metadata.generation` is kept (starts at 1, bumps on non-metadata/status changes).
    pub tracks_generation: bool,
    /// Present for custom resources: structural schema, defaults and CEL rules.
    pub schema: Option<CrdSchema>,
    /// A CRD's additionalPrinterColumns, for `kubectl get` tables.
    pub printer_columns: Vec<PrinterColumn>,
}

/// One `additionalPrinterColumns` entry.
#[derive(Clone, Debug)]
pub(crate) struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub json_path: String,
    pub priority: i64,
}

impl ResourceType {
    /// `v1` for the core group, `<group>/<version>` otherwise.
    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The store key prefix: objects are shared by all versions of a resource.
    pub(crate) fn store_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// `secrets` or `connectorcredentials.reconnect.dev`, as error messages name resources.
    pub(crate) fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Secret` or `ConnectorCredential.reconnect.dev`, as `Invalid` messages name kinds.
    pub(crate) fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub(crate) fn is_custom(&self) -> bool {
        self.schema.is_some()
    }

    /// Whether a PUT without `metadata.resourceVersion` is accepted. kube-apiserver refuses
    /// it for custom resources and CRDs; the built-in types served here allow it.
    pub(crate) fn allows_unconditional_update(&self) -> bool {
        !(self.is_custom() || self.group == CRD_GROUP && self.plural == CRD_PLURAL)
    }

    fn discovery_entry(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        verbs.sort_unstable();
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// All resource types the stand-in knows, in registration order.
#[derive(Debug)]
pub(crate) struct Registry {
    types: Vec<Arc<ResourceType>>,
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status_subresource: bool,
    tracks_generation: bool,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        status_subresource: false,
        tracks_generation: false,
    },
    Builtin {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        status_subresource: false,
        tracks_generation: false,
    },
    Builtin {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        status_subresource: false,
        tracks_generation: false,
    },
    Builtin {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        status_subresource: false,
        tracks_generation: false,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        status_subresource: true,
        tracks_generation: true,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        kind: "StatefulSet",
        namespaced: true,
        short_names: &["sts"],
        status_subresource: true,
        tracks_generation: true,
    },
    Builtin {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        status_subresource: true,
        tracks_generation: true,
    },
    // CRDs themselves, so they can be created through the API (status is set by the server).
    Builtin {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        status_subresource: false,
        tracks_generation: true,
    },
];

/// Group and plural of the CRD resource, whose creation registers a new type.
pub(crate) const CRD_GROUP: &str = "apiextensions.k8s.io";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

impl Registry {
    pub(crate) fn with_builtins() -> Self {
        let types = BUILTINS
            .iter()
            .map(|b| {
                Arc::new(ResourceType {
                    group: b.group.to_string(),
                    versions: vec![b.version.to_string()],
                    plural: b.plural.to_string(),
                    singular: b.kind.to_lowercase(),
                    kind: b.kind.to_string(),
                    namespaced: b.namespaced,
                    short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
                    categories: Vec::new(),
                    status_subresource: b.status_subresource,
                    tracks_generation: b.tracks_generation,
                    schema: None,
                    printer_columns: Vec::new(),
                })
            })
            .collect();
        Self { types }
    }

    pub(crate) fn find(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| {
                t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version)
            })
            .cloned()
    }

    /// Registers (or replaces) the type a CRD describes; `crd` is the CRD object as JSON.
    pub(crate) fn register_crd(&mut self, crd: &Value) -> Result<Arc<ResourceType>, String> {
        let spec = crd.get("spec").ok_or("CRD has no spec")?;
        let text = |v: &Value, field: &str| -> Result<String, String> {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or(format!("CRD lacks {field}"))
        };
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let group = text(spec, "group")?;
        let names = spec.get("names").ok_or("CRD has no spec.names")?;
        let plural = text(names, "plural")?;
        let kind = text(names, "kind")?;
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
        let versions: Vec<&Value> = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("CRD has no spec.versions")?
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
            .collect();
        // All versions share one schema here (no conversion); the storage version's wins.
        let storage = versions
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .or(versions.first())
            .ok_or("CRD serves no version")?;
        let schema = storage
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        let status_subresource = storage.pointer("/subresources/status").is_some();
        let printer_columns = storage
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(PrinterColumn {
                    name: c.get("name")?.as_str()?.to_string(),
                    type_: c.get("type")?.as_str()?.to_string(),
                    format: c
                        .get("format")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    json_path: c.get("jsonPath")?.as_str()?.to_string(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
            })
            .collect();
        let rt = Arc::new(ResourceType {
            group,
            versions: versions
                .iter()
                .filter_map(|v| v.get("name")?.as_str().map(str::to_string))
                .collect(),
            plural,
            singular,
            kind,
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status_subresource,
            tracks_generation: true,
            schema: Some(CrdSchema::new(schema)?),
            printer_columns,
        });
        self.types
            .retain(|t| !(t.group == rt.group && t.plural == rt.plural));
        self.types.push(rt.clone());
        Ok(rt)
    }

    /// Stops serving a resource (its CRD was deleted).
    pub(crate) fn unregister(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|t| !(t.group == group && t.plural == plural));
    }

    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    for v in &t.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                None => groups.push((t.group.clone(), t.versions.clone())),
            }
        }
        groups
    }

    /// `GET /api`.
    pub(crate) fn core_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })
    }

    fn group_document(group: &str, versions: &[String]) -> Value {
        let versions: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        json!({"name": group, "versions": versions.clone(), "preferredVersion": versions[0].clone()})
    }

    /// `GET /apis`.
    pub(crate) fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(g, v)| Self::group_document(g, v))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/<group>`.
    pub(crate) fn group(&self, group: &str) -> Option<Value> {
        let (g, v) = self.groups().into_iter().find(|(g, _)| g == group)?;
        let mut doc = Self::group_document(&g, &v);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `GET /openapi/v3`: one document per served group-version.
    pub(crate) fn openapi_index(&self) -> Value {
        let mut paths = serde_json::Map::new();
        let mut seen = BTreeSet::new();
        for t in &self.types {
            for v in &t.versions {
                let path = if t.group.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{}/{v}", t.group)
                };
                if seen.insert(path.clone()) {
                    paths.insert(
                        path.clone(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{path}")}),
                    );
                }
            }
        }
        json!({"paths": paths})
    }

    /// `GET /openapi/v3/...`: a schema per kind of the group-version, so that `kubectl apply`
    /// can validate client-side: a custom resource's is its CRD schema; a built-in type's
    /// accepts any object (the stand-in does not carry their schemas; the server validates
    /// what it knows on write).
    pub(crate) fn openapi(&self, group: &str, version: &str) -> Option<Value> {
        let mut schemas = serde_json::Map::new();
        let mut paths = serde_json::Map::new();
        for t in self
            .types
            .iter()
            .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        {
            let mut schema = t
                .schema
                .as_ref()
                .map(|s| s.raw.clone())
                .unwrap_or_else(|| json!({"type": "object"}));
            if let Some(map) = schema.as_object_mut() {
                if t.schema.is_none() {
                    map.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                }
                map.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": group, "version": version, "kind": t.kind}]),
                );
            }
            let name = if group.is_empty() {
                format!("io.k8s.api.core.{version}.{}", t.kind)
            } else {
                let reversed: Vec<&str> = group.split('.').rev().collect();
                format!("{}.{version}.{}", reversed.join("."), t.kind)
            };
            schemas.insert(name, schema);
            // The PATCH operation with the `fieldValidation` parameter is what kubectl looks
            // for to validate on the server (`kubectl apply` without `--validate=false`).
            let prefix = if group.is_empty() {
                format!("/api/{version}")
            } else {
                format!("/apis/{group}/{version}")
            };
            let path = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{prefix}/{}/{{name}}", t.plural)
            };
            paths.insert(
                path,
                json!({"patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {},
                }}),
            );
        }
        if schemas.is_empty() {
            return None;
        }
        Some(json!({
            "openapi": "3.0.0",
            "info": {"title": "reconnect stand-in", "version": "v0"},
            "paths": paths,
            "components": {"schemas": schemas},
        }))
    }

    /// `GET /api/v1` or `GET /apis/<group>/<version>`.
    pub(crate) fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
            .flat_map(|t| t.discovery_entry())
            .collect();
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        )
    }
}
