//! Microsoft Entra + Graph against the emulator over loopback HTTP.

mod common;

use common::*;
use reconnect_emulators::{Account, MicrosoftEmulator};
use reconnect_operator::providers::{DeadCause, Misconfiguration, TransientKind, VerifyError};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const APP_ID: &str = "app-id";
const APP_SECRET: &str = "app-secret";
const SITE: &str = "contoso.sharepoint.com,aaaa,bbbb";

async fn emulator() -> MicrosoftEmulator {
    let emu = MicrosoftEmulator::start().await;
    emu.set_tenant(TENANT);
    emu.add_account(
        Account::new("sp-object-id", "Sync App")
            .with_scopes(["Sites.ReadWrite.All", "Files.Read.All"])
            .with_permissions([format!("site:{SITE}")]),
    );
    emu.add_account(
        Account::new("user-oid", "Jane")
            .with_scopes(["Sites.Read.All", "User.Read", "offline_access"])
            .with_permissions([format!("site:{SITE}")]),
    );
    emu.add_client(APP_ID, APP_SECRET, Some("sp-object-id"));
    emu
}

async fn app() -> Setup<reconnect_emulators::Microsoft> {
    let emu = emulator().await;
    Setup {
        spec: spec(
            "microsoft",
            "ClientCredentials",
            Some(&emu.base_url()),
            &[("tenantId", TENANT)],
        ),
        material: client_credentials(APP_ID, APP_SECRET),
        required: set(&["Sites.ReadWrite.All"]),
        probe: "/v1.0/organization",
        token: Some("/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"),
        emu,
    }
}

fault_tests!(app, oauth);

#[tokio::test]
async fn app_only_token_verifies_with_roles_from_the_token() {
    let s = app().await;
    let verified = s.verify().await.unwrap();
    assert_eq!(verified.account().id, APP_ID);
    assert_eq!(verified.account().name, "Sync App");
    assert_eq!(
        *verified.permissions(),
        set(&["Files.Read.All", "Sites.ReadWrite.All"])
    );
    assert_eq!(verified.tokens().refresh_token(), None);
    assert_eq!(s.emu.count("/v1.0/organization"), 1, "exactly one probe");
}

