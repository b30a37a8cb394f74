//! The generic oauth2 provider against a real, independent authorization server
//! (oidc-provider, testkit/oauth-peer) over loopback HTTP: what our own emulator could not
//! tell us.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use reconnect_oauth_peer::{
    AccessTokenFormat, AuthMethod, Fault, NewClient, OAuthPeer, PeerClient, RefreshTokenState,
};
use reconnect_operator::api::ConnectorCredentialSpec;
use reconnect_operator::clock::ManualClock;
use reconnect_operator::providers::{
    DeadCause, Misconfiguration, Providers, TransientKind, VerifyError, VerifyRequest,
};

fn cc_spec(peer: &OAuthPeer, scope: &str) -> ConnectorCredentialSpec {
    spec(
        "oauth2",
        "ClientCredentials",
        Some(&peer.issuer()),
        &[("scope", scope)],
    )
}

fn rt_spec(peer: &OAuthPeer) -> ConnectorCredentialSpec {
    spec("oauth2", "RefreshToken", Some(&peer.issuer()), &[])
}

fn cc(client: &PeerClient) -> reconnect_operator::providers::CredentialMaterial {
    client_credentials(&client.id, client.secret())
}

fn request<'a>(
    spec: &'a ConnectorCredentialSpec,
    material: &'a reconnect_operator::providers::CredentialMaterial,
    required: &'a std::collections::BTreeSet<String>,
) -> VerifyRequest<'a> {
    VerifyRequest {
        key: "acme/peer",
        spec,
        material,
        required,
        timeout: TIMEOUT,
    }
}

fn is_dead(err: &VerifyError, want: DeadCause) -> bool {
    matches!(err, VerifyError::Dead { cause, .. } if *cause == want)
}

#[tokio::test]
async fn client_credentials_connect_names_the_client_as_the_account() {
    let peer = OAuthPeer::start().await;
    let svc = peer
        .client_credentials_client("svc-sync", &["read", "write"])
        .await;
    let verified = verify(&cc_spec(&peer, "read write"), &cc(&svc), &set(&["read"]))
        .await
        .unwrap();
    // oidc-provider's introspection of a client-credentials token has client_id, no sub.
    assert_eq!(verified.account().id, "svc-sync");
    assert_eq!(*verified.permissions(), set(&["read", "write"]));
    assert_eq!(verified.tokens().token_type(), Some("bearer"));
    assert_eq!(peer.introspection_requests().await, 1);
    assert_eq!(
        peer.token_requests_with("svc-sync", "client_credentials")
            .await,
        1
    );
}

#[tokio::test]
async fn granted_scopes_are_the_permissions_not_the_requested_ones() {
    let peer = OAuthPeer::start().await;
    let svc = peer
        .client_credentials_client("svc", &["read", "write", "admin"])
        .await;
    let verified = verify(&cc_spec(&peer, "read admin"), &cc(&svc), &set(&[]))
        .await
        .unwrap();
    assert_eq!(*verified.permissions(), set(&["admin", "read"]));
}

