//! Prometheus metrics, served as text on `/metrics`.
//!
//! Labels are low-cardinality by construction: controller, provider, call, outcome, reason
//! and priority come from fixed vocabularies. The only object labels are the namespace and
//! name of our own ConnectorCredentials, which alerts need to name the credential, and only
//! for the credentials that need attention (a phase other than Connected) or have a known
//! expiry: the number of series does not grow with the number of healthy credentials.
//! `reconnect_credentials` counts credentials by provider and phase. No label ever carries
//! Secret material or an error message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::api::{Phase, Provider};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    name: String,
    provider: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    namespace: String,
    name: String,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarningLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountLabels {
    provider: &'static str,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    provider: &'static str,
    priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCallLabels {
    provider: &'static str,
    call: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLatencyLabels {
    provider: &'static str,
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    provider: &'static str,
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Waits from milliseconds to about an hour.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

/// Every metric the operator exposes.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    credential_phase: Family<PhaseLabels, Gauge>,
    credential_expiry: Family<CredentialLabels, Gauge>,
    credential_expiry_warning: Family<WarningLabels, Gauge>,
    provider_requests: Family<ProviderCallLabels, Counter>,
    provider_duration: Family<ProviderLatencyLabels, Histogram, fn() -> Histogram>,
    rotations: Family<RotationLabels, Counter>,
    credentials: Family<CountLabels, Gauge>,
    queue_depth: Family<PriorityLabels, Gauge>,
    queue_wait: Family<PriorityLabels, Histogram, fn() -> Histogram>,
    budget_wait: Family<BudgetLabels, Histogram, fn() -> Histogram>,
    budget_paused: Family<ProviderLabels, Gauge>,
    rollouts_in_flight: Gauge,
    rollouts_waiting: Gauge,
    /// Each credential's provider and phase, for the counts and to remove its old series.
    phases: Mutex<HashMap<(String, String), (Provider, Phase)>>,
    /// Serialises encoding with label removal, so a scrape never sees half a phase set.
    encode_lock: Mutex<()>,
}

/// Registers `metric` as `name` and returns it: the registry holds a handle to the same
/// series.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reconnect");
        let r = &mut registry;
        // In registration order, which is the order of the text format.
        Self {
            reconciles: register(
                r,
                "reconcile",
                "Reconcile runs per controller",
                Family::default(),
            ),
            reconcile_errors: register(
                r,
                "reconcile_errors",
                "Failed reconcile runs per controller and reason",
                Family::default(),
            ),
            reconcile_duration: register(
                r,
                "reconcile_duration_seconds",
                "Reconcile duration per controller",
                Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    latency_histogram,
                ),
            ),
            credential_phase: register(
                r,
                "credential_phase",
                "1 for the phase of a ConnectorCredential that is not Connected (no series while Connected)",
                Family::default(),
            ),
            credentials: register(
                r,
                "credentials",
                "ConnectorCredentials by provider and phase",
                Family::default(),
            ),
            credential_expiry: register(
                r,
                "credential_expiry_timestamp_seconds",
                "When a credential itself expires (unix seconds), where the provider says",
                Family::default(),
            ),
            credential_expiry_warning: register(
                r,
                "credential_expiry_warning_seconds",
                "A credential's expiryWarning window in seconds (for credentials with a known expiry)",
                Family::default(),
            ),
            provider_requests: register(
                r,
                "provider_requests",
                "Provider calls by provider, call and outcome",
                Family::default(),
            ),
            provider_duration: register(
                r,
                "provider_request_duration_seconds",
                "Provider call latency by provider and call",
                Family::<ProviderLatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    latency_histogram,
                ),
            ),
            rotations: register(
                r,
                "rotations",
                "Credential rotations by provider and result (accepted, rejected)",
                Family::default(),
            ),
            queue_depth: register(
                r,
                "queue_depth",
                "Credentials waiting for their turn: urgent (a changed source or spec) and routine (probes and refreshes put off to leave room for urgent work)",
                Family::default(),
            ),
            queue_wait: register(
                r,
                "queue_wait_seconds",
                "How long a credential waited for its turn: urgent from the Secret change, routine from the time it was due",
                Family::<PriorityLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    wait_histogram,
                ),
            ),
            budget_wait: register(
                r,
                "provider_budget_wait_seconds",
                "How long a provider request waited for the provider's rate budget",
                Family::<BudgetLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    wait_histogram,
                ),
            ),
            budget_paused: register(
                r,
                "provider_budget_paused_hosts",
                "Provider hosts paused by a 429/Retry-After or an exhausted rate-limit quota",
                Family::default(),
            ),
            rollouts_in_flight: register(
                r,
                "rollouts_in_flight",
                "Integration restart targets rolling out now (bounded by --max-concurrent-rollouts)",
                Gauge::default(),
            ),
            rollouts_waiting: register(
                r,
                "rollouts_waiting",
                "Integration restarts waiting for a rollout slot",
                Gauge::default(),
            ),
            phases: Mutex::default(),
            encode_lock: Mutex::new(()),
            registry,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let _held = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// One reconcile of `controller` finished after `took`, failing with `error` if any.
    pub fn reconciled(
        &self,
        controller: &'static str,
        took: Duration,
        error: Option<&'static str>,
    ) {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { controller, reason })
                .inc();
        }
    }

    /// Records a credential's phase and expiry after a reconcile.
    pub fn credential(
        &self,
        namespace: &str,
        name: &str,
        provider: Provider,
        phase: Phase,
        expires_at: Option<jiff::Timestamp>,
        expiry_warning: Duration,
    ) {
        let _held = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        let before = self
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (provider, phase));
        if before != Some((provider, phase)) {
            if let Some((provider, phase)) = before {
                self.count(provider, phase, -1);
                self.credential_phase.remove(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    provider: provider.as_str(),
                    phase: phase.as_str(),
                });
            }
            self.count(provider, phase, 1);
            if phase != Phase::Connected {
                self.credential_phase
                    .get_or_create(&PhaseLabels {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        provider: provider.as_str(),
                        phase: phase.as_str(),
                    })
                    .set(1);
            }
        }
        let labels = CredentialLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provider: provider.as_str(),
        };
        let warning = WarningLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match expires_at {
            Some(t) => {
                self.credential_expiry
                    .get_or_create(&labels)
                    .set(t.as_second());
                self.credential_expiry_warning
                    .get_or_create(&warning)
                    .set(expiry_warning.as_secs() as i64);
            }
            None => {
                self.credential_expiry.remove(&labels);
                self.credential_expiry_warning.remove(&warning);
            }
        }
    }

    fn count(&self, provider: Provider, phase: Phase, by: i64) {
        self.credentials
            .get_or_create(&CountLabels {
                provider: provider.as_str(),
                phase: phase.as_str(),
            })
            .inc_by(by);
    }

    /// Forgets a deleted credential, so its series stop being exported.
    pub fn forget_credential(&self, namespace: &str, name: &str) {
        let _held = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        let Some((provider, phase)) = self
            .phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
        else {
            return;
        };
        self.count(provider, phase, -1);
        self.credential_phase.remove(&PhaseLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provider: provider.as_str(),
            phase: phase.as_str(),
        });
        self.credential_expiry.remove(&CredentialLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provider: provider.as_str(),
        });
        self.credential_expiry_warning.remove(&WarningLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    }

    /// How many credentials wait for their turn, by priority.
    pub fn queue_depth(&self, priority: &'static str, depth: usize) {
        self.queue_depth
            .get_or_create(&PriorityLabels { priority })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A credential waited `waited` for its turn.
    pub fn queue_waited(&self, priority: &'static str, waited: Duration) {
        self.queue_wait
            .get_or_create(&PriorityLabels { priority })
            .observe(waited.as_secs_f64());
    }

    /// A provider request waited `waited` for the provider's rate budget.
    pub fn budget_waited(&self, provider: Provider, priority: &'static str, waited: Duration) {
        self.budget_wait
            .get_or_create(&BudgetLabels {
                provider: provider.as_str(),
                priority,
            })
            .observe(waited.as_secs_f64());
    }

    /// How many of a provider's hosts are paused now.
    pub fn budget_paused(&self, provider: Provider, hosts: usize) {
        self.budget_paused
            .get_or_create(&ProviderLabels {
                provider: provider.as_str(),
            })
            .set(i64::try_from(hosts).unwrap_or(i64::MAX));
    }

    /// Rollouts in flight and waiting for a slot.
    pub fn rollouts(&self, in_flight: usize, waiting: usize) {
        self.rollouts_in_flight
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        self.rollouts_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// One provider call finished with `outcome` after `took`.
    pub fn provider_call(
        &self,
        provider: Provider,
        call: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.provider_requests
            .get_or_create(&ProviderCallLabels {
                provider: provider.as_str(),
                call,
                outcome,
            })
            .inc();
        self.provider_duration
            .get_or_create(&ProviderLatencyLabels {
                provider: provider.as_str(),
                call,
            })
            .observe(took.as_secs_f64());
    }

    /// A rotation was accepted or rejected.
    pub fn rotation(&self, provider: Provider, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.rotations
            .get_or_create(&RotationLabels {
                provider: provider.as_str(),
                result,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_documented_names() {
        let m = Metrics::new();
        m.reconciled(
            "connectorcredential",
            Duration::from_millis(3),
            Some("ConnectionLost"),
        );
        m.credential(
            "acme",
            "procore-sync",
            Provider::Procore,
            Phase::ConnectionLost,
            Some(jiff::Timestamp::from_second(1_900_000_000).unwrap()),
            Duration::from_secs(3600),
        );
        m.provider_call(
            Provider::Procore,
            "GET /rest/v1.0/me",
            "rate_limited",
            Duration::from_millis(5),
        );
        m.rotation(Provider::Procore, false);
        let text = m.encode();
        for line in [
            "reconnect_reconcile_total{controller=\"connectorcredential\"} 1",
            "reconnect_reconcile_errors_total{controller=\"connectorcredential\",reason=\"ConnectionLost\"} 1",
            "reconnect_reconcile_duration_seconds_count{controller=\"connectorcredential\"} 1",
            "reconnect_credential_phase{namespace=\"acme\",name=\"procore-sync\",provider=\"procore\",phase=\"ConnectionLost\"} 1",
            "reconnect_credentials{provider=\"procore\",phase=\"ConnectionLost\"} 1",
            "reconnect_credential_expiry_timestamp_seconds{namespace=\"acme\",name=\"procore-sync\",provider=\"procore\"} 1900000000",
            "reconnect_credential_expiry_warning_seconds{namespace=\"acme\",name=\"procore-sync\"} 3600",
            "reconnect_provider_requests_total{provider=\"procore\",call=\"GET /rest/v1.0/me\",outcome=\"rate_limited\"} 1",
            "reconnect_provider_request_duration_seconds_count{provider=\"procore\",call=\"GET /rest/v1.0/me\"} 1",
            "reconnect_rotations_total{provider=\"procore\",result=\"rejected\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_forgotten_credential_is_no_longer_exported() {
        let m = Metrics::new();
        m.credential(
            "acme",
            "gone",
            Provider::Google,
            Phase::ConnectionLost,
            None,
            Duration::from_secs(60),
        );
        assert!(m.encode().contains("name=\"gone\""));
        m.forget_credential("acme", "gone");
        let text = m.encode();
        assert!(!text.contains("name=\"gone\""), "{text}");
        assert!(
            text.contains("reconnect_credentials{provider=\"google\",phase=\"ConnectionLost\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn healthy_credentials_are_counted_not_exported_one_by_one() {
        let m = Metrics::new();
        for i in 0..100 {
            m.credential(
                "acme",
                &format!("c{i}"),
                Provider::Procore,
                Phase::Connected,
                None,
                Duration::from_secs(60),
            );
        }
        // One of them loses its connection, then comes back.
        m.credential(
            "acme",
            "c7",
            Provider::Procore,
            Phase::ConnectionLost,
            None,
            Duration::from_secs(60),
        );
        let text = m.encode();
        assert!(
            text.contains("reconnect_credentials{provider=\"procore\",phase=\"Connected\"} 99"),
            "{text}"
        );
        assert!(text.contains("reconnect_credential_phase{namespace=\"acme\",name=\"c7\",provider=\"procore\",phase=\"ConnectionLost\"} 1"), "{text}");
        assert_eq!(text.matches("name=\"").count(), 1, "{text}");
        m.credential(
            "acme",
            "c7",
            Provider::Procore,
            Phase::Connected,
            None,
            Duration::from_secs(60),
        );
        let text = m.encode();
        assert!(
            text.contains("reconnect_credentials{provider=\"procore\",phase=\"Connected\"} 100"),
            "{text}"
        );
        assert!(!text.contains("name=\""), "{text}");
    }
}