#[tokio::test]
async fn missing_application_permission_is_a_permission_mismatch() {
    let s = app().await;
    let err = verify(
        &s.spec,
        &s.material,
        &set(&["sites.readwrite.all", "Mail.Send"]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["Mail.Send"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn app_token_without_any_roles_is_a_permission_mismatch() {
    let s = app().await;
    s.emu.set_scopes("sp-object-id", Vec::<String>::new());
    let err = verify(&s.spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { code: Some(c), .. } if c == "no_roles"),
        "{err:?}"
    );
}

#[tokio::test]
async fn reachable_site_is_a_permission_and_unreachable_site_is_missing() {
    let s = app().await;
    let site = format!("site:{SITE}");
    let ok = verify(&s.spec, &s.material, &set(&[&site])).await.unwrap();
    assert!(ok.permissions().contains(&site));
    let err = verify(&s.spec, &s.material, &set(&["site:other,1,2"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["site:other,1,2"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn opaque_tokens_carry_no_claims_and_only_probes_count() {
    let s = app().await;
    s.emu.use_opaque_tokens();
    let site = format!("site:{SITE}");
    let verified = verify(&s.spec, &s.material, &set(&[&site])).await.unwrap();
    assert_eq!(*verified.permissions(), set(&[&site]));
    let err = verify(&s.spec, &s.material, &set(&["Sites.ReadWrite.All"]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::PermissionDenied { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_secret_is_dead_by_aadsts_code() {
    let s = app().await;
    let err = verify(&s.spec, &client_credentials(APP_ID, "nope"), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::InvalidClient, code: Some(c), .. } if c == "invalid_client/AADSTS7000215"),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired_client_secret_is_dead() {
    let s = app().await;
    s.emu.expire_client_secret(APP_ID);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { code: Some(c), .. } if c.ends_with("AADSTS7000222")),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_admin_consent_is_a_permission_mismatch_not_dead() {
    let s = app().await;
    s.emu.require_consent(APP_ID);
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { code: Some(c), .. } if c.ends_with("AADSTS65001")),
        "{err:?}"
    );
}

#[tokio::test]
async fn scope_for_the_wrong_cloud_is_refused() {
    let s = app().await;
    s.emu.set_graph_host("graph.microsoft.us");
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { code: Some(c), .. } if c.ends_with("AADSTS70011")),
        "{err:?}"
    );
    let usgov = spec(
        "microsoft",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("tenantId", TENANT), ("cloud", "usgov")],
    );
    assert!(verify(&usgov, &s.material, &s.required).await.is_ok());
}

#[tokio::test]
async fn unknown_tenant_is_misconfigured() {
    let s = app().await;
    let spec = spec(
        "microsoft",
        "ClientCredentials",
        Some(&s.emu.base_url()),
        &[("tenantId", "other-tenant")],
    );
    let err = verify(&spec, &s.material, &set(&[])).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::RequestRejected { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_tenant_is_misconfigured() {
    let emu = emulator().await;
    let spec = spec("microsoft", "ClientCredentials", Some(&emu.base_url()), &[]);
    let err = verify(&spec, &client_credentials(APP_ID, APP_SECRET), &set(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::MissingParam {
                    name: "tenantId",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn delegated_refresh_token_verifies_the_user_with_scp() {
    let emu = emulator().await;
    let old = emu.issue_refresh_token(APP_ID, "user-oid");
    let spec = spec(
        "microsoft",
        "RefreshToken",
        Some(&emu.base_url()),
        &[("tenantId", TENANT)],
    );
    let material = refresh_token(APP_ID, Some(APP_SECRET), &old);
    let verified = verify(&spec, &material, &set(&["Sites.Read.All"]))
        .await
        .unwrap();
    assert_eq!(verified.account().id, "user-oid");
    assert!(verified.permissions().contains("offline_access"));
    assert_eq!(emu.count("/v1.0/me"), 1);
    // Microsoft issues a new refresh token on each use; the old one is not revoked.
    let new = verified
        .tokens()
        .refresh_token()
        .expect("a new refresh token");
    assert_ne!(new.expose(), old);
    assert!(emu.refresh_token_valid(&old));
}

#[tokio::test]
async fn revoked_refresh_token_is_dead() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(APP_ID, "user-oid");
    emu.revoke(&token);
    let spec = spec(
        "microsoft",
        "RefreshToken",
        Some(&emu.base_url()),
        &[("tenantId", TENANT)],
    );
    let err = verify(
        &spec,
        &refresh_token(APP_ID, Some(APP_SECRET), &token),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::InvalidGrant, code: Some(c), .. } if c.ends_with("AADSTS70008")),
        "{err:?}"
    );
}

#[tokio::test]
async fn user_revoked_by_admin_is_dead() {
    let emu = emulator().await;
    let token = emu.issue_refresh_token(APP_ID, "user-oid");
    emu.deactivate("user-oid");
    let spec = spec(
        "microsoft",
        "RefreshToken",
        Some(&emu.base_url()),
        &[("tenantId", TENANT)],
    );
    let err = verify(
        &spec,
        &refresh_token(APP_ID, Some(APP_SECRET), &token),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { code: Some(c), .. } if c.ends_with("AADSTS50173")),
        "{err:?}"
    );
}

#[tokio::test]
async fn throttled_tenant_code_is_transient_whatever_the_status() {
    let s = app().await;
    s.emu.fail_next_on(
        s.token.unwrap(),
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            400,
            serde_json::json!({"error": "invalid_request", "error_codes": [90055]}),
        )),
    );
    let err = s.verify().await.unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::RateLimited);
}

#[tokio::test]
async fn graph_rejecting_the_new_token_is_dead() {
    let s = app().await;
    s.emu.fail_next_on(
        "/v1.0/organization",
        1,
        reconnect_emulators::Fault::Respond(reconnect_emulators::Response::json(
            401,
            serde_json::json!({"error": {"code": "InvalidAuthenticationToken", "message": "x"}}),
        )),
    );
    let err = s.verify().await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { code: Some(c), .. } if c == "InvalidAuthenticationToken"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_cloud_is_misconfigured_before_any_call() {
    let emu = emulator().await;
    let spec = spec(
        "microsoft",
        "ClientCredentials",
        Some(&emu.base_url()),
        &[("tenantId", TENANT), ("cloud", "mars")],
    );
    let err = verify(&spec, &client_credentials(APP_ID, APP_SECRET), &set(&[]))
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
}
