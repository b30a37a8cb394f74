//! The generic RFC 6749 provider against the emulator over loopback HTTP.

mod common;

use common::*;
use reconnect_emulators::{Account, Discovery, OAuth2Emulator};
use reconnect_operator::providers::{DeadCause, Misconfiguration, VerifyError};

const CLIENT: &str = "client-1";
const SECRET: &str = "secret-1";

async fn emulator() -> OAuth2Emulator {
    let emu = OAuth2Emulator::start().await;
    emu.add_account(Account::new("svc-1", "svc").with_scopes(["read", "write"]));
    emu.add_account(Account::new("user-1", "ursula").with_scopes(["read"]));
    emu.add_client(CLIENT, SECRET, Some("svc-1"));
    emu
}

/// Client credentials with introspection advertised and a probe URL: the fault checks aim at
/// introspection, whose body (unlike a probe URL's) has a shape to get wrong.
async fn machine() -> Setup<reconnect_emulators::GenericOAuth2> {
    let emu = emulator().await;
    emu.advertise_introspection(true);
    let probe = format!("{}/userinfo", emu.base_url());
    Setup {
        spec: spec(
            "oauth2",
            "ClientCredentials",
            Some(&emu.base_url()),
            &[("probeUrl", &probe)],
        ),
        material: client_credentials(CLIENT, SECRET),
        required: set(&["read"]),
        probe: "/introspect",
        token: Some("/token"),
        emu,
    }
}

fault_tests!(machine, oauth);

#[tokio::test]
async fn client_credentials_verify_with_rfc8414_discovery_and_probe() {
    let s = machine().await;
    s.emu.advertise_introspection(false);
    let verified = s.verify().await.unwrap();
    // Without introspection a client-credentials account is the client; the probe names it.
    assert_eq!(verified.account().id, CLIENT);
    assert_eq!(verified.account().name, "svc");
    assert_eq!(*verified.permissions(), set(&["read", "write"]));
    assert_eq!(s.emu.count("/.well-known/oauth-authorization-server"), 1);
    assert_eq!(s.emu.count("/userinfo"), 1);
}

#[tokio::test]
async fn introspection_names_the_account_by_sub_then_username_then_client_id() {
    let s = machine().await;
    let providers = reconnect_operator::providers::Providers::new();
    let answer = |body: serde_json::Value| {
        s.emu.fail_next_on(
            "/introspect",
            1,
            reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(200, body)),
        );
    };
    let run = async || {
        verify_with(&providers, &s.spec, &s.material, &set(&[]), TIMEOUT)
            .await
            .unwrap()
            .account()
            .clone()
    };
    answer(
        serde_json::json!({"active": true, "sub": "u-1", "username": "ursula", "client_id": "c"}),
    );
    let account = run().await;
    assert_eq!(
        (account.id.as_str(), account.name.as_str()),
        ("u-1", "ursula")
    );
    answer(serde_json::json!({"active": true, "username": "ursula", "client_id": "c"}));
    assert_eq!(run().await.id, "ursula");
    answer(serde_json::json!({"active": true, "client_id": "c"}));
    assert_eq!(run().await.id, "c");
}

#[tokio::test]
async fn an_introspected_token_without_scope_holds_no_scope() {
    let s = machine().await;
    s.emu.scope_in_token_response(false);
    let spec = spec(
        "oauth2",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("scope", "read")],
    );
    s.emu.fail_next_on(
        "/introspect",
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            200,
            serde_json::json!({"active": true, "client_id": CLIENT}),
        )),
    );
    let err = verify(&spec, &s.material, &set(&["read"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, granted, .. } if missing == &["read"] && granted.is_empty()),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refresh_token_nothing_else_names_is_known_by_its_client() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(CLIENT, "user-1");
    let spec = spec("oauth2", "RefreshToken", Some(&emu.base_url()), &[]);
    let verified = verify(
        &spec,
        &refresh_token(CLIENT, Some(SECRET), &token),
        &set(&[]),
    )
    .await
    .unwrap();
    assert_eq!(verified.account().id, CLIENT);
}

#[tokio::test]
async fn one_providers_instance_discovers_each_issuer_once() {
    let s = machine().await;
    let providers = reconnect_operator::providers::Providers::new();
    for _ in 0..3 {
        verify_with(&providers, &s.spec, &s.material, &s.required, TIMEOUT)
            .await
            .unwrap();
    }
    assert_eq!(s.emu.count("/.well-known/oauth-authorization-server"), 1);
    assert_eq!(s.emu.count("/token"), 3);
}

#[tokio::test]
async fn openid_configuration_is_the_fallback_for_discovery() {
    let s = machine().await;
    s.emu.set_discovery(Discovery::OpenIdOnly);
    assert!(s.verify().await.is_ok());
    assert_eq!(s.emu.count("/.well-known/openid-configuration"), 1);
}

