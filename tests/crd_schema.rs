//! The generated CRDs: drift against `crds/`, descriptions for `kubectl explain`, the CEL
//! rules, and admission of the shipped examples and the deliberately invalid fixtures.
//!
//! Admission is checked the way kube-apiserver does it, with two independent engines: a
//! JSON-schema validator for the structural schema (types, enums, patterns, bounds,
//! required fields), an unknown-field walk (kubectl's default strict field validation),
//! and kube-cel for the `x-kubernetes-validations` CEL rules.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every version has an openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

fn crd_for(doc: &Value) -> Option<CustomResourceDefinition> {
    let api_version = doc["apiVersion"].as_str()?;
    let kind = doc["kind"].as_str()?;
    reconnect_operator::crd::all()
        .into_iter()
        .map(|(_, crd)| crd)
        .find(|crd| {
            crd.spec.names.kind == kind
                && format!("{}/{}", crd.spec.group, crd.spec.versions[0].name) == api_version
        })
}

/// One reason the API server would refuse a document: a field path and a message.
#[derive(Debug)]
struct Violation {
    path: String,
    message: String,
}

fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Fields the schema does not declare, as strict field validation reports them.
fn unknown_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                // The API server itself owns the object's envelope.
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(child_schema), _) => {
                        unknown_fields(child_schema, child, &child_path, out)
                    }
                    (None, Some(additional)) if additional.is_object() => {
                        unknown_fields(additional, child, &child_path, out)
                    }
                    (None, _) if props.is_some() => out.push(Violation {
                        path: path.to_owned(),
                        message: format!("unknown field \"{key}\""),
                    }),
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Every reason the API server would refuse `doc`; empty when it would admit it.
fn admission_violations(doc: &Value) -> Vec<Violation> {
    let crd = crd_for(doc).expect("document is one of our kinds");
    let schema = schema_of(&crd);
    let mut out = Vec::new();

    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .expect("the generated schema is a valid JSON schema");
    for err in validator.iter_errors(doc) {
        out.push(Violation {
            path: pointer_to_path(err.instance_path().as_str()),
            message: err.to_string(),
        });
    }
    unknown_fields(&schema, doc, "", &mut out);
    // CEL rules only run on structurally valid objects, as in the API server.
    if out.is_empty()
        && let Err(errors) = kube_cel::Validator::new().validate(&schema, doc, None)
    {
        for err in errors.into_vec() {
            out.push(Violation {
                path: err.field_path.clone(),
                message: err.message.clone(),
            });
        }
    }
    out
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn committed_crds_match_the_rust_types() {
    for (file, crd) in reconnect_operator::crd::all() {
        let generated = reconnect_operator::crd::to_yaml(&crd).unwrap();
        for dir in ["crds", "charts/reconnect-operator/crds"] {
            let path = repo().join(dir).join(file);
            if dir.starts_with("charts") && !path.parent().unwrap().exists() {
                continue;
            }
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == generated,
                "{} differs from the Rust types: run `cargo run -- crd --dir {dir}`",
                path.display()
            );
        }
    }
}

#[test]
fn crd_subcommand_prints_every_committed_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut expected = String::new();
    for (file, _) in reconnect_operator::crd::all() {
        expected.push_str("---\n");
        expected.push_str(&std::fs::read_to_string(repo().join("crds").join(file)).unwrap());
    }
    assert_eq!(printed, expected);
}

/// Walks a schema and collects the paths of properties without a description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            let child_path = format!("{path}.{key}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // metav1.Condition and metav1.Time come from k8s-openapi with their own docs;
            // apiVersion/kind/metadata are documented by Kubernetes itself.
            let inherited =
                ["apiVersion", "kind", "metadata"].contains(&key.as_str()) && path.is_empty();
            if !described && !inherited {
                out.push(child_path.clone());
            }
            undocumented(child, &child_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    for (file, crd) in reconnect_operator::crd::all() {
        let mut missing = Vec::new();
        undocumented(&schema_of(&crd), "", &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: fields without description: {missing:?}"
        );
    }
}

