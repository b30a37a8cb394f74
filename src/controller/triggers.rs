//! What wakes a controller, and what must not: a controller's own writes.
//!
//! A status write changes an object's resourceVersion but not its `metadata.generation`, so
//! [`spec_changes`] passes an object only when its spec or its deletion changed (or it is
//! gone): the controller's status writes never trigger its next reconcile, and the plan's
//! own requeue decides when to look again. Writes to Secrets are recognised by the
//! resourceVersion the write returned ([`OwnWrites`]).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::watcher;

/// What about an object may wake its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    generation: Option<i64>,
    deleting: bool,
}

fn fingerprint<K: Resource>(obj: &K) -> Fingerprint {
    Fingerprint {
        generation: obj.meta().generation,
        deleting: obj.meta().deletion_timestamp.is_some(),
    }
}

fn key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    match &meta.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    }
}

/// The objects of a watch whose spec or deletion changed, and the ones deleted; changes to
/// status, labels, annotations and finalizers alone are dropped.
pub(crate) fn spec_changes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: Resource,
{
    changes(events, fingerprint)
}

/// The objects of a watch whose `project`ion changed (or that are new), and the ones
/// deleted: a watcher that wakes only on what its reader looks at.
pub(crate) fn changes<K, F>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    project: impl Fn(&K) -> F,
) -> impl Stream<Item = Result<K, watcher::Error>>
where
    K: Resource,
    F: PartialEq,
{
    let mut seen: HashMap<String, F> = HashMap::new();
    events.flat_map(move |event| {
        let out = match event {
            Err(err) => Some(Err(err)),
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let now = project(&obj);
                let key = key(&obj);
                let changed = seen.get(&key) != Some(&now);
                seen.insert(key, now);
                changed.then_some(Ok(obj))
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&key(&obj));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        futures::stream::iter(out)
    })
}

/// The resourceVersions this process gave the Secrets it wrote, by namespace and name.
#[derive(Debug, Default)]
pub(crate) struct OwnWrites(Mutex<HashMap<(String, String), String>>);

impl OwnWrites {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a write that left `ns/name` at `resource_version`.
    pub fn wrote(&self, ns: &str, name: &str, resource_version: Option<String>) {
        let key = (ns.to_owned(), name.to_owned());
        match resource_version {
            Some(rv) => self.map().insert(key, rv),
            None => self.map().remove(&key),
        };
    }

    /// Whether `ns/name` at `resource_version` is exactly what this process wrote last.
    pub fn is_own(&self, ns: &str, name: &str, resource_version: Option<&str>) -> bool {
        resource_version.is_some_and(|rv| {
            self.map()
                .get(&(ns.to_owned(), name.to_owned()))
                .is_some_and(|own| own == rv)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn obj(generation: i64, rv: &str, deleting: bool) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("c".into());
        cm.metadata.uid = Some("u".into());
        cm.metadata.generation = Some(generation);
        cm.metadata.resource_version = Some(rv.into());
        cm.metadata.deletion_timestamp = deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH));
        cm
    }

    #[tokio::test]
    async fn only_spec_deletion_and_removal_pass() {
        use watcher::Event::*;
        let events = vec![
            Ok(Init),
            Ok(InitApply(obj(1, "1", false))),
            Ok(InitDone),
            Ok(Apply(obj(1, "2", false))), // a status write
            Ok(Apply(obj(2, "3", false))), // a spec change
            Ok(Apply(obj(2, "4", false))), // a finalizer
            Ok(Apply(obj(3, "5", true))),  // deletion requested
            Ok(Delete(obj(3, "5", true))), // gone
        ];
        let passed: Vec<String> = spec_changes(futures::stream::iter(events))
            .map(|r| r.unwrap().metadata.resource_version.unwrap())
            .collect()
            .await;
        assert_eq!(passed, ["1", "3", "5", "5"]);
    }

    #[test]
    fn own_writes_are_recognised_by_resource_version() {
        let own = OwnWrites::default();
        own.wrote("ns", "s", Some("7".into()));
        assert!(own.is_own("ns", "s", Some("7")));
        assert!(
            !own.is_own("ns", "s", Some("8")),
            "a later edit is not ours"
        );
        assert!(!own.is_own("ns", "other", Some("7")));
        assert!(!own.is_own("ns", "s", None));
    }
}
