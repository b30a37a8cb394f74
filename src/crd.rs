//! The CustomResourceDefinitions, generated from the Rust types in [`crate::api`].
//!
//! `reconnect-operator crd` prints them; `crds/` holds the committed output and a test fails
//! when the two drift.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{ConnectorCredential, Integration};

/// Every CRD the operator serves, with the file name each has under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "connectorcredentials.reconnect.dev.yaml",
            ConnectorCredential::crd(),
        ),
        ("integrations.reconnect.dev.yaml", Integration::crd()),
    ]
}

/// One CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

/// All CRDs as one multi-document YAML stream, in [`all`]'s order.
pub fn all_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, crd) in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

/// Writes each CRD to `dir/<file name>`, as committed under `crds/`.
pub fn write_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, crd) in all() {
        let yaml = to_yaml(&crd).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(file), yaml)?;
    }
    Ok(())
}
