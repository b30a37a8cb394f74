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

/// An object's identity, hashed: its uid, else namespace and name. (Eight bytes per object
/// instead of a 36-byte string and its allocation; a collision of two objects' hashes is a
/// 1 in 2^64 chance.)
fn key<K: Resource>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let meta = obj.meta();
    let mut h = std::hash::DefaultHasher::new();
    match &meta.uid {
        Some(uid) => uid.hash(&mut h),
        None => (&meta.namespace, &meta.name).hash(&mut h),
    }
    h.finish()
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
    let mut seen: HashMap<u64, F> = HashMap::new();
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

/// The Secrets this process writes, by namespace and name: the resourceVersion its last
/// write gave each, or a write still in flight.
///
/// A real API server may deliver the watch event of a write before the write's own answer
/// arrives, so an event is also taken as our own while a write to that Secret is in flight;
/// its resourceVersion is kept, and when the write lands [`Flight::landed`] says whether
/// anything else was seen meanwhile, so the caller looks again instead of missing it.
#[derive(Debug, Default)]
///
/// Names and resourceVersions are kept as 64-bit hashes ([`digest`]): one entry per target
/// Secret, so at 10,000 credentials strings would cost about 1.5 MiB for nothing.
pub(crate) struct OwnWrites(Mutex<HashMap<u64, Written>>);

#[derive(Debug)]
enum Written {
    /// A write is in flight; the resourceVersions of the events seen meanwhile.
    InFlight(Vec<u64>),
    /// The last write landed at this resourceVersion.
    At(u64),
}

/// A 64-bit hash of `parts`, as [`OwnWrites`] keeps names and resourceVersions.
fn digest(parts: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// A write in flight, from [`OwnWrites::begin`]; dropped without [`Flight::landed`] (the
/// write failed or was cancelled) it forgets the Secret, so every later event counts.
#[must_use = "a flight that never lands treats the Secret's events as foreign"]
pub(crate) struct Flight<'a> {
    writes: &'a OwnWrites,
    key: Option<u64>,
}

impl Flight<'_> {
    /// The write landed at `resource_version`. Returns `true` when an event with another
    /// resourceVersion arrived while it was in flight: someone else wrote the Secret too.
    pub fn landed(mut self, resource_version: Option<String>) -> bool {
        let key = self.key.take().expect("a flight lands once");
        let mut map = self.writes.map();
        let seen = match map.remove(&key) {
            Some(Written::InFlight(seen)) => seen,
            _ => Vec::new(),
        };
        match resource_version {
            Some(rv) => {
                let rv = digest(&[&rv]);
                let foreign = seen.iter().any(|s| *s != rv);
                map.insert(key, Written::At(rv));
                foreign
            }
            None => !seen.is_empty(),
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.writes.map().remove(&key);
        }
    }
}

impl OwnWrites {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Written>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a write of `ns/name`.
    pub fn begin(&self, ns: &str, name: &str) -> Flight<'_> {
        let key = digest(&[ns, name]);
        self.map().insert(key, Written::InFlight(Vec::new()));
        Flight {
            writes: self,
            key: Some(key),
        }
    }

    /// Whether the event of `ns/name` at `resource_version` is this process's own write:
    /// exactly what its last write left, or seen while a write is in flight.
    pub fn is_own(&self, ns: &str, name: &str, resource_version: Option<&str>) -> bool {
        let Some(rv) = resource_version else {
            return false;
        };
        let rv = digest(&[rv]);
        match self.map().get_mut(&digest(&[ns, name])) {
            Some(Written::At(own)) => *own == rv,
            Some(Written::InFlight(seen)) => {
                seen.push(rv);
                true
            }
            None => false,
        }
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
        assert!(!own.begin("ns", "s").landed(Some("7".into())));
        assert!(own.is_own("ns", "s", Some("7")));
        assert!(
            !own.is_own("ns", "s", Some("8")),
            "a later edit is not ours"
        );
        assert!(!own.is_own("ns", "other", Some("7")));
        assert!(!own.is_own("ns", "s", None));
    }

    #[test]
    fn events_during_a_write_are_held_and_a_foreign_one_is_reported_when_it_lands() {
        let own = OwnWrites::default();
        // Our own event may arrive before the write's answer (a real API server does that).
        let flight = own.begin("ns", "s");
        assert!(own.is_own("ns", "s", Some("9")));
        assert!(
            !flight.landed(Some("9".into())),
            "only our own event was seen"
        );
        // Someone else's write seen in flight: held, then reported.
        let flight = own.begin("ns", "s");
        assert!(own.is_own("ns", "s", Some("10")));
        assert!(own.is_own("ns", "s", Some("11")));
        assert!(flight.landed(Some("11".into())), "10 was not ours");
        assert!(!own.is_own("ns", "s", Some("12")));
        // A write that fails or is cancelled forgets the Secret: its events count again.
        let flight = own.begin("ns", "s");
        drop(flight);
        assert!(!own.is_own("ns", "s", Some("11")));
        let flight = own.begin("ns", "s");
        assert!(own.is_own("ns", "s", Some("13")));
        assert!(flight.landed(None), "an event seen while the write failed");
    }
}
