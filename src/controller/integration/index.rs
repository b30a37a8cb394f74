//! Which Integrations use which ConnectorCredential, so a credential's watch event wakes
//! exactly the Integrations that reference it without listing them all per event.
//!
//! Each Integration reconcile records its current references ([`Index::set`]); references it
//! dropped are forgotten there too, and a deleted Integration is forgotten by
//! [`Index::remove`] (called when a reconcile finds it gone, or when the watch mapper finds
//! it no longer in the controller's cache).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

type Key = (String, String);

#[derive(Default)]
struct Inner {
    /// (namespace, credential) -> Integrations referencing it.
    users: HashMap<Key, BTreeSet<String>>,
    /// (namespace, Integration) -> credentials it references.
    refs: HashMap<Key, BTreeSet<String>>,
}

/// The credential -> Integrations index. Shared between the reconciler and the watch mapper.
#[derive(Default)]
pub(crate) struct Index(Mutex<Inner>);

impl Index {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that Integration `ns/integration` references exactly `credentials`.
    pub(crate) fn set(&self, ns: &str, integration: &str, credentials: BTreeSet<String>) {
        let mut inner = self.inner();
        let key = (ns.to_owned(), integration.to_owned());
        let old = inner.refs.remove(&key).unwrap_or_default();
        for dropped in old.difference(&credentials) {
            let cred_key = (ns.to_owned(), dropped.clone());
            if let Some(users) = inner.users.get_mut(&cred_key) {
                users.remove(integration);
                if users.is_empty() {
                    inner.users.remove(&cred_key);
                }
            }
        }
        for cred in &credentials {
            inner
                .users
                .entry((ns.to_owned(), cred.clone()))
                .or_default()
                .insert(integration.to_owned());
        }
        if !credentials.is_empty() {
            inner.refs.insert(key, credentials);
        }
    }

    /// Forgets Integration `ns/integration`.
    pub(crate) fn remove(&self, ns: &str, integration: &str) {
        self.set(ns, integration, BTreeSet::new());
    }

    /// The Integrations in `ns` that reference credential `credential`.
    pub(crate) fn users(&self, ns: &str, credential: &str) -> Vec<String> {
        self.inner()
            .users
            .get(&(ns.to_owned(), credential.to_owned()))
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.inner();
        (inner.users.len(), inner.refs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn maps_credentials_to_the_integrations_that_reference_them() {
        let index = Index::default();
        index.set(
            "acme",
            "procore-sharepoint",
            set(&["procore", "sharepoint"]),
        );
        index.set("acme", "procore-dropbox", set(&["procore", "dropbox"]));
        index.set("other", "procore-sharepoint", set(&["procore"]));
        assert_eq!(
            index.users("acme", "procore"),
            ["procore-dropbox", "procore-sharepoint"]
        );
        assert_eq!(index.users("acme", "sharepoint"), ["procore-sharepoint"]);
        assert_eq!(index.users("other", "procore"), ["procore-sharepoint"]);
        assert!(index.users("acme", "simpro").is_empty());
    }

    #[test]
    fn a_dropped_reference_and_a_removed_integration_are_forgotten() {
        let index = Index::default();
        index.set("acme", "sync", set(&["procore", "sharepoint"]));
        index.set("acme", "sync", set(&["procore", "dropbox"]));
        assert!(index.users("acme", "sharepoint").is_empty());
        assert_eq!(index.users("acme", "dropbox"), ["sync"]);
        index.remove("acme", "sync");
        assert!(index.users("acme", "procore").is_empty());
        assert_eq!(index.len(), (0, 0), "nothing left behind");
    }
}
