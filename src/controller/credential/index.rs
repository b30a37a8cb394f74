//! Which credentials read (source) or own (target) each Secret.
//!
//! A Secret's watch event must wake the credentials that refer to it. Scanning every cached
//! credential per event costs O(credentials) for each of the cluster's Secret events (tens
//! of thousands of them at a cold start); this index answers in O(1). It is kept from the
//! same watch events that fill the credential cache.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;

use crate::api::ConnectorCredential;

/// (namespace, name) of an object.
type Key = (String, String);

#[derive(Default)]
struct Maps {
    /// Secret -> the credentials that refer to it.
    by_secret: HashMap<Key, BTreeSet<String>>,
    /// Credential -> the Secrets it refers to (to undo its entries when it changes or goes).
    by_credential: HashMap<Key, [String; 2]>,
}

impl Maps {
    fn remove(&mut self, cred: &Key) {
        let Some(secrets) = self.by_credential.remove(cred) else {
            return;
        };
        for secret in secrets {
            let key = (cred.0.clone(), secret);
            if let Some(names) = self.by_secret.get_mut(&key) {
                names.remove(&cred.1);
                if names.is_empty() {
                    self.by_secret.remove(&key);
                }
            }
        }
    }

    fn insert(&mut self, cred: &ConnectorCredential) {
        let key = (cred.namespace().unwrap_or_default(), cred.name_any());
        self.remove(&key);
        let secrets = [cred.spec.secret_ref.name.clone(), cred.target_secret_name()];
        for secret in &secrets {
            self.by_secret
                .entry((key.0.clone(), secret.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        self.by_credential.insert(key, secrets);
    }
}

/// The Secret -> credentials index.
#[derive(Default)]
pub(crate) struct SecretIndex {
    current: Mutex<Maps>,
    /// Filled during a relist; replaces `current` when the relist is complete, so
    /// credentials deleted while the watch was down drop out.
    relist: Mutex<Option<Maps>>,
}

impl SecretIndex {
    /// Takes in one event of the credential watch. (A poisoned lock only means a panic
    /// elsewhere mid-update: the maps stay usable, so poisoning is ignored.)
    pub fn observe(&self, event: &Event<DeserializeGuard<ConnectorCredential>>) {
        match event {
            Event::Init => {
                *self.relist.lock().unwrap_or_else(|e| e.into_inner()) = Some(Maps::default());
            }
            Event::InitApply(guard) | Event::Apply(guard) => {
                let key = (guard.namespace().unwrap_or_default(), guard.name_any());
                let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                match &guard.0 {
                    Ok(cred) => current.insert(cred),
                    Err(_) => current.remove(&key),
                }
                if matches!(event, Event::InitApply(_))
                    && let Some(relist) = self
                        .relist
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                    && let Ok(cred) = &guard.0
                {
                    relist.insert(cred);
                }
            }
            Event::Delete(guard) => {
                let key = (guard.namespace().unwrap_or_default(), guard.name_any());
                self.current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            }
            Event::InitDone => {
                if let Some(relist) = self.relist.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = relist;
                }
            }
        }
    }

    /// The credentials in `namespace` that read or own Secret `secret`.
    pub fn credentials(&self, namespace: &str, secret: &str) -> Vec<String> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_secret
            .get(&(namespace.to_owned(), secret.to_owned()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::DeserializeGuard;

    fn cred(
        name: &str,
        source: &str,
        target: Option<&str>,
    ) -> DeserializeGuard<ConnectorCredential> {
        let mut spec = serde_json::json!({
            "provider": "procore",
            "auth": "RefreshToken",
            "secretRef": {"name": source},
        });
        if let Some(t) = target {
            spec["target"] = serde_json::json!({"name": t});
        }
        let value = serde_json::json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "ConnectorCredential",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
        });
        let guard: DeserializeGuard<ConnectorCredential> =
            serde_json::from_value(value).expect("a credential");
        assert!(guard.0.is_ok(), "{:?}", guard.0.err());
        guard
    }

    #[test]
    fn finds_the_credentials_of_a_secret_and_follows_changes_and_relists() {
        let index = SecretIndex::default();
        index.observe(&Event::Apply(cred("a", "src", Some("tgt-a"))));
        index.observe(&Event::Apply(cred("b", "src", Some("tgt-b"))));
        assert_eq!(index.credentials("ns", "src"), ["a", "b"]);
        assert_eq!(index.credentials("ns", "tgt-a"), ["a"]);
        assert!(index.credentials("other", "src").is_empty());

        // A changed source moves the credential; a deleted one drops out.
        index.observe(&Event::Apply(cred("a", "src2", Some("tgt-a"))));
        assert_eq!(index.credentials("ns", "src"), ["b"]);
        assert_eq!(index.credentials("ns", "src2"), ["a"]);
        index.observe(&Event::Delete(cred("b", "src", Some("tgt-b"))));
        assert!(index.credentials("ns", "src").is_empty());
        assert!(index.credentials("ns", "tgt-b").is_empty());

        // A relist that no longer holds `a` (deleted while the watch was down) drops it
        // once complete; until then lookups still answer.
        index.observe(&Event::Init);
        index.observe(&Event::InitApply(cred("c", "src3", Some("tgt-c"))));
        assert_eq!(index.credentials("ns", "src2"), ["a"]);
        index.observe(&Event::InitDone);
        assert!(index.credentials("ns", "src2").is_empty());
        assert_eq!(index.credentials("ns", "src3"), ["c"]);
    }
}
