//! Canary secrets never show up in errors, results or logs when the generic oauth2 provider
//! talks to a real authorization server (oidc-provider), whose error answers carry
//! descriptions and `WWW-Authenticate` headers our emulator does not send.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reconnect_oauth_peer::{AccessTokenFormat, Fault, NewClient, OAuthPeer};
use reconnect_operator::api::ConnectorCredentialSpec;
use reconnect_operator::providers::{CredentialMaterial, Providers, VerifyRequest};

const SECRET: &str = "canary-peer-secret-4c1d2e";
const WRONG_SECRET: &str = "canary-peer-wrong-9a0b7f";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Verifies and refreshes, recording everything a user or log reader could see, and the
/// tokens the provider layer handed back.
async fn run(
    providers: &Providers,
    spec: &ConnectorCredentialSpec,
    material: &CredentialMaterial,
    seen: &mut String,
    tokens: &mut Vec<String>,
) {
    let required = set(&["read"]);
    let request = VerifyRequest {
        key: "acme/canary",
        spec,
        material,
        required: &required,
        timeout: Duration::from_secs(2),
    };
    let verified = providers.verify(&request).await;
    seen.push_str(&format!("{verified:?}\n"));
    match verified.as_result() {
        Ok(v) => tokens.extend(
            [v.tokens().access_token(), v.tokens().refresh_token()]
                .into_iter()
                .flatten()
                .map(|t| t.expose().to_owned()),
        ),
        Err(e) => seen.push_str(&format!("{e}\n{}\n", e.reason())),
    }
    let refreshed = providers.refresh(&request).await;
    seen.push_str(&format!("{refreshed:?}\n"));
    match refreshed.as_result() {
        Ok(t) => tokens.extend(
            [t.access_token(), t.refresh_token()]
                .into_iter()
                .flatten()
                .map(|t| t.expose().to_owned()),
        ),
        Err(e) => seen.push_str(&format!("{e}\n")),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_peer_answer_shows_credential_material_in_errors_results_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let peer = OAuthPeer::start().await;
    let svc = peer
        .add_client(
            NewClient::client_credentials("svc")
                .scopes(&["read"])
                .secret(SECRET),
        )
        .await;
    let app = peer
        .add_client(
            NewClient::refresh_token("app")
                .scopes(&["read"])
                .secret(SECRET),
        )
        .await;
    let providers = Providers::new();
    let cc_spec = spec(
        "oauth2",
        "ClientCredentials",
        Some(&peer.issuer()),
        &[("scope", "read")],
    );
    let rt_spec = spec("oauth2", "RefreshToken", Some(&peer.issuer()), &[]);
    let mut seen = String::new();
    let mut tokens = Vec::new();
    let mut refresh_tokens = Vec::new();

    for material in [
        client_credentials(&svc.id, SECRET),
        client_credentials(&svc.id, WRONG_SECRET),
    ] {
        run(&providers, &cc_spec, &material, &mut seen, &mut tokens).await;
    }
    for fault in [
        Fault::RateLimited {
            retry_after_secs: Some(3),
        },
        Fault::Unavailable {
            retry_after_secs: None,
        },
        Fault::DropConnection,
        Fault::Slow(Duration::from_secs(5)),
    ] {
        for path in ["/token", "/token/introspection"] {
            peer.fail_next_on(path, 1, fault).await;
            run(
                &providers,
                &cc_spec,
                &client_credentials(&svc.id, SECRET),
                &mut seen,
                &mut tokens,
            )
            .await;
        }
    }
    peer.disable_client(&svc.id).await;
    run(
        &providers,
        &cc_spec,
        &client_credentials(&svc.id, SECRET),
        &mut seen,
        &mut tokens,
    )
    .await;

    // A rotating chain: good, then the spent token (reuse detection), then a revoked one.
    let first = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    refresh_tokens.push(first.clone());
    run(
        &providers,
        &rt_spec,
        &refresh_token(&app.id, Some(SECRET), &first),
        &mut seen,
        &mut tokens,
    )
    .await;
    run(
        &providers,
        &rt_spec,
        &refresh_token(&app.id, Some(SECRET), &first),
        &mut seen,
        &mut tokens,
    )
    .await;
    run(
        &providers,
        &rt_spec,
        &refresh_token(&app.id, Some(WRONG_SECRET), &first),
        &mut seen,
        &mut tokens,
    )
    .await;
    peer.set_access_token_format(AccessTokenFormat::Jwt).await;
    let jwt_chain = peer.refresh_token_for(&app, "user-2", &["read"]).await;
    refresh_tokens.push(jwt_chain.clone());
    run(
        &providers,
        &rt_spec,
        &refresh_token(&app.id, Some(SECRET), &jwt_chain),
        &mut seen,
        &mut tokens,
    )
    .await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        seen.contains("ConnectionLost") && seen.contains("ProviderUnreachable"),
        "the failure paths ran: {seen}"
    );
    assert!(
        logs.contains("provider answered"),
        "debug-level events were captured"
    );
    assert!(tokens.len() >= 6, "the success paths minted tokens");
    for secret in [SECRET, WRONG_SECRET]
        .into_iter()
        .chain(refresh_tokens.iter().map(String::as_str))
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(
            !seen.contains(secret),
            "{secret:?} leaked into an error or result"
        );
        assert!(!logs.contains(secret), "{secret:?} leaked into the logs");
    }
}
