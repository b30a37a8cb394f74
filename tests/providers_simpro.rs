//! Simpro against the emulator over loopback HTTP.

mod common;

use common::*;
use reconnect_emulators::{Account, SimproEmulator};
use reconnect_operator::providers::{DeadCause, Misconfiguration, VerifyError};

async fn key() -> Setup<reconnect_emulators::Simpro> {
    let emu = SimproEmulator::start().await;
    emu.add_account(Account::new("12", "Sync Bot").with_permissions(["company:0", "company:3"]));
    emu.add_api_key("simpro-key", "12");
    Setup {
        spec: spec(
            "simpro",
            "ApiKey",
            Some(&format!("{}/", emu.base_url())),
            &[],
        ),
        material: api_key("simpro-key"),
        required: set(&["company:3"]),
        probe: "/api/v1.0/currentUser/",
        token: None,
        emu,
    }
}

fault_tests!(key);

#[tokio::test]
async fn api_key_verifies_user_and_accessible_companies() {
    let s = key().await;
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, "12");
    assert_eq!(verified.account().name, "Sync Bot");
    assert_eq!(*verified.permissions(), set(&["company:0", "company:3"]));
    let tokens = verified.tokens();
    assert!(tokens.access_token().is_none() && tokens.refresh_token().is_none());
    assert!(tokens.expires_at().is_none() && tokens.token_type().is_none());
    assert_eq!(
        s.emu.count("/api/v1.0/currentUser/"),
        1,
        "exactly one probe"
    );
}

#[tokio::test]
async fn instance_url_with_api_path_is_normalised() {
    let s = key().await;
    let spec = spec(
        "simpro",
        "ApiKey",
        Some(&format!("{}/api/v1.0/", s.emu.base_url())),
        &[],
    );
    assert!(verify(&spec, &s.material, &s.required).await.is_ok());
}

#[tokio::test]
async fn configured_company_must_be_accessible() {
    let s = key().await;
    let spec = spec(
        "simpro",
        "ApiKey",
        Some(&s.emu.base_url()),
        &[("companyId", "5")],
    );
    let err = verify(&spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, account: Some(_), .. } if missing == &["company:5"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn default_company_zero_is_required() {
    let s = key().await;
    s.emu.set_permissions("12", ["company:3"]);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["company:0"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn required_company_missing_is_a_permission_mismatch() {
    let s = key().await;
    let err = verify(&s.spec, &s.material, &set(&["company:9"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["company:9"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn revoked_key_is_dead() {
    let s = key().await;
    s.emu.revoke("simpro-key");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Dead {
                cause: DeadCause::ApiKeyRejected,
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn forbidden_is_a_permission_problem() {
    let s = key().await;
    s.emu.fail_next_on(
        "/api/v1.0/currentUser/",
        1,
        reconnect_emulators::Fault::Status(403),
    );
    let err = s.verify().await.unwrap_err();
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
async fn missing_instance_url_is_misconfigured() {
    let spec = spec("simpro", "ApiKey", None, &[]);
    let err = verify(&spec, &api_key("k"), &set(&[])).await.unwrap_err();
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
async fn client_credentials_are_not_supported() {
    let s = key().await;
    let spec = spec("simpro", "ClientCredentials", Some(&s.emu.base_url()), &[]);
    let err = verify(&spec, &client_credentials("a", "b"), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::UnsupportedAuth { .. },
                ..
            }
        ),
        "{err:?}"
    );
}
