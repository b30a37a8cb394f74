//! A limit on rollouts in flight across every Integration, so that a mass rotation (one
//! GitOps commit rotating hundreds of Secrets) cannot restart every workload at once.
//!
//! A rollout holds its slot until its workload reports it complete (all replicas updated
//! and available, observed at its current generation) or [`Rollouts::hold`] has passed,
//! whichever comes first. A workload that no controller reports on (no `observedGeneration`
//! in its status) or that is gone holds nothing. An Integration's restart targets roll
//! together, so it waits until slots for all of them are free (or, with more targets than
//! the limit, until no rollout is in flight).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use kube::Client;
use tokio::time::Instant;

use super::workload;
use crate::api::{RestartKind, RestartTarget};
use crate::metrics::Metrics;

/// Rollouts in flight at once by default.
pub const DEFAULT_MAX_CONCURRENT_ROLLOUTS: usize = 10;

/// How long a rollout holds its slot at most by default (a workload that never becomes
/// available must not block the others forever).
pub const DEFAULT_ROLLOUT_HOLD: Duration = Duration::from_secs(10 * 60);

/// How soon an Integration waiting for a slot looks again.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
struct InFlight {
    namespace: String,
    kind: RestartKind,
    name: String,
    since: Instant,
}

/// The rollouts in flight.
pub(crate) struct Rollouts {
    /// 0: no limit.
    limit: usize,
    hold: Duration,
    in_flight: Mutex<Vec<InFlight>>,
    /// The Integrations waiting for slots, by key.
    waiting: Mutex<BTreeSet<String>>,
}

impl Rollouts {
    pub fn new(limit: usize, hold: Duration) -> Self {
        Self {
            limit,
            hold,
            in_flight: Mutex::default(),
            waiting: Mutex::default(),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, Vec<InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A poisoned lock only means a panic elsewhere mid-update: the set stays usable.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes slots for Integration `key` to roll `targets` in `namespace` now, or says how
    /// long to wait (it then counts as waiting until it gets its turn or is forgotten).
    pub async fn admit(
        &self,
        client: &Client,
        metrics: &Metrics,
        key: &str,
        namespace: &str,
        targets: &[RestartTarget],
    ) -> Result<(), Duration> {
        let now = Instant::now();
        let needed = targets.len().max(1);
        let fits = |n: usize| self.limit == 0 || n == 0 || n + needed <= self.limit;
        // Which rollouts are over, read without holding the lock (a slow read must not hold
        // up every other Integration, and a cancelled admit must not lose slots).
        let full = {
            let in_flight = self.in_flight();
            (!fits(in_flight.len())).then(|| in_flight.clone())
        };
        let mut over = Vec::new();
        for rollout in full.unwrap_or_default() {
            let expired = now.saturating_duration_since(rollout.since) >= self.hold;
            if expired || complete(client, &rollout).await {
                over.push(rollout);
            }
        }
        let mut in_flight = self.in_flight();
        in_flight.retain(|r| !over.contains(r));
        let admitted = fits(in_flight.len());
        if admitted {
            in_flight.extend(targets.iter().map(|t| InFlight {
                namespace: namespace.to_owned(),
                kind: t.kind,
                name: t.name.clone(),
                since: now,
            }));
            self.waiting().remove(key);
        } else {
            self.waiting().insert(key.to_owned());
        }
        metrics.rollouts(in_flight.len(), self.waiting().len());
        if admitted { Ok(()) } else { Err(RETRY) }
    }

    /// Integration `key` no longer waits (it went away, or has nothing to roll now).
    pub fn forget(&self, key: &str) {
        self.waiting().remove(key);
    }
}

/// Whether a rollout is over (see [`workload::rolled_out`]).
async fn complete(client: &Client, rollout: &InFlight) -> bool {
    workload::rolled_out(client, &rollout.namespace, rollout.kind, &rollout.name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> RestartTarget {
        serde_json::from_value(serde_json::json!({"kind": "Deployment", "name": name})).unwrap()
    }

    /// A client whose API server accepts connections and never answers.
    async fn silent_client() -> (Client, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        (Client::try_from(config).unwrap(), server)
    }

    #[tokio::test]
    async fn an_admit_cancelled_while_reading_loses_no_slot() {
        let (client, server) = silent_client().await;
        let metrics = Metrics::new();
        let rollouts = Rollouts::new(1, Duration::from_secs(600));
        let admit = |key: &'static str, name: &'static str| {
            let (client, metrics, rollouts) = (&client, &metrics, &rollouts);
            async move {
                rollouts
                    .admit(client, metrics, key, "ns", &[target(name)])
                    .await
            }
        };
        assert_eq!(admit("a", "one").await, Ok(()));
        // The limit is reached: the next admit reads whether "one" is done, and the server
        // never answers; the caller gives up.
        let gave_up = tokio::time::timeout(Duration::from_millis(200), admit("b", "two")).await;
        assert!(gave_up.is_err(), "the read hangs");
        // "one" still holds its slot: nothing was lost by the cancelled admit.
        assert_eq!(rollouts.in_flight().len(), 1);
        assert_eq!(rollouts.in_flight()[0].name, "one");
        server.abort();
    }
}
