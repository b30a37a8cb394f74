//! Kubernetes Events, as both controllers publish them.
//!
//! An event repeated within [`SERIES_WINDOW`] (same type, reason, action, object and related
//! object) is folded into the first one as a series, the way kube's recorder does and with
//! the first note kept. A [`Note`] therefore carries an `action` that names what was done
//! and, where one event per object version matters (each rejected revision), the related
//! object, so distinct happenings keep distinct texts.
//!
//! Why not kube's `Recorder`: it keeps a full copy of every event it published for six
//! minutes and sweeps that whole cache on every publish. After a cold start of 10,000
//! credentials that is about 30 MiB and 10,000 x 10,000 comparisons. [`Publisher`] keeps
//! 40 bytes per recent event (a hash of its identity, when it was first and last seen, and
//! its count), sweeps at most once a minute, and writes only the series on a repeat. A
//! series whose event the API server already dropped (events live an hour) starts anew.
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::warn;

use super::Context;
use crate::api::conditions::Reason;

/// The Events API caps notes at 1 kB.
const MAX_NOTE: usize = 1000;

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Note {
    pub type_: EventType,
    pub reason: Reason,
    /// What the operator did or tried (`Validate`, `Restore`, `Probe`, ...).
    pub action: &'static str,
    pub note: String,
    /// A second object the event is about (the source Secret version of a revision).
    pub related: Option<ObjectReference>,
}

impl Note {
    /// A Normal event for `action`.
    pub fn normal(reason: Reason, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            action,
            note: note.into(),
            related: None,
        }
    }

    /// A Warning event for `action`.
    pub fn warning(reason: Reason, action: &'static str, note: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            ..Self::normal(reason, action, note)
        }
    }

    /// The same event, about `related` too.
    pub fn about(mut self, related: Option<ObjectReference>) -> Self {
        self.related = related;
        self
    }
}

/// Publishes one event; a failure to publish is logged, never fatal.
pub(crate) async fn publish(ctx: &Context, reference: &ObjectReference, note: Note) {
    let now = ctx.clock.now();
    if let Err(err) = ctx.events.publish(reference, &note, now).await {
        warn!(error = %err, reason = note.reason.as_str(), "could not publish event");
    }
}

/// How long a published event takes repeats into its series (kube's recorder: 6 minutes).
pub(crate) const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// How often remembered events older than [`SERIES_WINDOW`] are dropped.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_mins(1);

/// Publishes events for one reporting controller and instance, folding repeats.
pub(crate) struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    by_key: HashMap<u64, Series>,
    swept: Option<Timestamp>,
}

/// What is remembered of one published event.
#[derive(Clone, Copy)]
struct Series {
    /// Its name's suffix: when it was first published (nanoseconds, as kube names events).
    first: i128,
    /// By the operator's clock, for the window.
    last: Timestamp,
    count: i32,
}

impl Publisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Mutex::default(),
        }
    }

    /// Remembered events.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.recent().by_key.len()
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `note` about `regarding` at `now` (the operator's clock): a new event, or
    /// the next count of the series of the same event published within the window.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        note: &Note,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        let key = identity(regarding, note);
        let earlier = {
            let mut recent = self.recent();
            if recent
                .swept
                .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
            {
                recent
                    .by_key
                    .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
                recent.swept = Some(now);
            }
            recent
                .by_key
                .get(&key)
                .copied()
                .filter(|s| now.duration_since(s.last) < SERIES_WINDOW)
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let wall = Timestamp::now();
        let series = match earlier {
            Some(series) => {
                let count = series.count + 1;
                let name = event_name(regarding, &self.controller, series.first);
                let patch = json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(wall) },
                });
                match events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Some(Series {
                        last: now,
                        count,
                        ..series
                    }),
                    // The API server dropped it (events expire): start a new one.
                    Err(kube::Error::Api(status)) if status.code == 404 => None,
                    Err(err) => return Err(err),
                }
            }
            None => None,
        };
        let series = match series {
            Some(series) => series,
            None => {
                let first = wall.as_nanosecond();
                let event = self.event(regarding, note, first, wall);
                events.create(&PostParams::default(), &event).await?;
                Series {
                    first,
                    last: now,
                    count: 1,
                }
            }
        };
        self.recent().by_key.insert(key, series);
        Ok(())
    }

    fn event(&self, regarding: &ObjectReference, note: &Note, first: i128, at: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(regarding, &self.controller, first)),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(note.action.to_owned()),
            reason: Some(note.reason.as_str().to_owned()),
            note: Some(truncated(&note.note)),
            type_: Some(
                match note.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(at)),
            regarding: Some(regarding.clone()),
            related: note.related.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

/// At most [`MAX_NOTE`] bytes, cut on a character boundary.
fn truncated(note: &str) -> String {
    let mut end = note.len().min(MAX_NOTE);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_owned()
}

/// `<object>.<first published, ns, hex>`, as kube names events.
fn event_name(regarding: &ObjectReference, controller: &str, first: i128) -> String {
    format!(
        "{}.{first:x}",
        regarding.name.as_deref().unwrap_or(controller)
    )
}

