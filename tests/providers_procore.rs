//! Procore against its emulator over loopback HTTP.

mod common;

use std::time::Duration;

use common::*;
use reconnect_emulators::{Account, Fault, ProcoreEmulator};
use reconnect_operator::providers::{
    DeadCause, Misconfiguration, Providers, VerifyError, VerifyRequest,
};

const DMSA_ID: &str = "dmsa-client";
const DMSA_SECRET: &str = "dmsa-secret";
const APP_ID: &str = "app-client";
const APP_SECRET: &str = "app-secret";

async fn emulator() -> ProcoreEmulator {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(Account::new("4567", "svc-sync@acme.com").with_permissions([
        "company:1234",
        "project:77",
        "documents:admin",
        "budget:read_only",
    ]));
    emu.add_account(
        Account::new("900", "jane@acme.com")
            .with_permissions(["company:1234", "documents:standard"]),
    );
    emu.add_client(DMSA_ID, DMSA_SECRET, Some("4567"));
    emu.add_client(APP_ID, APP_SECRET, None);
    emu
}

async fn dmsa() -> Setup<reconnect_emulators::Procore> {
    let emu = emulator().await;
    let spec = spec(
        "procore",
        "ClientCredentials",
        Some(&emu.base_url()),
        &[("companyId", "1234")],
    );
    Setup {
        spec,
        material: client_credentials(DMSA_ID, DMSA_SECRET),
        required: set(&["documents:standard"]),
        probe: "/rest/v1.0/me",
        token: Some("/oauth/token"),
        emu,
    }
}

fault_tests!(dmsa, oauth);

#[tokio::test]
async fn dmsa_verifies_with_identity_companies_and_tool_levels() {
    let s = dmsa().await;
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, "4567");
    assert_eq!(verified.account().name, "svc-sync@acme.com");
    assert_eq!(
        *verified.permissions(),
        set(&["budget:read_only", "company:1234", "documents:admin"])
    );
    assert!(verified.tokens().access_token().is_some());
    assert_eq!(
        verified.tokens().refresh_token(),
        None,
        "client credentials issue no refresh token"
    );
    assert!(verified.tokens().expires_at().is_some());
    assert_eq!(
        s.emu.count("/rest/v1.0/me"),
        1,
        "exactly one identity probe"
    );
    assert_eq!(s.emu.count("/oauth/token"), 1);
    assert_eq!(
        s.emu.count("/rest/v1.0/projects"),
        0,
        "projects are read only when a project is required"
    );
}