#[tokio::test]
async fn weak_client_missing_a_required_scope_is_a_permission_mismatch() {
    let peer = OAuthPeer::start().await;
    let weak = peer.client_credentials_client("weak", &["read"]).await;
    let err = verify(
        &cc_spec(&peer, "read write"),
        &cc(&weak),
        &set(&["read", "write"]),
    )
    .await
    .unwrap_err();
    match &err {
        VerifyError::PermissionDenied {
            missing,
            granted,
            account,
            ..
        } => {
            assert_eq!(missing, &["write"]);
            assert_eq!(granted, &set(&["read"]));
            assert_eq!(account.as_ref().map(|a| a.id.as_str()), Some("weak"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_scope_granted_to_nobody_is_not_held_even_when_the_answer_omits_scope() {
    let peer = OAuthPeer::start().await;
    let weak = peer.client_credentials_client("weak", &["read"]).await;
    // oidc-provider grants nothing here and answers without a `scope` field.
    let err = verify(&cc_spec(&peer, "admin"), &cc(&weak), &set(&["admin"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, granted, .. } if missing == &["admin"] && granted.is_empty()),
        "{err:?}"
    );
}

#[tokio::test]
async fn wrong_secret_is_dead_invalid_client_not_transient() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    let err = verify(
        &cc_spec(&peer, "read"),
        &client_credentials(&svc.id, "not-the-secret"),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::InvalidClient, status: Some(401), code: Some(c), .. } if c == "invalid_client"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(err.reason(), "ConnectionLost");
}

#[tokio::test]
async fn disabled_deleted_or_re_keyed_clients_are_dead() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    let spec = cc_spec(&peer, "read");
    let providers = Providers::new();
    let check =
        async |material| verify_with(&providers, &spec, &material, &set(&["read"]), TIMEOUT).await;
    assert!(check(cc(&svc)).await.is_ok());

    peer.disable_client(&svc.id).await;
    let err = check(cc(&svc)).await.unwrap_err();
    assert!(is_dead(&err, DeadCause::InvalidClient), "{err:?}");
    peer.enable_client(&svc.id).await;
    assert!(check(cc(&svc)).await.is_ok());

    peer.set_client_secret(&svc.id, "rotated-secret").await;
    let err = check(cc(&svc)).await.unwrap_err();
    assert!(is_dead(&err, DeadCause::InvalidClient), "{err:?}");
    assert!(
        check(client_credentials(&svc.id, "rotated-secret"))
            .await
            .is_ok()
    );

    peer.delete_client(&svc.id).await;
    let err = check(client_credentials(&svc.id, "rotated-secret"))
        .await
        .unwrap_err();
    assert!(is_dead(&err, DeadCause::InvalidClient), "{err:?}");
}

#[tokio::test]
async fn narrowing_a_clients_scopes_shows_up_as_a_permission_mismatch() {
    let peer = OAuthPeer::start().await;
    let svc = peer
        .client_credentials_client("svc", &["read", "write"])
        .await;
    let spec = cc_spec(&peer, "read write");
    let required = set(&["read", "write"]);
    assert!(verify(&spec, &cc(&svc), &required).await.is_ok());
    peer.set_client_scopes(&svc.id, &["read"]).await;
    let err = verify(&spec, &cc(&svc), &required).await.unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["write"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn refresh_token_chain_rotates_and_the_provider_hands_back_each_new_token() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read", "write"]).await;
    let first = peer
        .refresh_token_for(&app, "user-1", &["read", "write"])
        .await;
    let spec = rt_spec(&peer);
    let providers = Providers::new();
    let required = set(&["write"]);

    let material = refresh_token(&app.id, Some(app.secret()), &first);
    let verified = providers
        .verify(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(verified.account().id, "user-1");
    assert_eq!(*verified.permissions(), set(&["read", "write"]));
    let second = verified
        .tokens()
        .refresh_token()
        .expect("rotated")
        .expose()
        .to_owned();
    assert_ne!(second, first);
    assert_eq!(
        peer.refresh_token_state(&first).await,
        RefreshTokenState::Consumed
    );
    assert_eq!(
        peer.refresh_token_state(&second).await,
        RefreshTokenState::Active { rotations: 1 }
    );

    let material = refresh_token(&app.id, Some(app.secret()), &second);
    let tokens = providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    let third = tokens
        .refresh_token()
        .expect("rotated again")
        .expose()
        .to_owned();
    assert!(tokens.access_token().is_some());
    assert_eq!(
        peer.refresh_token_state(&second).await,
        RefreshTokenState::Consumed
    );
    assert_eq!(
        peer.refresh_token_state(&third).await,
        RefreshTokenState::Active { rotations: 2 }
    );
    assert_eq!(peer.token_requests_with("app", "refresh_token").await, 2);

    // The spent token is rejected as dead; oidc-provider's reuse detection then revokes the
    // whole chain, the newest token included.
    let err = providers
        .verify(&request(
            &spec,
            &refresh_token(&app.id, Some(app.secret()), &first),
            &required,
        ))
        .await
        .result()
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::Dead { cause: DeadCause::InvalidGrant, code: Some(c), .. } if c == "invalid_grant"),
        "{err:?}"
    );
    assert_eq!(
        peer.refresh_token_state(&third).await,
        RefreshTokenState::Revoked
    );
}

#[tokio::test]
async fn overlapping_refreshes_spend_a_rotating_token_once() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    let spec = rt_spec(&peer);
    let material = refresh_token(&app.id, Some(app.secret()), &token);
    let required = set(&[]);
    let providers = Providers::new();
    let req = request(&spec, &material, &required);
    let (a, b) = tokio::join!(providers.refresh(&req), providers.refresh(&req));
    let (a, b) = (a.result().unwrap(), b.result().unwrap());
    assert_eq!(a.refresh_token(), b.refresh_token());
    assert_eq!(peer.token_requests_with("app", "refresh_token").await, 1);
    let new = a.refresh_token().unwrap();
    assert_eq!(
        peer.refresh_token_state(new.expose()).await,
        RefreshTokenState::Active { rotations: 1 }
    );
}

#[tokio::test]
async fn revoked_refresh_token_is_dead() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    peer.revoke(&app, &token).await;
    assert_eq!(
        peer.refresh_token_state(&token).await,
        RefreshTokenState::Revoked
    );
    let err = verify(
        &rt_spec(&peer),
        &refresh_token(&app.id, Some(app.secret()), &token),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(is_dead(&err, DeadCause::InvalidGrant), "{err:?}");
}

#[tokio::test]
async fn deactivated_user_is_dead() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    peer.disable_account("user-1").await;
    let err = verify(
        &rt_spec(&peer),
        &refresh_token(&app.id, Some(app.secret()), &token),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(is_dead(&err, DeadCause::InvalidGrant), "{err:?}");
}

#[tokio::test]
async fn a_client_not_allowed_the_grant_is_misconfigured_not_dead() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    // oidc-provider answers invalid_request (not unauthorized_client) for a grant type the
    // client is not registered for.
    let err = verify(
        &rt_spec(&peer),
        &refresh_token(&svc.id, Some(svc.secret()), "some-token"),
        &set(&[]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::Misconfigured {
                problem: Misconfiguration::RequestRejected { code: Some(c), .. },
                ..
            } if c == "invalid_request"
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn sixty_second_tokens_expire_sixty_seconds_after_issue() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    peer.set_access_token_ttl(60).await;
    peer.set_client_access_token_ttl(&app.id, 300).await;
    let start = jiff::Timestamp::from_second(1_900_000_000).unwrap();
    let providers = Providers::new().with_clock(Arc::new(ManualClock::new(start)));

    let spec = cc_spec(&peer, "read");
    let material = cc(&svc);
    let required = set(&[]);
    let verified = providers
        .verify(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(
        verified.tokens().expires_at(),
        Some(start + jiff::SignedDuration::from_secs(60))
    );
    let access = verified.tokens().access_token().unwrap();
    let info = peer.access_token_info(access.expose()).await.unwrap();
    assert_eq!(info.lifetime(), Duration::from_secs(60));
    assert_eq!(info.kind, "ClientCredentials");

    let token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    let spec = rt_spec(&peer);
    let material = refresh_token(&app.id, Some(app.secret()), &token);
    let tokens = providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(
        tokens.expires_at(),
        Some(start + jiff::SignedDuration::from_secs(300))
    );
}

#[tokio::test]
async fn discovery_is_fetched_once_for_many_refreshes_and_probes() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let providers = Providers::new();
    let cc_spec = cc_spec(&peer, "read");
    let cc_material = cc(&svc);
    let required = set(&["read"]);
    for _ in 0..3 {
        providers
            .verify(&request(&cc_spec, &cc_material, &required))
            .await
            .result()
            .unwrap();
        providers
            .refresh(&request(&cc_spec, &cc_material, &required))
            .await
            .result()
            .unwrap();
    }
    let mut token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    let spec = rt_spec(&peer);
    for _ in 0..3 {
        let material = refresh_token(&app.id, Some(app.secret()), &token);
        let tokens = providers
            .refresh(&request(&spec, &material, &required))
            .await
            .result()
            .unwrap();
        token = tokens.refresh_token().unwrap().expose().to_owned();
    }
    // One discovery: the RFC 8414 path (oidc-provider answers 404) and the OpenID one.
    let counters = peer.counters().await;
    assert_eq!(counters.discovery, 2, "{counters:?}");
    assert_eq!(counters.paths["/.well-known/openid-configuration"], 1);
    assert_eq!(peer.token_requests("svc").await, 6);
    assert_eq!(peer.token_requests("app").await, 3);
}

#[tokio::test]
async fn discovery_is_fetched_again_when_its_max_age_runs_out() {
    let peer = OAuthPeer::start().await;
    peer.set_discovery_cache_control(Some("public, max-age=120"))
        .await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    let clock = ManualClock::new(jiff::Timestamp::from_second(1_900_000_000).unwrap());
    let providers = Providers::new().with_clock(Arc::new(clock.clone()));
    let spec = cc_spec(&peer, "read");
    let material = cc(&svc);
    let required = set(&[]);
    let openid = "/.well-known/openid-configuration";

    providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(peer.requests(openid).await, 1);
    clock.advance(Duration::from_secs(119));
    providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(peer.requests(openid).await, 1, "still fresh");
    clock.advance(Duration::from_secs(2));
    providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(peer.requests(openid).await, 2, "expired");

    // Without Cache-Control the default is an hour.
    peer.set_discovery_cache_control(None).await;
    clock.advance(Duration::from_secs(121));
    providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(peer.requests(openid).await, 3);
    clock.advance(Duration::from_secs(3599));
    providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(peer.requests(openid).await, 3, "an hour is not over");
    clock.advance(Duration::from_secs(2));
    providers
        .refresh(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(peer.requests(openid).await, 4);

    // no-store keeps it out of the cache.
    peer.set_discovery_cache_control(Some("no-store")).await;
    clock.advance(Duration::from_secs(3601));
    for expected in [5, 6] {
        providers
            .refresh(&request(&spec, &material, &required))
            .await
            .result()
            .unwrap();
        assert_eq!(peer.requests(openid).await, expected);
    }
}

#[tokio::test]
async fn moved_endpoints_are_rediscovered_instead_of_declaring_the_credential_dead() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    let providers = Providers::new();
    let spec = cc_spec(&peer, "read");
    let material = cc(&svc);
    let required = set(&["read"]);
    providers
        .verify(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    peer.move_endpoints("/v2").await;
    let verified = providers
        .verify(&request(&spec, &material, &required))
        .await
        .result()
        .unwrap();
    assert_eq!(verified.account().id, "svc");
    let counters = peer.counters().await;
    assert_eq!(counters.paths["/token"], 2, "{counters:?}");
    assert_eq!(counters.paths["/v2/token"], 1, "{counters:?}");
    assert_eq!(counters.paths["/v2/token/introspection"], 1);
    assert_eq!(counters.paths["/.well-known/openid-configuration"], 2);
}

#[tokio::test]
async fn rate_limited_token_endpoint_is_transient_with_retry_after() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    peer.fail_next_on(
        "/token",
        1,
        Fault::RateLimited {
            retry_after_secs: Some(7),
        },
    )
    .await;
    let err = verify(&cc_spec(&peer, "read"), &cc(&svc), &set(&[]))
        .await
        .unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::RateLimited, "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn unavailable_introspection_is_transient() {
    let peer = OAuthPeer::start().await;
    let svc = peer.client_credentials_client("svc", &["read"]).await;
    peer.fail_next_on(
        "/token/introspection",
        1,
        Fault::Unavailable {
            retry_after_secs: None,
        },
    )
    .await;
    let err = verify(&cc_spec(&peer, "read"), &cc(&svc), &set(&[]))
        .await
        .unwrap_err();
    assert_eq!(transient_kind(&err), TransientKind::Unavailable, "{err:?}");
}

#[tokio::test]
async fn client_ids_and_secrets_with_reserved_characters_survive_basic_auth() {
    let peer = OAuthPeer::start().await;
    // RFC 6749 §2.3.1: both are form-encoded before Basic; oidc-provider decodes them.
    let odd = peer
        .add_client(
            NewClient::client_credentials("reports:eu+1")
                .scopes(&["read"])
                .secret("s3cr+t/with:colon%&= space"),
        )
        .await;
    let verified = verify(&cc_spec(&peer, "read"), &cc(&odd), &set(&["read"]))
        .await
        .unwrap();
    assert_eq!(verified.account().id, "reports:eu+1");
}

#[tokio::test]
async fn a_client_registered_for_client_secret_post_connects_with_basic_too() {
    let peer = OAuthPeer::start().await;
    // oidc-provider accepts either secret method whatever the client registered.
    let post = peer
        .add_client(
            NewClient::client_credentials("post-client")
                .scopes(&["read"])
                .auth_method(AuthMethod::Post),
        )
        .await;
    let verified = verify(&cc_spec(&peer, "read"), &cc(&post), &set(&["read"]))
        .await
        .unwrap();
    assert_eq!(verified.account().id, "post-client");
}

#[tokio::test]
async fn jwt_access_tokens_the_server_cannot_introspect_are_read_from_their_claims() {
    let peer = OAuthPeer::start().await;
    peer.set_access_token_format(AccessTokenFormat::Jwt).await;
    let svc = peer
        .client_credentials_client("svc", &["read", "write"])
        .await;
    let weak = peer.client_credentials_client("weak", &["read"]).await;
    let spec = cc_spec(&peer, "read write");
    // oidc-provider advertises introspection but calls its own JWT access tokens inactive.
    let verified = verify(&spec, &cc(&svc), &set(&["write"])).await.unwrap();
    assert_eq!(verified.account().id, "svc");
    assert_eq!(*verified.permissions(), set(&["read", "write"]));
    assert_eq!(peer.introspection_requests().await, 1);
    let err = verify(&spec, &cc(&weak), &set(&["write"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::PermissionDenied { missing, .. } if missing == &["write"]),
        "{err:?}"
    );

    let app = peer.refresh_token_client("app", &["read"]).await;
    let token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    let verified = verify(
        &rt_spec(&peer),
        &refresh_token(&app.id, Some(app.secret()), &token),
        &set(&["read"]),
    )
    .await
    .unwrap();
    assert_eq!(verified.account().id, "user-1");
    assert_eq!(*verified.permissions(), set(&["read"]));
}