/// What makes two events the same happening: type, reason, action, and both objects.
fn identity(regarding: &ObjectReference, note: &Note) -> u64 {
    fn object(r: &ObjectReference, h: &mut impl Hasher) {
        (&r.api_version, &r.kind, &r.namespace, &r.name, &r.uid).hash(h);
    }
    let mut h = std::hash::DefaultHasher::new();
    (note.type_ == EventType::Warning, note.reason, note.action).hash(&mut h);
    object(regarding, &mut h);
    note.related.is_some().hash(&mut h);
    if let Some(related) = &note.related {
        object(related, &mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use kube::api::{DeleteParams, ListParams};
    use reconnect_apiserver::{TestCluster, test_cluster};

    use super::*;

    /// On the stand-in, or on the real control plane when `KUBEBUILDER_ASSETS` is set: a
    /// series is a merge patch the real API server validates.
    async fn setup() -> (TestCluster, Publisher, Api<Event>) {
        let cluster = test_cluster().await;
        let publisher = Publisher::new(
            cluster.client.clone(),
            "reconnect-operator",
            Some("pod-1".into()),
        );
        let events = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        (cluster, publisher, events)
    }

    fn object(ns: &str, name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("reconnect.dev/v1alpha1".into()),
            kind: Some("ConnectorCredential".into()),
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    async fn all(events: &Api<Event>) -> Vec<Event> {
        let mut list = events
            .list(&ListParams::default())
            .await
            .expect("list")
            .items;
        list.sort_by_key(|e| e.metadata.name.clone());
        list
    }

    fn at(mins: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_mins(1_000_000 + mins)
    }

    #[tokio::test]
    async fn a_repeat_within_the_window_counts_in_the_first_event() {
        let (cluster, publisher, events) = setup().await;
        let object = |name: &str| object(&cluster.namespace, name);
        let lost = Note::warning(Reason::ConnectionLost, "Probe", "first text");
        publisher.publish(&object("a"), &lost, at(0)).await.unwrap();
        let again = Note::warning(Reason::ConnectionLost, "Probe", "second text");
        publisher
            .publish(&object("a"), &again, at(5))
            .await
            .unwrap();
        publisher
            .publish(&object("a"), &again, at(10))
            .await
            .unwrap();

        let list = all(&events).await;
        assert_eq!(list.len(), 1, "{list:?}");
        let event = &list[0];
        assert_eq!(event.series.as_ref().map(|s| s.count), Some(3));
        assert_eq!(event.note.as_deref(), Some("first text"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("ConnectionLost"));
        assert_eq!(event.action.as_deref(), Some("Probe"));
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("reconnect-operator")
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(event.regarding.as_ref(), Some(&object("a")));
        assert!(event.event_time.is_some());
    }

    #[tokio::test]
    async fn a_repeat_after_the_window_or_about_another_object_is_a_new_event() {
        let (cluster, publisher, events) = setup().await;
        let object = |name: &str| object(&cluster.namespace, name);
        let note = Note::normal(Reason::Connected, "Validate", "ok");
        publisher.publish(&object("a"), &note, at(0)).await.unwrap();
        // Six minutes after the last sighting: a new event.
        publisher.publish(&object("a"), &note, at(6)).await.unwrap();
        // Another object, another reason, another related object: new events.
        publisher.publish(&object("b"), &note, at(6)).await.unwrap();
        let other = Note::normal(Reason::Rotated, "Validate", "ok");
        publisher
            .publish(&object("a"), &other, at(6))
            .await
            .unwrap();
        let about = note.clone().about(Some(object("source")));
        publisher
            .publish(&object("a"), &about, at(6))
            .await
            .unwrap();

        let list = all(&events).await;
        assert_eq!(list.len(), 5, "{list:?}");
        assert!(list.iter().all(|e| e.series.is_none()), "{list:?}");
    }

    #[tokio::test]
    async fn a_series_whose_event_is_gone_starts_anew() {
        let (cluster, publisher, events) = setup().await;
        let object = |name: &str| object(&cluster.namespace, name);
        let note = Note::warning(Reason::ConnectionLost, "Probe", "down");
        publisher.publish(&object("a"), &note, at(0)).await.unwrap();
        let first = all(&events).await.remove(0);
        events
            .delete(
                first.metadata.name.as_deref().unwrap(),
                &DeleteParams::default(),
            )
            .await
            .unwrap();
        publisher.publish(&object("a"), &note, at(1)).await.unwrap();
        let list = all(&events).await;
        assert_eq!(list.len(), 1, "{list:?}");
        assert!(list[0].series.is_none());
        assert_ne!(list[0].metadata.name, first.metadata.name);
        // And the new one is the series from now on.
        publisher.publish(&object("a"), &note, at(2)).await.unwrap();
        let list = all(&events).await;
        assert_eq!(list[0].series.as_ref().map(|s| s.count), Some(2));
    }

    #[tokio::test]
    async fn memory_is_released_after_the_window() {
        let (cluster, publisher, _) = setup().await;
        let object = |name: &str| object(&cluster.namespace, name);
        let note = Note::normal(Reason::Connected, "Validate", "ok");
        for i in 0..20 {
            publisher
                .publish(&object(&format!("c{i}")), &note, at(0))
                .await
                .unwrap();
        }
        assert_eq!(publisher.remembered(), 20);
        publisher
            .publish(&object("late"), &note, at(7))
            .await
            .unwrap();
        assert_eq!(publisher.remembered(), 1, "the 20 older ones are swept");
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_character_boundary() {
        let long = "é".repeat(MAX_NOTE);
        let cut = truncated(&long);
        assert!(cut.len() <= MAX_NOTE);
        assert_eq!(
            cut.len(),
            MAX_NOTE,
            "é is two bytes: 500 of them fit exactly"
        );
        let odd = format!("x{long}");
        assert_eq!(truncated(&odd).len(), MAX_NOTE - 1);
        assert_eq!(truncated("short"), "short");
    }
}
