//! Dropbox against the emulator over loopback HTTP.

mod common;

use common::*;
use reconnect_emulators::{Account, DropboxEmulator};
use reconnect_operator::providers::{DeadCause, VerifyError};

const APP_KEY: &str = "app-key";
const APP_SECRET: &str = "app-secret";

async fn offline() -> Setup<reconnect_emulators::Dropbox> {
    let emu = DropboxEmulator::start().await;
    emu.add_account(
        Account::new("dbid:AAA", "Dana").with_scopes(["account_info.read", "files.content.read"]),
    );
    let token = emu.issue_refresh_token(APP_KEY, "dbid:AAA");
    emu.add_client(APP_KEY, APP_SECRET, None);
    Setup {
        spec: spec("dropbox", "RefreshToken", Some(&emu.base_url()), &[]),
        material: refresh_token(APP_KEY, Some(APP_SECRET), &token),
        required: set(&["files.content.read"]),
        probe: "/2/users/get_current_account",
        token: Some("/oauth2/token"),
        emu,
    }
}

fault_tests!(offline, oauth);

#[tokio::test]
async fn refresh_token_verifies_account_and_scopes() {
    let s = offline().await;
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, "dbid:AAA");
    assert_eq!(verified.account().name, "Dana@example.test");
    assert_eq!(
        *verified.permissions(),
        set(&["account_info.read", "files.content.read"])
    );
    assert_eq!(
        verified.tokens().refresh_token(),
        None,
        "Dropbox refresh tokens do not rotate"
    );
    assert_eq!(s.emu.count("/2/users/get_current_account"), 1);
    assert!(
        s.verify().await.is_ok(),
        "the same refresh token keeps working"
    );
}

#[tokio::test]
async fn public_client_without_secret_refreshes() {
    let s = offline().await;
    s.emu.add_public_client("pkce-app");
    let token = s.emu.issue_refresh_token("pkce-app", "dbid:AAA");
    assert!(
        verify(
            &s.spec,
            &refresh_token("pkce-app", None, &token),
            &s.required
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn missing_scope_in_token_is_a_permission_mismatch() {
    let s = offline().await;
    let err = verify(&s.spec, &s.material, &set(&["files.content.write"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["files.content.write"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_scope_error_from_the_api_names_the_scope() {
    let s = offline().await;
    s.emu.set_scopes("dbid:AAA", ["files.content.read"]);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, code: Some(c), .. } if missing == &["account_info.read"] && c == "missing_scope"),
        "{err:?}"
    );
}

#[tokio::test]
async fn revoked_refresh_token_is_dead() {
    let s = offline().await;
    s.emu
        .revoke(s.material.refresh_token.as_ref().unwrap().expose());
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
async fn suspended_user_is_dead() {
    let s = offline().await;
    let token = s.emu.issue_refresh_token(APP_KEY, "dbid:AAA");
    let material = refresh_token(APP_KEY, Some(APP_SECRET), &token);
    // Suspension after the grant: the API refuses the fresh token.
    s.emu.fail_next_on(
        s.probe,
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            401,
            serde_json::json!({"error_summary": "user_suspended/", "error": {".tag": "user_suspended"}}),
        )),
    );
    let err = verify(&s.spec, &material, &s.required).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::AccountInactive,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_access_token_is_dead() {
    let s = offline().await;
    s.emu.deactivate("dbid:AAA");
    let err = s.verify().await.unwrap_err();
    assert!(matches!(err, VerifyError::Dead { .. }), "{err:?}");
}

#[tokio::test]
async fn wrong_app_secret_is_dead() {
    let s = offline().await;
    let material = refresh_token(
        APP_KEY,
        Some("nope"),
        s.material.refresh_token.as_ref().unwrap().expose(),
    );
    let err = verify(&s.spec, &material, &s.required).await.unwrap_err();
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
