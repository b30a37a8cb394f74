//! Whose turn it is: urgent work (a changed source Secret or spec, a credential not yet
//! validated) before routine work (interval probes and refreshes).
//!
//! Routine reconciles may take at most half of the reconcile workers. One that finds them
//! all busy is put off for a moment (with jitter) before it reads anything, so it frees its
//! worker at once: a rotation never waits behind thousands of probes that fell due
//! together. Urgent reconciles never wait here. The queue depth and the time each
//! credential waited for its turn are exported as metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::providers::budget::Priority;

/// How long a routine reconcile is put off when the routine workers are busy, at the least
/// (plus up to a second of jitter).
const PUT_OFF: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Entry {
    /// A Secret event asked for this credential and it has not run since.
    urgent_since: Option<Instant>,
    /// Put off since then, for want of a routine worker.
    deferred_since: Option<Instant>,
    deferrals: u32,
}

/// A reconcile's turn.
#[derive(Debug)]
pub(crate) enum Turn {
    /// Go now; a routine turn holds its worker permit until dropped.
    Go {
        priority: Priority,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Come back after this long, without reading or calling anything.
    PutOff(Duration),
}

/// The urgent marks and the routine workers.
pub(crate) struct Queue {
    routine: Option<Arc<Semaphore>>,
    entries: Mutex<HashMap<String, Entry>>,
    urgent: std::sync::atomic::AtomicUsize,
    deferred: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// A queue for controllers running `concurrency` reconciles at once (0: unbounded, and
    /// then routine work is not bounded either).
    pub fn new(concurrency: u16, metrics: Arc<Metrics>) -> Self {
        let routine = (concurrency > 0)
            .then(|| Arc::new(Semaphore::new(usize::from(concurrency / 2).max(1))));
        Self {
            routine,
            entries: Mutex::default(),
            urgent: Default::default(),
            deferred: Default::default(),
            metrics,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means a panic elsewhere mid-update: the map stays usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics
            .queue_depth("urgent", self.urgent.load(Relaxed));
        self.metrics
            .queue_depth("routine", self.deferred.load(Relaxed));
    }

    /// A change (a Secret event) asks for `key` to run soon.
    pub fn mark_urgent(&self, key: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut entries = self.entries();
        let entry = entries.entry(key.to_owned()).or_default();
        if entry.urgent_since.is_none() {
            entry.urgent_since = Some(Instant::now());
            self.urgent.fetch_add(1, Relaxed);
        }
        drop(entries);
        self.publish();
    }

    /// Decides whether `key` runs now. `routine`: the cached object says this wake can only
    /// be routine upkeep (its spec is validated and an active credential is in place).
    pub fn turn(&self, key: &str, routine: bool) -> Turn {
        use std::sync::atomic::Ordering::Relaxed;
        let now = Instant::now();
        let mut entries = self.entries();
        let entry = entries.entry(key.to_owned()).or_default();
        let marked = entry.urgent_since.take();
        if let Some(since) = marked {
            self.urgent.fetch_sub(1, Relaxed);
            self.metrics
                .queue_waited("urgent", now.saturating_duration_since(since));
        }
        let routine = routine && marked.is_none();
        let turn = if !routine {
            Turn::Go {
                priority: Priority::Urgent,
                permit: None,
            }
        } else {
            let permit = match &self.routine {
                None => Ok(None),
                Some(slots) => slots.clone().try_acquire_owned().map(Some),
            };
            match permit {
                Ok(permit) => {
                    if let Some(since) = entry.deferred_since.take() {
                        self.deferred.fetch_sub(1, Relaxed);
                        self.metrics
                            .queue_waited("routine", now.saturating_duration_since(since));
                    }
                    entry.deferrals = 0;
                    Turn::Go {
                        priority: Priority::Routine,
                        permit,
                    }
                }
                Err(_) => {
                    if entry.deferred_since.is_none() {
                        entry.deferred_since = Some(now);
                        self.deferred.fetch_add(1, Relaxed);
                    }
                    entry.deferrals = entry.deferrals.saturating_add(1);
                    Turn::PutOff(put_off(key, entry.deferrals))
                }
            }
        };
        if !routine && entry.deferred_since.take().is_some() {
            self.deferred.fetch_sub(1, Relaxed);
        }
        let idle = entry.urgent_since.is_none() && entry.deferred_since.is_none();
        if idle {
            entries.remove(key);
        }
        drop(entries);
        self.publish();
        turn
    }

    /// Forgets a deleted object.
    pub fn forget(&self, key: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(entry) = self.entries().remove(key) {
            if entry.urgent_since.is_some() {
                self.urgent.fetch_sub(1, Relaxed);
            }
            if entry.deferred_since.is_some() {
                self.deferred.fetch_sub(1, Relaxed);
            }
        }
        self.publish();
    }
}

/// [`PUT_OFF`] plus up to a second, spread by key and attempt so that thousands of
/// routine reconciles put off together do not come back together.
fn put_off(key: &str, attempt: u32) -> Duration {
    let hash = super::fnv1a(key.bytes().chain(attempt.to_le_bytes()));
    PUT_OFF + Duration::from_millis(hash % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(turn: &Turn) -> Option<Priority> {
        match turn {
            Turn::Go { priority, .. } => Some(*priority),
            Turn::PutOff(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn routine_work_takes_half_the_workers_and_urgent_work_never_waits() {
        let metrics = Arc::new(Metrics::new());
        let queue = Queue::new(4, metrics.clone());
        // Two routine turns fill the routine half; the third is put off.
        let a = queue.turn("a", true);
        let b = queue.turn("b", true);
        assert_eq!(go(&a), Some(Priority::Routine));
        assert_eq!(go(&b), Some(Priority::Routine));
        let c = queue.turn("c", true);
        let Turn::PutOff(wait) = c else {
            panic!("a third routine turn ran: {c:?}")
        };
        assert!((PUT_OFF..PUT_OFF * 2).contains(&wait), "{wait:?}");
        assert!(
            metrics
                .encode()
                .contains("reconnect_queue_depth{priority=\"routine\"} 1")
        );
        // A rotation goes at once, and its wait since the Secret event is recorded.
        queue.mark_urgent("d");
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(go(&queue.turn("d", true)), Some(Priority::Urgent));
        assert_eq!(go(&queue.turn("e", false)), Some(Priority::Urgent));
        let text = metrics.encode();
        assert!(
            text.contains("reconnect_queue_depth{priority=\"urgent\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("reconnect_queue_wait_seconds_count{priority=\"urgent\"} 1"),
            "{text}"
        );
        // A routine worker freed: the put-off credential runs, its wait recorded.
        drop(a);
        tokio::time::advance(wait).await;
        assert_eq!(go(&queue.turn("c", true)), Some(Priority::Routine));
        let text = metrics.encode();
        assert!(
            text.contains("reconnect_queue_depth{priority=\"routine\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("reconnect_queue_wait_seconds_count{priority=\"routine\"} 1"),
            "{text}"
        );
        drop(b);
        // Nothing is kept for idle keys.
        assert!(queue.entries().is_empty());
    }

    #[test]
    fn put_off_times_spread_apart() {
        let waits: std::collections::BTreeSet<Duration> =
            (0..100).map(|i| put_off(&format!("k{i}"), 1)).collect();
        assert!(waits.len() > 50, "{} distinct waits", waits.len());
        assert!(waits.iter().all(|w| (PUT_OFF..PUT_OFF * 2).contains(w)));
    }
}