#[tokio::test]
async fn no_discovery_and_no_token_url_is_misconfigured() {
    let s = machine().await;
    s.emu.set_discovery(Discovery::None);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::Other(_),
                ..
            }
        ),
        "{err:?}"
    );
    let token_url = format!("{}/token", s.emu.base_url());
    let spec = spec(
        "oauth2",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("tokenUrl", &token_url)],
    );
    assert!(
        verify(&spec, &s.material, &s.required).await.is_ok(),
        "params.tokenUrl skips discovery"
    );
}

#[tokio::test]
async fn missing_scope_is_a_permission_mismatch() {
    let s = machine().await;
    let err = verify(&s.spec, &s.material, &set(&["admin"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["admin"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn requested_scopes_count_when_the_token_response_omits_scope() {
    let s = machine().await;
    s.emu.advertise_introspection(false);
    s.emu.scope_in_token_response(false);
    let probe = format!("{}/userinfo", s.emu.base_url());
    let spec = spec(
        "oauth2",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("probeUrl", &probe), ("scope", "read")],
    );
    let verified = verify(&spec, &s.material, &set(&["read"])).await.unwrap();
    assert_eq!(*verified.permissions(), set(&["read"]));
}

#[tokio::test]
async fn introspection_decides_the_scopes_when_configured() {
    let s = machine().await;
    s.emu.scope_in_token_response(false);
    let verified = s.verify().await.unwrap();
    assert_eq!(*verified.permissions(), set(&["read", "write"]));
    assert_eq!(verified.account().name, "svc");
    assert_eq!(s.emu.count("/introspect"), 1);
}

#[tokio::test]
async fn inactive_token_at_introspection_is_dead() {
    let s = machine().await;
    let introspect = format!("{}/introspect", s.emu.base_url());
    let spec = spec(
        "oauth2",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("introspectionUrl", &introspect)],
    );
    s.emu.fail_next_on(
        "/introspect",
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            200,
            serde_json::json!({"active": false}),
        )),
    );
    let err = verify(&spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::TokenRejected, code: Some(c), .. } if c == "inactive"),
        "{err:?}"
    );
}

#[tokio::test]
async fn insufficient_scope_at_the_probe_is_a_permission_problem() {
    let s = machine().await;
    s.emu.require_probe_scope("profile");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { code: Some(c), status: Some(403), .. } if c == "insufficient_scope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_token_at_the_probe_is_dead() {
    let s = machine().await;
    s.emu.fail_next_on(
        "/userinfo",
        1,
        reconnect_emulators::Fault::Respond(
            reconnect_emulators::Response::json(401, serde_json::json!({}))
                .header("www-authenticate", "Bearer error=\"invalid_token\""),
        ),
    );
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { code: Some(c), .. } if c == "invalid_token"),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_client_secret_is_dead() {
    let s = machine().await;
    let err = verify(&s.spec, &client_credentials(CLIENT, "no"), &s.required)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::InvalidClient,
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn rotating_refresh_token_returns_the_new_one_and_the_old_one_dies() {
    let emu = emulator().await;
    let old = emu.issue_refresh_token(CLIENT, "user-1");
    let spec = spec("oauth2", "RefreshToken", Some(&emu.base_url()), &[]);
    let material = refresh_token(CLIENT, Some(SECRET), &old);
    let verified = verify(&spec, &material, &set(&["read"])).await.unwrap();
    let new = verified.tokens().refresh_token().expect("rotated");
    assert!(!emu.refresh_token_valid(&old));
    let err = verify(&spec, &material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::InvalidGrant,
                status: Some(400),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        verify(
            &spec,
            &refresh_token(CLIENT, Some(SECRET), new.expose()),
            &set(&[])
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn missing_issuer_is_misconfigured() {
    let spec = spec("oauth2", "ClientCredentials", None, &[]);
    let err = verify(&spec, &client_credentials(CLIENT, SECRET), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::MissingEndpoint { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn discovered_endpoint_on_plain_http_remote_host_is_refused() {
    let s = machine().await;
    let spec = spec(
        "oauth2",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("tokenUrl", "http://as.example.com/token")],
    );
    let err = verify(&spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::InvalidEndpoint {
                    what: "params.tokenUrl",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn refresh_token_with_introspection_names_the_user_and_scopes() {
    let emu = emulator().await;
    emu.advertise_introspection(true);
    let token = emu.issue_refresh_token(CLIENT, "user-1");
    let spec = spec("oauth2", "RefreshToken", Some(&emu.base_url()), &[]);
    let verified = verify(
        &spec,
        &refresh_token(CLIENT, Some(SECRET), &token),
        &set(&["read"]),
    )
    .await
    .unwrap();
    assert_eq!(verified.account().id, "user-1");
    assert_eq!(verified.account().name, "ursula");
    assert_eq!(*verified.permissions(), set(&["read"]));
    assert_eq!(emu.count("/introspect"), 1);
    assert!(
        verified.tokens().refresh_token().is_some(),
        "this server rotates"
    );
}
