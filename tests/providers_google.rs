//! Google Drive against the emulator over loopback HTTP.

mod common;

use common::*;
use reconnect_emulators::{Account, GoogleEmulator};
use reconnect_operator::providers::{DeadCause, TransientKind, VerifyError};

const CLIENT: &str = "123.apps.googleusercontent.com";
const SECRET: &str = "google-secret";
const DRIVE: &str = "https://www.googleapis.com/auth/drive.readonly";

async fn offline() -> Setup<reconnect_emulators::Google> {
    let emu = GoogleEmulator::start().await;
    emu.add_account(Account::new("0123456789", "gina").with_scopes([DRIVE]));
    emu.add_client(CLIENT, SECRET, None);
    let token = emu.issue_refresh_token(CLIENT, "0123456789");
    Setup {
        spec: spec("google", "RefreshToken", Some(&emu.base_url()), &[]),
        material: refresh_token(CLIENT, Some(SECRET), &token),
        required: set(&[DRIVE]),
        probe: "/drive/v3/about",
        token: Some("/token"),
        emu,
    }
}

fault_tests!(offline, oauth);

#[tokio::test]
async fn refresh_token_verifies_drive_user_and_scopes() {
    let s = offline().await;
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, "0123456789");
    assert_eq!(verified.account().name, "gina@example.test");
    assert_eq!(*verified.permissions(), set(&[DRIVE]));
    assert_eq!(verified.tokens().token_type(), Some("bearer"));
    assert_eq!(s.emu.count("/drive/v3/about"), 1);
}

#[tokio::test]
async fn missing_scope_is_a_permission_mismatch() {
    let s = offline().await;
    let err = verify(
        &s.spec,
        &s.material,
        &set(&["https://www.googleapis.com/auth/drive"]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::PermissionDenied { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn insufficient_scopes_from_drive_is_a_permission_problem() {
    let s = offline().await;
    s.emu.set_scopes("0123456789", ["openid"]);
    let err = verify(&s.spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { code: Some(c), status: Some(403), .. } if c == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"),
        "{err:?}"
    );
}

#[tokio::test]
async fn user_rate_limit_403_is_transient_not_a_permission_problem() {
    let s = offline().await;
    s.emu.user_rate_limit_next(1);
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::RateLimited, "{err:?}");
}

#[tokio::test]
async fn expired_or_revoked_refresh_token_is_dead() {
    let s = offline().await;
    s.emu
        .revoke(s.material.refresh_token.as_ref().unwrap().expose());
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::InvalidGrant, code: Some(c), .. } if c == "invalid_grant"),
        "{err:?}"
    );
}

#[tokio::test]
async fn drive_refusing_the_fresh_token_is_dead() {
    let s = offline().await;
    s.emu.fail_next_on(
        s.probe,
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            401,
            serde_json::json!({"error": {"code": 401, "errors": [{"reason": "authError"}]}}),
        )),
    );
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::TokenRejected,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn refresh_token_keeps_working_after_use() {
    let s = offline().await;
    assert!(s.verify().await.is_ok());
    assert!(s.verify().await.is_ok());
    assert_eq!(s.emu.count("/token"), 2);
}
