//! Prometheus metrics, served as text on `/metrics`.
//!
//! Labels are low-cardinality by construction: controller, provider, call, outcome and
//! reason come from fixed vocabularies; the only object labels are the namespace and name
//! of our own ConnectorCredentials, which alerts need to name the credential. No label ever
//! carries Secret material or an error message.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// Serialises encoding with label removal, so a scrape never sees half a phase set.
    encode_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const PHASES: [Phase; 6] = Phase::ALL;

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reconnect");
        let reconciles = Family::default();
        registry.register(
            "reconcile",
            "Reconcile runs per controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::default();
        registry.register(
            "reconcile_errors",
            "Failed reconcile runs per controller and reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration per controller",
            reconcile_duration.clone(),
        );
        let credential_phase = Family::default();
        registry.register(
            "credential_phase",
            "1 for a ConnectorCredential's current phase, 0 for the others",
            credential_phase.clone(),
        );
        let credential_expiry = Family::default();
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When a credential itself expires (unix seconds), where the provider says",
            credential_expiry.clone(),
        );
        let credential_expiry_warning = Family::default();
        registry.register(
            "credential_expiry_warning_seconds",
            "A credential's expiryWarning window in seconds",
            credential_expiry_warning.clone(),
        );
        let provider_requests = Family::default();
        registry.register(
            "provider_requests",
            "Provider calls by provider, call and outcome",
            provider_requests.clone(),
        );
        let provider_duration =
            Family::<ProviderLatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "provider_request_duration_seconds",
            "Provider call latency by provider and call",
            provider_duration.clone(),
        );
        let rotations = Family::default();
        registry.register(
            "rotations",
            "Credential rotations by provider and result (accepted, rejected)",
            rotations.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            credential_phase,
            credential_expiry,
            credential_expiry_warning,
            provider_requests,
            provider_duration,
            rotations,
            encode_lock: Mutex::new(()),
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
        for p in PHASES {
            self.credential_phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    provider: provider.as_str(),
                    phase: p.as_str(),
                })
                .set(i64::from(p == phase));
        }
        let labels = CredentialLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provider: provider.as_str(),
        };
        match expires_at {
            Some(t) => {
                self.credential_expiry
                    .get_or_create(&labels)
                    .set(t.as_second());
            }
            None => {
                self.credential_expiry.remove(&labels);
            }
        }
        self.credential_expiry_warning
            .get_or_create(&WarningLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .set(expiry_warning.as_secs() as i64);
    }

    /// Forgets a deleted credential, so its series stop being exported.
    pub fn forget_credential(&self, namespace: &str, name: &str) {
        let _held = self.encode_lock.lock().unwrap_or_else(|e| e.into_inner());
        for provider in Provider::ALL {
            for p in PHASES {
                self.credential_phase.remove(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    provider: provider.as_str(),
                    phase: p.as_str(),
                });
            }
            self.credential_expiry.remove(&CredentialLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                provider: provider.as_str(),
            });
        }
        self.credential_expiry_warning.remove(&WarningLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
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
            "reconnect_credential_phase{namespace=\"acme\",name=\"procore-sync\",provider=\"procore\",phase=\"Connected\"} 0",
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
            Phase::Connected,
            None,
            Duration::from_secs(60),
        );
        assert!(m.encode().contains("name=\"gone\""));
        m.forget_credential("acme", "gone");
        assert!(!m.encode().contains("name=\"gone\""));
    }
}
