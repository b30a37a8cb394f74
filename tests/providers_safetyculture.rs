//! SafetyCulture against the emulator over loopback HTTP.

mod common;

use std::time::Duration;

use common::*;
use reconnect_emulators::{Account, Fault, SafetyCultureEmulator};
use reconnect_operator::providers::{DeadCause, VerifyError};

async fn token() -> Setup<reconnect_emulators::SafetyCulture> {
    let emu = SafetyCultureEmulator::start().await;
    emu.add_account(
        Account::new("user_abc", "Sam Service").with_permissions(["organisation:role_123"]),
    );
    emu.add_api_key("sc-token", "user_abc");
    Setup {
        spec: spec("safetyculture", "ApiKey", Some(&emu.base_url()), &[]),
        material: api_key("sc-token"),
        required: set(&["organisation:role_123"]),
        probe: "/accounts/user/v1/user:WhoAmI",
        token: None,
        emu,
    }
}

fault_tests!(token);

#[tokio::test]
async fn api_token_verifies_user_and_organisation_and_sets_inactivity_expiry() {
    let s = token().await;
    let before = jiff::Timestamp::now();
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, "user_abc");
    assert_eq!(verified.account().name, "Sam Service");
    assert_eq!(*verified.permissions(), set(&["organisation:role_123"]));
    let expires = verified
        .credential_expires_at()
        .expect("30-day inactivity expiry");
    let days = expires.duration_since(before).as_secs() / 86_400;
    assert_eq!(days, 30);
    assert_eq!(s.emu.count("/accounts/user/v1/user:WhoAmI"), 1);
}

#[tokio::test]
async fn token_of_another_organisation_is_a_permission_mismatch() {
    let s = token().await;
    s.emu.set_permissions("user_abc", ["organisation:role_999"]);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["organisation:role_123"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn revoked_token_is_dead() {
    let s = token().await;
    s.emu.revoke("sc-token");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::ApiKeyRejected,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn departed_user_is_dead() {
    let s = token().await;
    s.emu.deactivate("user_abc");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn forbidden_is_a_permission_problem() {
    let s = token().await;
    s.emu.fail_next_on(s.probe, 1, Fault::Status(403));
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(err, VerifyError::PermissionDenied { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn rate_limit_reset_header_is_read_as_seconds() {
    let s = token().await;
    s.emu.fail_next_on(
        s.probe,
        1,
        Fault::Respond(
            reconnect_emulators::Response::json(429, serde_json::json!({}))
                .header("x-ratelimit-reset", "42"),
        ),
    );
    let err = s.verify().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(42)));
}