fn rules_at<'a>(schema: &'a Value, path: &[&str]) -> Vec<&'a str> {
    let mut node = schema;
    for key in path {
        node = if *key == "[]" {
            &node["items"]
        } else {
            &node["properties"][*key]
        };
    }
    node["x-kubernetes-validations"]
        .as_array()
        .map(|rules| rules.iter().filter_map(|r| r["rule"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn cel_rules_are_in_the_generated_schemas() {
    let crds = reconnect_operator::crd::all();
    let cred = schema_of(&crds[0].1);
    let integ = schema_of(&crds[1].1);
    let expectations: [(&Value, &[&str], &str); 12] = [
        (&cred, &["spec"], "self.auth == 'ApiKey'"),
        (&cred, &["spec"], "self.auth == 'RefreshToken'"),
        (
            &cred,
            &["spec"],
            "self.auth in ['ClientCredentials', 'RefreshToken']",
        ),
        (&cred, &["spec"], "has(self.endpoint)"),
        (&cred, &["spec"], "'tenantId' in self.params"),
        (&cred, &["spec"], "self.target.name != self.secretRef.name"),
        (&cred, &["spec", "endpoint"], "self.startsWith('https://')"),
        (&cred, &["spec", "params"], "self['companyId'].matches"),
        (
            &cred,
            &["spec", "validation", "interval"],
            "duration(self) >= duration('1m')",
        ),
        (
            &cred,
            &["spec", "validation", "timeout"],
            "duration(self) <= duration('5m')",
        ),
        (&cred, &["spec", "expiryWarning"], "duration('8760h')"),
        (
            &integ,
            &["spec", "connectors"],
            "self.exists_one(d, d.name == c.name)",
        ),
    ];
    for (schema, path, fragment) in expectations {
        let rules = rules_at(schema, path);
        assert!(
            rules.iter().any(|r| r.contains(fragment)),
            "no rule containing {fragment:?} at {path:?}; rules there: {rules:?}"
        );
    }
    assert!(!rules_at(&cred, &["spec", "refreshBefore"]).is_empty());
}

#[test]
fn every_example_is_admitted() {
    let dir = repo().join("examples");
    let mut checked = 0;
    for file in yaml_files(&dir) {
        for doc in yaml_documents(&file) {
            if crd_for(&doc).is_none() {
                assert_eq!(doc["kind"], "Secret", "{}: unexpected kind", file.display());
                continue;
            }
            let violations = admission_violations(&doc);
            assert!(
                violations.is_empty(),
                "{} {}: {violations:?}",
                file.display(),
                doc["metadata"]["name"]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 9,
        "only {checked} custom resources found in examples/"
    );
}

#[test]
fn every_invalid_fixture_is_rejected_for_its_own_reason() {
    let dir = repo().join("tests/fixtures/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 15);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{}: no `# {key}:` header", file.display()))
        };
        let (want_path, want_message) = (header("expect-path"), header("expect-message"));
        let docs = yaml_documents(&file);
        assert_eq!(
            docs.len(),
            1,
            "{}: one document per fixture",
            file.display()
        );
        let violations = admission_violations(&docs[0]);
        assert!(
            violations
                .iter()
                .any(|v| v.path == want_path && v.message.contains(&want_message)),
            "{}: expected a violation at {want_path} containing {want_message:?}, got {violations:?}",
            file.display()
        );
    }
}

#[test]
fn cel_auth_rules_agree_with_provider_supported_auth() {
    use reconnect_operator::api::{AuthType, Provider};
    for provider in Provider::ALL {
        for auth in [
            AuthType::ClientCredentials,
            AuthType::RefreshToken,
            AuthType::ApiKey,
        ] {
            let doc = serde_json::json!({
                "apiVersion": "reconnect.dev/v1alpha1",
                "kind": "ConnectorCredential",
                "metadata": {"name": "x"},
                "spec": {
                    "provider": provider.as_str(),
                    "auth": auth.as_str(),
                    "secretRef": {"name": "x"},
                    "endpoint": "https://example.com",
                    "params": {"tenantId": "t"},
                },
            });
            let admitted = admission_violations(&doc).is_empty();
            let supported = provider.supported_auth().contains(&auth);
            assert_eq!(admitted, supported, "{provider} with {auth}");
        }
    }
}

#[test]
fn schema_defaults_match_the_rust_defaults() {
    use reconnect_operator::api::ConnectorCredential;
    let crds = reconnect_operator::crd::all();
    let minimal = serde_json::json!({
        "apiVersion": "reconnect.dev/v1alpha1",
        "kind": "ConnectorCredential",
        "metadata": {"name": "x"},
        "spec": {"provider": "google", "auth": "RefreshToken", "secretRef": {"name": "x"}},
    });
    // What the API server stores for a minimal object, read back through the Rust type...
    let defaulted = kube_cel::apply_defaults(&schema_of(&crds[0].1), &minimal);
    let by_server: ConnectorCredential = serde_json::from_value(defaulted).unwrap();
    // ...equals what serde fills in when the same object is read without server defaults.
    let by_serde: ConnectorCredential = serde_json::from_value(minimal).unwrap();
    assert_eq!(by_server.spec, by_serde.spec);
    assert_eq!(by_server.spec.validation.interval, "15m");
}
