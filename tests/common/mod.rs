//! Shared helpers for the provider tests: specs and material as a user would write them,
//! and the fault checks every provider must pass.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use reconnect_emulators::{Emulator, Fault, Flavor};
use reconnect_operator::api::ConnectorCredentialSpec;
use reconnect_operator::providers::{
    CredentialMaterial, Providers, TransientKind, Verified, VerifyError, VerifyRequest,
};
use reconnect_operator::secret::Redacted;
use serde_json::json;

/// A spec as a user writes it: provider, auth, endpoint, params.
pub fn spec(
    provider: &str,
    auth: &str,
    endpoint: Option<&str>,
    params: &[(&str, &str)],
) -> ConnectorCredentialSpec {
    let params: serde_json::Map<_, _> = params
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut value = json!({
        "provider": provider,
        "auth": auth,
        "secretRef": {"name": "source"},
        "params": params,
    });
    if let Some(endpoint) = endpoint {
        value["endpoint"] = json!(endpoint);
    }
    serde_json::from_value(value).expect("valid spec")
}

pub fn client_credentials(id: &str, secret: &str) -> CredentialMaterial {
    CredentialMaterial {
        client_id: Some(Redacted::new(id)),
        client_secret: Some(Redacted::new(secret)),
        ..Default::default()
    }
}

pub fn refresh_token(id: &str, secret: Option<&str>, token: &str) -> CredentialMaterial {
    CredentialMaterial {
        client_id: Some(Redacted::new(id)),
        client_secret: secret.map(Redacted::new),
        refresh_token: Some(Redacted::new(token)),
        ..Default::default()
    }
}

pub fn api_key(key: &str) -> CredentialMaterial {
    CredentialMaterial {
        api_key: Some(Redacted::new(key)),
        ..Default::default()
    }
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub const TIMEOUT: Duration = Duration::from_secs(5);

pub async fn verify_with(
    providers: &Providers,
    spec: &ConnectorCredentialSpec,
    material: &CredentialMaterial,
    required: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Verified, VerifyError> {
    providers
        .verify(&VerifyRequest {
            key: "acme/sync",
            spec,
            material,
            required,
            timeout,
        })
        .await
        .result()
}

pub async fn verify(
    spec: &ConnectorCredentialSpec,
    material: &CredentialMaterial,
    required: &BTreeSet<String>,
) -> Result<Verified, VerifyError> {
    verify_with(&Providers::new(), spec, material, required, TIMEOUT).await
}

/// A working credential against a running emulator; each fault check starts from one.
pub struct Setup<F: Flavor> {
    pub emu: Emulator<F>,
    pub spec: ConnectorCredentialSpec,
    pub material: CredentialMaterial,
    pub required: BTreeSet<String>,
    /// The identity/permission probe path.
    pub probe: &'static str,
    /// The token path, for OAuth2 credentials.
    pub token: Option<&'static str>,
}

impl<F: Flavor> Setup<F> {
    pub async fn verify(&self) -> Result<Verified, VerifyError> {
        verify(&self.spec, &self.material, &self.required).await
    }

    pub async fn verify_with_timeout(&self, timeout: Duration) -> Result<Verified, VerifyError> {
        verify_with(
            &Providers::new(),
            &self.spec,
            &self.material,
            &self.required,
            timeout,
        )
        .await
    }
}

pub fn transient_kind(err: &VerifyError) -> TransientKind {
    match err {
        VerifyError::Transient { kind, .. } => *kind,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

pub async fn rate_limit_on_probe_is_transient_with_retry_after<F: Flavor>(s: Setup<F>) {
    s.emu.fail_next_on(
        s.probe,
        1,
        Fault::RateLimited {
            retry_after_secs: 7,
        },
    );
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::RateLimited, "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{err:?}");
    assert_eq!(err.reason(), "ProviderUnreachable");
}

pub async fn rate_limit_on_token_endpoint_is_transient_with_retry_after<F: Flavor>(s: Setup<F>) {
    let token = s.token.expect("an OAuth2 setup");
    s.emu.fail_next_on(
        token,
        1,
        Fault::RateLimited {
            retry_after_secs: 30,
        },
    );
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::RateLimited, "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)), "{err:?}");
    assert_eq!(
        s.emu.count(s.probe),
        0,
        "no probe after a failed token request"
    );
}

pub async fn server_error_is_transient<F: Flavor>(s: Setup<F>) {
    for status in [500, 502, 503] {
        s.emu.fail_next_on(s.probe, 1, Fault::Status(status));
        let err = s.verify().await.unwrap_err();
        assert_eq!(transient_kind(&err), TransientKind::Unavailable, "{err:?}");
        assert!(
            matches!(err, VerifyError::Transient { status: Some(got), .. } if got == status),
            "{err:?}"
        );
    }
    if let Some(token) = s.token {
        s.emu.fail_next_on(token, 1, Fault::Status(503));
        let err = s.verify().await.unwrap_err();
        assert_eq!(transient_kind(&err), TransientKind::Unavailable, "{err:?}");
    }
}

pub async fn slow_provider_times_out_as_transient<F: Flavor>(s: Setup<F>) {
    // Latency 5 s against a 200 ms timeout: no timing luck involved.
    s.emu
        .fail_next_on(s.probe, 1, Fault::Latency(Duration::from_secs(5)));
    let err = s
        .verify_with_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::Timeout, "{err:?}");
}

pub async fn malformed_response_is_transient<F: Flavor>(s: Setup<F>) {
    s.emu.fail_next_on(s.probe, 1, Fault::MalformedJson);
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::Malformed, "{err:?}");
    if let Some(token) = s.token {
        s.emu.fail_next_on(token, 1, Fault::MalformedJson);
        let err = s.verify().await.unwrap_err();
        assert_eq!(transient_kind(&err), TransientKind::Malformed, "{err:?}");
    }
}

pub async fn dropped_connection_is_transient<F: Flavor>(s: Setup<F>) {
    s.emu.fail_next_on(s.probe, 1, Fault::DropConnection);
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::Connection, "{err:?}");
}

/// The six fault tests every provider gets, each named for its behaviour.
#[macro_export]
macro_rules! fault_tests {
    ($setup:path) => {
        mod faults {
            use super::*;

            #[tokio::test]
            async fn rate_limit_on_probe_is_transient_with_retry_after() {
                common::rate_limit_on_probe_is_transient_with_retry_after($setup().await).await;
            }

            #[tokio::test]
            async fn server_errors_are_transient() {
                common::server_error_is_transient($setup().await).await;
            }

            #[tokio::test]
            async fn slow_provider_times_out_as_transient() {
                common::slow_provider_times_out_as_transient($setup().await).await;
            }

            #[tokio::test]
            async fn malformed_response_is_transient() {
                common::malformed_response_is_transient($setup().await).await;
            }

            #[tokio::test]
            async fn dropped_connection_is_transient() {
                common::dropped_connection_is_transient($setup().await).await;
            }
        }
    };
    ($setup:path, oauth) => {
        fault_tests!($setup);

        mod token_faults {
            use super::*;

            #[tokio::test]
            async fn rate_limit_on_token_endpoint_is_transient_with_retry_after() {
                common::rate_limit_on_token_endpoint_is_transient_with_retry_after($setup().await)
                    .await;
            }
        }
    };
}
