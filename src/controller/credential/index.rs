//! Which credentials read (source) or own (target) each Secret.
//!
//! A Secret's watch event must wake the credentials that refer to it. Scanning every cached
//! credential per event costs O(credentials) for each of the cluster's Secret events (tens
//! of thousands of them at a cold start); this index answers in O(1). It is kept from the
//! same watch events that fill the credential cache.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;

use super::CredentialHead;

/// Namespace -> name -> `T`: each namespace's name is kept once, and lookups need no
/// owned key.
type ByNamespace<T> = HashMap<Box<str>, HashMap<Box<str>, T>>;

/// Both directions, kept compact: at 10,000 credentials this is about 400 bytes each.
#[derive(Default)]
struct Maps {
    /// Secret -> the credentials that refer to it (sorted; almost always one, so a boxed
    /// slice of exactly that size rather than a vector's spare capacity).
    by_secret: ByNamespace<Box<[Box<str>]>>,
    /// Credential -> the Secrets it refers to (to undo its entries when it changes or goes).
    by_credential: ByNamespace<[Box<str>; 2]>,
}

impl Maps {
    fn remove(&mut self, ns: &str, cred: &str) {
        let Some(creds) = self.by_credential.get_mut(ns) else {
            return;
        };
        let Some(secrets) = creds.remove(cred) else {
            return;
        };
        if creds.is_empty() {
            self.by_credential.remove(ns);
        }
        let Some(by_secret) = self.by_secret.get_mut(ns) else {
            return;
        };
        for secret in &secrets {
            if let Some(names) = by_secret.get_mut(secret) {
                *names = names.iter().filter(|n| ***n != *cred).cloned().collect();
                if names.is_empty() {
                    by_secret.remove(secret);
                }
            }
        }
        if by_secret.is_empty() {
            self.by_secret.remove(ns);
        }
    }

    fn insert(&mut self, cred: &CredentialHead) {
        let ns = cred.namespace().unwrap_or_default();
        let name = cred.name_any();
        self.remove(&ns, &name);
        let secrets: [Box<str>; 2] = [
            cred.source_secret_name().into(),
            cred.target_secret_name().into(),
        ];
        let by_secret = self.by_secret.entry(ns.as_str().into()).or_default();
        for secret in &secrets {
            let names = by_secret.entry(secret.clone()).or_default();
            if let Err(at) = names.binary_search_by(|n| (**n).cmp(name.as_str())) {
                let mut grown = std::mem::take(names).into_vec();
                grown.insert(at, name.as_str().into());
                *names = grown.into_boxed_slice();
            }
        }
        self.by_credential
            .entry(ns.into())
            .or_default()
            .insert(name.into(), secrets);
    }

    fn lookup(&self, ns: &str, secret: &str) -> Vec<String> {
        self.by_secret
            .get(ns)
            .and_then(|m| m.get(secret))
            .map(|names| names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
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
    pub fn observe(&self, event: &Event<DeserializeGuard<CredentialHead>>) {
        match event {
            Event::Init => {
                *self.relist.lock().unwrap_or_else(|e| e.into_inner()) = Some(Maps::default());
            }
            Event::InitApply(guard) | Event::Apply(guard) => {
                let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                match &guard.0 {
                    Ok(cred) => current.insert(cred),
                    Err(_) => {
                        current.remove(&guard.namespace().unwrap_or_default(), &guard.name_any())
                    }
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
                self.current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&guard.namespace().unwrap_or_default(), &guard.name_any());
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
            .lookup(namespace, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::DeserializeGuard;

    fn cred(name: &str, source: &str, target: Option<&str>) -> DeserializeGuard<CredentialHead> {
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
        let guard: DeserializeGuard<CredentialHead> =
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
