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

#[derive(Debug, Clone)]
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
    in_flight: tokio::sync::Mutex<Vec<InFlight>>,
    /// The Integrations waiting for slots, by key.
    waiting: Mutex<BTreeSet<String>>,
}

impl Rollouts {
    pub fn new(limit: usize, hold: Duration) -> Self {
        Self {
            limit,
            hold,
            in_flight: tokio::sync::Mutex::default(),
            waiting: Mutex::default(),
        }
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
        let mut in_flight = self.in_flight.lock().await;
        let now = Instant::now();
        let needed = targets.len().max(1);
        let fits = |n: usize| self.limit == 0 || n == 0 || n + needed <= self.limit;
        if !fits(in_flight.len()) {
            // Free the slots of rollouts that finished (or held theirs long enough).
            let mut still = Vec::with_capacity(in_flight.len());
            for rollout in in_flight.drain(..) {
                let expired = now.saturating_duration_since(rollout.since) >= self.hold;
                if !expired && !complete(client, &rollout).await {
                    still.push(rollout);
                }
            }
            *in_flight = still;
        }
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