#[tokio::test]
async fn required_project_is_checked_against_the_project_list() {
    let s = dmsa().await;
    let ok = verify(&s.spec, &s.material, &set(&["project:77"]))
        .await
        .unwrap();
    assert!(ok.permissions().contains("project:77"));
    let err = verify(&s.spec, &s.material, &set(&["project:78"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["project:78"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn lower_tool_level_is_a_permission_mismatch_naming_the_account() {
    let s = dmsa().await;
    let err = verify(
        &s.spec,
        &s.material,
        &set(&["budget:standard", "documents:read_only"]),
    )
    .await
    .unwrap_err();
    match &err {
        VerifyError::PermissionDenied {
            account,
            missing,
            granted,
            ..
        } => {
            assert_eq!(account.as_ref().unwrap().name, "svc-sync@acme.com");
            assert_eq!(missing, &["budget:standard"]);
            assert!(granted.contains("budget:read_only"));
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_eq!(err.reason(), "PermissionMismatch");
    assert!(err.to_string().contains("budget:standard"), "{err}");
}

#[tokio::test]
async fn company_the_account_cannot_reach_is_a_permission_mismatch() {
    let s = dmsa().await;
    let spec = spec(
        "procore",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("companyId", "999")],
    );
    let err = verify(&spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::PermissionDenied {
                status: Some(403),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_client_secret_is_dead() {
    let s = dmsa().await;
    let err = verify(&s.spec, &client_credentials(DMSA_ID, "wrong"), &s.required)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::InvalidClient, status: Some(401), code: Some(c), .. } if c == "invalid_client"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "ConnectionLost");
    assert_eq!(s.emu.count("/rest/v1.0/me"), 0);
}

#[tokio::test]
async fn uninstalled_app_is_dead_not_a_permission_problem() {
    let s = dmsa().await;
    s.emu.disconnect_app();
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::AppDisconnected,
                status: Some(403),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn deactivated_service_account_is_dead() {
    let s = dmsa().await;
    s.emu.deactivate("4567");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::InvalidGrant,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn dmsa_without_company_id_is_misconfigured_before_any_call() {
    let emu = emulator().await;
    let spec = spec("procore", "ClientCredentials", Some(&emu.base_url()), &[]);
    let err = verify(&spec, &client_credentials(DMSA_ID, DMSA_SECRET), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::MissingParam {
                    name: "companyId",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(emu.total_requests(), 0);
}

#[tokio::test]
async fn unknown_param_is_misconfigured() {
    let emu = emulator().await;
    let spec = spec(
        "procore",
        "ClientCredentials",
        Some(&emu.base_url()),
        &[("companyId", "1"), ("tenant", "x")],
    );
    let err = verify(&spec, &client_credentials(DMSA_ID, DMSA_SECRET), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::UnknownParam { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn plain_http_to_a_remote_host_is_refused() {
    let spec = spec(
        "procore",
        "ClientCredentials",
        Some("http://sandbox.procore.com"),
        &[("companyId", "1")],
    );
    let err = verify(&spec, &client_credentials(DMSA_ID, DMSA_SECRET), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::InvalidEndpoint { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn refresh_token_rotates_and_the_old_one_dies_at_the_emulator() {
    let emu = emulator().await;
    let old = emu.issue_refresh_token(APP_ID, "900");
    let spec = spec(
        "procore",
        "RefreshToken",
        Some(&emu.base_url()),
        &[("companyId", "1234")],
    );
    let material = refresh_token(APP_ID, Some(APP_SECRET), &old);
    let verified = verify(&spec, &material, &set(&["documents:read_only"]))
        .await
        .unwrap();
    assert_eq!(verified.account().id, "900");
    let new = verified
        .tokens()
        .refresh_token()
        .expect("Procore rotates refresh tokens");
    assert_ne!(new.expose(), old);
    assert!(!emu.refresh_token_valid(&old));
    assert!(emu.refresh_token_valid(new.expose()));

    // The spent token is dead; the new one works.
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
    let material = refresh_token(APP_ID, Some(APP_SECRET), new.expose());
    assert!(verify(&spec, &material, &set(&[])).await.is_ok());
}

#[tokio::test]
async fn revoked_refresh_token_stays_dead() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(APP_ID, "900");
    emu.revoke(&token);
    let spec = spec("procore", "RefreshToken", Some(&emu.base_url()), &[]);
    let material = refresh_token(APP_ID, Some(APP_SECRET), &token);
    for _ in 0..2 {
        let err = verify(&spec, &material, &set(&[])).await.unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Dead {
                    cause: DeadCause::InvalidGrant,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn user_token_without_company_reads_identity_and_companies_only() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(APP_ID, "900");
    let spec = spec("procore", "RefreshToken", Some(&emu.base_url()), &[]);
    let verified = verify(
        &spec,
        &refresh_token(APP_ID, Some(APP_SECRET), &token),
        &set(&["company:1234"]),
    )
    .await
    .unwrap();
    assert_eq!(*verified.permissions(), set(&["company:1234"]));
    assert_eq!(emu.count("/rest/v1.0/settings/permissions"), 0);
}

#[tokio::test]
async fn concurrent_refreshes_share_one_grant_and_spend_the_token_once() {
    let emu = emulator().await;
    let old = emu.issue_refresh_token(APP_ID, "900");
    let spec = spec("procore", "RefreshToken", Some(&emu.base_url()), &[]);
    let material = refresh_token(APP_ID, Some(APP_SECRET), &old);
    let required = set(&[]);
    // join! polls all three before any of them can finish: each registers in its first poll,
    // so the overlap is certain without any delay.
    let providers = Providers::new();
    let req = VerifyRequest {
        key: "acme/procore",
        spec: &spec,
        material: &material,
        required: &required,
        timeout: TIMEOUT,
    };
    let (a, b, c) = tokio::join!(
        providers.refresh(&req),
        providers.refresh(&req),
        providers.verify(&req)
    );
    let (a, b, c) = (
        a.result().unwrap(),
        b.result().unwrap(),
        c.result().unwrap(),
    );
    assert_eq!(
        emu.count("/oauth/token"),
        1,
        "one grant for three overlapping callers"
    );
    let new = a.refresh_token().expect("rotated");
    assert_eq!(b.refresh_token().as_ref(), Some(&new));
    assert_eq!(c.tokens().refresh_token().as_ref(), Some(&new));
    assert!(!emu.refresh_token_valid(&old));

    // Once the flight has landed, a later refresh is a new grant (with the new token).
    let material = refresh_token(APP_ID, Some(APP_SECRET), new.expose());
    let req = VerifyRequest {
        material: &material,
        ..req
    };
    let next = providers.refresh(&req).await.result().unwrap();
    assert_eq!(emu.count("/oauth/token"), 2);
    assert_ne!(next.refresh_token().as_ref(), Some(&new));
}

#[tokio::test]
async fn refresh_mints_tokens_without_probing() {
    let s = dmsa().await;
    let providers = Providers::new();
    let tokens = providers
        .refresh(&VerifyRequest {
            key: "acme/p",
            spec: &s.spec,
            material: &s.material,
            required: &s.required,
            timeout: TIMEOUT,
        })
        .await
        .result()
        .unwrap();
    assert!(tokens.access_token().is_some());
    assert_eq!(tokens.token_type(), Some("bearer"));
    assert_eq!(s.emu.count("/rest/v1.0/me"), 0);
}

#[tokio::test]
async fn rate_limit_reset_header_is_used_when_retry_after_is_absent() {
    let s = dmsa().await;
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 120;
    s.emu.fail_next_on(
        "/rest/v1.0/me",
        1,
        Fault::Respond(
            reconnect_emulators::Response::json(
                429,
                serde_json::json!({"errors": "Rate limit exceeded"}),
            )
            .header("x-rate-limit-reset", &reset.to_string()),
        ),
    );
    let err = s.verify().await.unwrap_err();
    let wait = err.retry_after().expect("reset header read");
    assert!(
        wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
        "{wait:?}"
    );
}

#[tokio::test]
async fn candidate_and_active_credentials_under_one_key_never_share_a_grant() {
    let emu = emulator().await;
    emu.add_account(Account::new("901", "joe@acme.com").with_permissions(["company:1234"]));
    let active = refresh_token(
        APP_ID,
        Some(APP_SECRET),
        &emu.issue_refresh_token(APP_ID, "900"),
    );
    let candidate = refresh_token(
        APP_ID,
        Some(APP_SECRET),
        &emu.issue_refresh_token(APP_ID, "901"),
    );
    let spec = spec("procore", "RefreshToken", Some(&emu.base_url()), &[]);
    let required = set(&[]);
    let providers = Providers::new();
    let req = |material| VerifyRequest {
        key: "acme/procore",
        spec: &spec,
        material,
        required: &required,
        timeout: TIMEOUT,
    };
    let (active_req, candidate_req) = (req(&active), req(&candidate));
    let (refreshed, verified) = tokio::join!(
        providers.refresh(&active_req),
        providers.verify(&candidate_req)
    );
    assert_eq!(
        verified.result().unwrap().account().id,
        "901",
        "the candidate is verified with its own token"
    );
    assert!(refreshed.result().unwrap().refresh_token().is_some());
    assert_eq!(emu.count("/oauth/token"), 2);
}

#[tokio::test]
async fn failed_probe_after_rotation_returns_the_new_refresh_token() {
    let emu = emulator().await;
    let old = emu.issue_refresh_token(APP_ID, "900");
    let spec = spec(
        "procore",
        "RefreshToken",
        Some(&emu.base_url()),
        &[("companyId", "1234")],
    );
    emu.fail_next_on("/rest/v1.0/me", 1, Fault::Status(503));
    let material = refresh_token(APP_ID, Some(APP_SECRET), &old);
    let required = set(&[]);
    let verdict = Providers::new()
        .verify(&VerifyRequest {
            key: "acme/sync",
            spec: &spec,
            material: &material,
            required: &required,
            timeout: TIMEOUT,
        })
        .await;
    let (result, rotated) = verdict.into_parts();
    let err = result.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    let rotated = rotated.expect("the rotated tokens travel with the verdict, beside the error");
    let new = rotated.refresh_token().expect("a new refresh token");
    assert!(!emu.refresh_token_valid(&old));
    assert!(emu.refresh_token_valid(new.expose()));
    let retry = refresh_token(APP_ID, Some(APP_SECRET), new.expose());
    assert!(verify(&spec, &retry, &set(&[])).await.is_ok());
}

#[tokio::test]
async fn invalid_params_are_refused_before_the_refresh_token_is_spent() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(APP_ID, "900");
    let spec = spec(
        "procore",
        "RefreshToken",
        Some(&emu.base_url()),
        &[("companyId", "acme")],
    );
    let err = verify(
        &spec,
        &refresh_token(APP_ID, Some(APP_SECRET), &token),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::InvalidParam { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(emu.total_requests(), 0);
    assert!(emu.refresh_token_valid(&token));
}
