//! Salesforce against the emulator over loopback HTTP.

mod common;

use common::*;
use reconnect_emulators::{Account, RefreshPolicy, SalesforceEmulator};
use reconnect_operator::providers::{DeadCause, Misconfiguration, TransientKind, VerifyError};

const CLIENT: &str = "consumer-key";
const SECRET: &str = "consumer-secret";

async fn emulator() -> SalesforceEmulator {
    let emu = SalesforceEmulator::start().await;
    emu.add_account(
        Account::new("005000000000001", "integration@acme.com")
            .with_scopes(["api", "refresh_token"])
            .with_permissions([
                "permission:PermissionsApiEnabled",
                "permission:PermissionsViewAllData",
            ]),
    );
    emu.add_client(CLIENT, SECRET, Some("005000000000001"));
    emu
}

async fn run_as() -> Setup<reconnect_emulators::Salesforce> {
    let emu = emulator().await;
    Setup {
        spec: spec(
            "salesforce",
            "ClientCredentials",
            Some(&emu.base_url()),
            &[],
        ),
        material: client_credentials(CLIENT, SECRET),
        required: set(&["api", "permission:PermissionsApiEnabled"]),
        probe: "/services/oauth2/userinfo",
        token: Some("/services/oauth2/token"),
        emu,
    }
}

fault_tests!(run_as, oauth);

#[tokio::test]
async fn client_credentials_verify_the_run_as_user_with_scopes_and_permissions() {
    let s = run_as().await;
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, "005000000000001");
    assert_eq!(verified.account().name, "integration@acme.com");
    assert_eq!(
        *verified.permissions(),
        set(&[
            "api",
            "permission:PermissionsApiEnabled",
            "permission:PermissionsViewAllData",
            "refresh_token"
        ])
    );
    assert_eq!(s.emu.count("/services/oauth2/userinfo"), 1);
    assert_eq!(s.emu.count("/services/data/v62.0/query"), 1);
}

#[tokio::test]
async fn missing_system_permission_is_a_permission_mismatch() {
    let s = run_as().await;
    let err = verify(
        &s.spec,
        &s.material,
        &set(&[
            "permission:PermissionsModifyAllData",
            "permission:permissionsapienabled",
        ]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["permission:PermissionsModifyAllData"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_scope_is_a_permission_mismatch() {
    let s = run_as().await;
    let err = verify(&s.spec, &s.material, &set(&["web"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["web"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn token_without_api_scope_is_refused_by_rest_as_a_permission_problem() {
    let s = run_as().await;
    s.emu.set_scopes("005000000000001", ["refresh_token"]);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { status: Some(403), code: Some(c), account: Some(_), .. } if c == "INSUFFICIENT_ACCESS"),
        "{err:?}"
    );
}

#[tokio::test]
async fn exhausted_daily_api_quota_is_transient_not_a_permission_problem() {
    let s = run_as().await;
    s.emu.exhaust_daily_quota();
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::RateLimited);
    assert!(
        matches!(&err, VerifyError::Transient { code: Some(c), .. } if c == "REQUEST_LIMIT_EXCEEDED")
    );
}

#[tokio::test]
async fn client_credentials_on_the_login_host_are_misconfigured_before_any_call() {
    for host in [
        "https://login.salesforce.com",
        "https://test.salesforce.com",
    ] {
        let spec = spec("salesforce", "ClientCredentials", Some(host), &[]);
        let err = verify(&spec, &client_credentials(CLIENT, SECRET), &set(&[]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, VerifyError::Misconfigured { problem: Misconfiguration::Other(m), .. } if m.contains("My Domain")),
            "{err:?}"
        );
    }
    let spec = spec("salesforce", "ClientCredentials", None, &[]);
    assert!(matches!(
        verify(&spec, &client_credentials(CLIENT, SECRET), &set(&[])).await,
        Err(VerifyError::Misconfigured { .. })
    ));
}

#[tokio::test]
async fn wrong_secret_is_dead() {
    let s = run_as().await;
    let err = verify(&s.spec, &client_credentials(CLIENT, "bad"), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::InvalidClient,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn inactive_user_is_dead() {
    let s = run_as().await;
    s.emu.deactivate("005000000000001");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::AccountInactive, code: Some(c), .. } if c == "inactive_user"),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_session_on_rest_is_dead() {
    let s = run_as().await;
    s.emu.fail_next_on(
        "/services/oauth2/userinfo",
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            401,
            serde_json::json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        )),
    );
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { code: Some(c), .. } if c == "INVALID_SESSION_ID"),
        "{err:?}"
    );
}

#[tokio::test]
async fn refresh_token_without_rotation_keeps_working() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(CLIENT, "005000000000001");
    let spec = spec("salesforce", "RefreshToken", Some(&emu.base_url()), &[]);
    let material = refresh_token(CLIENT, Some(SECRET), &token);
    let verified = verify(&spec, &material, &set(&["api"])).await.unwrap();
    assert_eq!(verified.tokens().refresh_token(), None);
    assert!(verify(&spec, &material, &set(&["api"])).await.is_ok());
}

#[tokio::test]
async fn rotating_refresh_token_returns_the_new_one_and_the_old_one_dies() {
    let emu = emulator().await;
    emu.set_refresh_policy(RefreshPolicy::Rotate);
    let old = emu.issue_refresh_token(CLIENT, "005000000000001");
    let spec = spec("salesforce", "RefreshToken", Some(&emu.base_url()), &[]);
    let material = refresh_token(CLIENT, Some(SECRET), &old);
    let verified = verify(&spec, &material, &set(&[])).await.unwrap();
    let new = verified.tokens().refresh_token().expect("rotated");
    assert!(emu.refresh_token_valid(new.expose()));
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

#[tokio::test]
async fn invalid_api_version_is_misconfigured() {
    let emu = emulator().await;
    let spec = spec(
        "salesforce",
        "ClientCredentials",
        Some(&emu.base_url()),
        &[("apiVersion", "62")],
    );
    let err = verify(&spec, &client_credentials(CLIENT, SECRET), &set(&[]))
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
}

#[tokio::test]
async fn permission_entry_that_is_not_a_field_name_is_misconfigured() {
    let s = run_as().await;
    let err = verify(
        &s.spec,
        &s.material,
        &set(&["permission:Id FROM User WHERE"]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::InvalidPermission { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.emu.count("/services/data/v62.0/query"), 0);
}
