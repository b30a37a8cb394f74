//! The ConnectorCredential controller end to end against a real, independent OAuth 2.0
//! server (oidc-provider, testkit/oauth-peer): short-lived tokens stay within two token
//! requests per lifetime, a dead or unreachable issuer is not hammered, a disabled client is
//! reported against its account, and a rotating refresh-token chain survives restarts.
//!
//! The controller runs on a manual clock; the peer's tokens live in real time, but the
//! controller computes every expiry from its own clock, so "ten minutes of controller time"
//! pass in steps without waiting for them.

mod support;

use std::time::Duration;

use reconnect_oauth_peer::{OAuthPeer, RefreshTokenState};
use reconnect_operator::api::Phase;
use reconnect_operator::clock::Clock;
use serde_json::json;
use support::*;

fn cc_spec(peer: &OAuthPeer) -> serde_json::Value {
    json!({
        "provider": "oauth2",
        "auth": "ClientCredentials",
        "secretRef": {"name": "peer-src"},
        "endpoint": peer.issuer(),
        "params": {"scope": "read"},
    })
}

async fn connect_cc(env: &Env, peer: &OAuthPeer, client: &str, ttl: u64) {
    let svc = peer.client_credentials_client(client, &["read"]).await;
    peer.set_client_access_token_ttl(client, ttl).await;
    env.apply_secret(
        "peer-src",
        &[("client_id", &svc.id), ("client_secret", svc.secret())],
    )
    .await;
    env.apply_credential("peer-sync", cc_spec(peer)).await;
    env.wait_cred("peer-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await;
}

/// Runs `span` of controller time in `step`s, re-reconciling after each, and checks at every
/// step that the target Secret's access token has not expired on the controller's clock.
async fn run_for(env: &Env, span: Duration, step: Duration) {
    let mut elapsed = Duration::ZERO;
    while elapsed < span {
        env.advance(step).await;
        elapsed += step;
        let target = env.secret("peer-sync-active").await.expect("target Secret");
        let expires: jiff::Timestamp = data(&target)["expires_at"].parse().unwrap();
        let now = env.clock.now();
        assert!(
            expires > now,
            "the sync's access token expired at {expires} (controller time {now})"
        );
    }
}

/// Token requests allowed over `span` after connecting, for tokens of `lifetime`: two per
/// lifetime, and one per 15-minute validation interval (a probe of a client-credentials
/// credential mints a token).
fn allowed(span: Duration, lifetime: Duration) -> u64 {
    let lifetimes = span.as_secs().div_ceil(lifetime.as_secs());
    2 * lifetimes + span.as_secs() / (15 * 60)
}

#[tokio::test]
async fn sixty_second_tokens_for_ten_minutes_take_at_most_two_token_requests_per_lifetime() {
    let peer = OAuthPeer::start().await;
    let env = Env::start().await;
    connect_cc(&env, &peer, "svc-60s", 60).await;
    let before = peer.token_requests("svc-60s").await;
    assert!(before >= 1);

    let span = Duration::from_secs(10 * 60);
    run_for(&env, span, Duration::from_secs(5)).await;
    let made = peer.token_requests("svc-60s").await - before;
    println!("60-second tokens, 10 minutes: {made} token requests");
    assert!(
        made <= allowed(span, Duration::from_secs(60)),
        "{made} token requests in 10 minutes of 60-second tokens"
    );
    assert!(made >= 10, "the token was kept fresh: only {made} requests");
    assert_eq!(phase(&env.cred("peer-sync").await), Some(Phase::Connected));
    env.shutdown().await;
}

#[tokio::test]
async fn five_minute_tokens_for_an_hour_take_at_most_two_token_requests_per_lifetime() {
    let peer = OAuthPeer::start().await;
    let env = Env::start().await;
    connect_cc(&env, &peer, "svc-5m", 300).await;
    let before = peer.token_requests("svc-5m").await;

    let span = Duration::from_secs(60 * 60);
    run_for(&env, span, Duration::from_secs(20)).await;
    let made = peer.token_requests("svc-5m").await - before;
    println!("5-minute tokens, 1 hour: {made} token requests");
    assert!(
        made <= allowed(span, Duration::from_secs(300)),
        "{made} token requests in an hour of 5-minute tokens"
    );
    assert!(made >= 12, "the token was kept fresh: only {made} requests");
    env.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_issuer_gets_no_more_attempts_than_the_backoff_schedule() {
    let env = Env::start().await;
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    env.apply_secret(
        "peer-src",
        &[("client_id", "svc"), ("client_secret", "s3cr3t")],
    )
    .await;
    let started = tokio::time::Instant::now();
    env.apply_credential(
        "peer-sync",
        json!({
            "provider": "oauth2",
            "auth": "ClientCredentials",
            "secretRef": {"name": "peer-src"},
            "endpoint": format!("http://127.0.0.1:{closed}"),
        }),
    )
    .await;
    env.wait_cred("peer-sync", "a failure recorded", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.consecutive_failures >= 1)
    })
    .await;
    // Watch it fail for a while of real time: the backoff (1 s, doubling, with jitter) is in
    // real time, so a slower machine makes fewer attempts, never more.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let seconds = started.elapsed().as_secs_f64();
    let failures = env
        .cred("peer-sync")
        .await
        .status
        .map(|s| s.consecutive_failures)
        .unwrap_or_default();
    // Attempts at 0, then after >= 0.5 s, >= 1 s, >= 2 s, >= 4 s (the jitter at most halves
    // a delay): at most 1 + log2(seconds / 0.5) + 1 in `seconds`.
    let bound = 2 + (seconds / 0.5).log2().ceil() as i32;
    assert!(
        (1..=bound).contains(&failures),
        "{failures} failed attempts in {seconds:.1} s (bound {bound})"
    );
    let reconciles = env.reconciles();
    assert!(
        reconciles <= bound as u64 + 2,
        "{reconciles} reconciles in {seconds:.1} s: status writes must not wake the credential"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_disabled_client_is_connection_lost_naming_the_account() {
    let peer = OAuthPeer::start().await;
    let env = Env::start().await;
    connect_cc(&env, &peer, "svc-sync", 3600).await;
    peer.disable_client("svc-sync").await;
    env.advance(PAST_NEXT_PROBE).await;
    let cred = env
        .wait_cred("peer-sync", "ConnectionLost", |c| {
            phase(c) == Some(Phase::ConnectionLost)
        })
        .await;
    let ready = condition(&cred, "Ready").unwrap();
    assert!(
        ready.message.contains("svc-sync") && ready.message.contains("invalid_client"),
        "names the account and the cause: {}",
        ready.message
    );
    assert_eq!(
        cred.status
            .as_ref()
            .and_then(|s| s.account.as_ref())
            .map(|a| a.id.as_str()),
        Some("svc-sync")
    );
    env.wait_event("peer-sync", "ConnectionLost").await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_rotating_refresh_token_chain_survives_controller_restarts() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    peer.set_client_access_token_ttl("app", 120).await;
    let first = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    let mut env = Env::start().await;
    env.apply_secret(
        "peer-src",
        &[
            ("client_id", app.id.as_str()),
            ("client_secret", app.secret()),
            ("refresh_token", first.as_str()),
        ],
    )
    .await;
    env.apply_credential(
        "peer-sync",
        json!({
            "provider": "oauth2",
            "auth": "RefreshToken",
            "secretRef": {"name": "peer-src"},
            "endpoint": peer.issuer(),
        }),
    )
    .await;
    let cred = env
        .wait_cred("peer-sync", "Connected", |c| {
            phase(c) == Some(Phase::Connected)
        })
        .await;
    assert_eq!(
        cred.status
            .as_ref()
            .and_then(|s| s.account.as_ref())
            .map(|a| a.id.as_str()),
        Some("user-1")
    );

    // The refresh token the target Secret holds, once it differs from `before`: a refresh
    // has spent `before` and persisted its successor. (A tick returns after some reconcile
    // finished, which on a real API server need not be the refresh.)
    let moved_on = async |env: &Env, before: &str| {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let target = env.secret("peer-sync-active").await.unwrap();
            let current = data(&target)["refresh_token"].clone();
            if current != before {
                return current;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no refresh persisted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut current = data(&env.secret("peer-sync-active").await.unwrap())["refresh_token"].clone();
    for round in 0..3 {
        // Past half the token's life: a refresh, which spends the current refresh token. The
        // restart comes after it was persisted (a crash between the grant and the write would
        // lose the new token: that window is the provider's rotation design, not ours).
        env.advance(Duration::from_secs(70)).await;
        current = moved_on(&env, &current).await;
        env.restart().await;
        env.advance(Duration::from_secs(70)).await;
        current = moved_on(&env, &current).await;
        let state = peer.refresh_token_state(&current).await;
        assert!(
            matches!(state, RefreshTokenState::Active { .. }),
            "round {round}: the target Secret holds the live end of the chain ({state:?})"
        );
    }
    assert_eq!(
        peer.refresh_token_state(&first).await,
        RefreshTokenState::Consumed,
        "the chain moved on from the first token"
    );
    let refreshes = peer.token_requests_with("app", "refresh_token").await;
    assert!(refreshes >= 3, "{refreshes} refreshes");
    assert_eq!(phase(&env.cred("peer-sync").await), Some(Phase::Connected));
    env.shutdown().await;
}
