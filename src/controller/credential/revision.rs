//! The revision of a credential: a digest of the source Secret material the auth type uses.
//!
//! It is how the operator tells "this Secret changed" from "this Secret was re-applied with
//! the same values", and it is the only trace of the material that appears in status and
//! annotations (a digest, never the value).

use sha2::{Digest, Sha256};

use crate::providers::CredentialMaterial;

/// `sha256:<hex>` over the credential fields in a fixed order (client_id, client_secret,
/// refresh_token, api_key), each as name, length and value, so no two materials collide by
/// concatenation.
pub(crate) fn of(material: &CredentialMaterial) -> String {
    let mut hasher = Sha256::new();
    for (field, value) in material.fields() {
        if let Some(value) = value {
            let value = value.expose().as_bytes();
            hasher.update(field.key().as_bytes());
            hasher.update([0]);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value);
        }
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Redacted;

    fn material(id: &str, secret: &str) -> CredentialMaterial {
        CredentialMaterial {
            client_id: Some(Redacted::new(id)),
            client_secret: Some(Redacted::new(secret)),
            ..Default::default()
        }
    }

    #[test]
    fn same_material_same_revision() {
        assert_eq!(of(&material("a", "b")), of(&material("a", "b")));
    }

    #[test]
    fn any_change_changes_the_revision() {
        let base = of(&material("a", "b"));
        assert_ne!(base, of(&material("a", "c")));
        assert_ne!(base, of(&material("b", "b")));
        // Moving bytes between fields is a change too.
        assert_ne!(of(&material("ab", "")), of(&material("a", "b")));
    }

    #[test]
    fn revision_is_a_sha256_digest_not_the_value() {
        let rev = of(&material("client-canary", "secret-canary"));
        assert!(rev.starts_with("sha256:"));
        assert_eq!(rev.len(), 7 + 64);
        assert!(!rev.contains("canary"));
    }
}
