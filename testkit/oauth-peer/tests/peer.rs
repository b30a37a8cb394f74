//! The peer itself: admin hooks do what they say, and node never outlives its owner.

use std::time::{Duration, Instant};

use reconnect_oauth_peer::{Fault, OAuthPeer, RefreshTokenState};
use serde_json::Value;

async fn token(peer: &OAuthPeer, id: &str, secret: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(peer.token_endpoint())
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Whether a process is gone (reaped, or a zombie waiting for its new parent to reap it).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_until_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test]
async fn issues_client_credentials_tokens_and_counts_them() {
    let peer = OAuthPeer::start().await;
    let client = peer
        .client_credentials_client("svc", &["read", "write"])
        .await;
    let (status, body) = token(
        &peer,
        &client.id,
        client.secret(),
        &[("grant_type", "client_credentials"), ("scope", "read")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read");
    assert_eq!(body["token_type"], "Bearer");
    let info = peer
        .access_token_info(body["access_token"].as_str().unwrap())
        .await
        .expect("active");
    assert_eq!(info.client_id, "svc");
    assert_eq!(info.lifetime(), Duration::from_secs(3600));
    assert_eq!(
        peer.token_requests_with("svc", "client_credentials").await,
        1
    );
    let (status, body) = token(
        &peer,
        "svc",
        "wrong",
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert_eq!(peer.token_requests("svc").await, 2);
    peer.reset_counters().await;
    assert_eq!(peer.counters().await, Default::default());
}

#[tokio::test]
async fn rotates_refresh_tokens_and_revokes_the_chain_on_reuse() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let first = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    assert_eq!(
        peer.refresh_token_state(&first).await,
        RefreshTokenState::Active { rotations: 0 }
    );
    let refresh = |rt: String| {
        let peer = &peer;
        let app = &app;
        async move {
            token(
                peer,
                &app.id,
                app.secret(),
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            )
            .await
        }
    };
    let (status, body) = refresh(first.clone()).await;
    assert_eq!(status, 200, "{body}");
    let second = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(
        peer.refresh_token_state(&first).await,
        RefreshTokenState::Consumed
    );
    assert_eq!(
        peer.refresh_token_state(&second).await,
        RefreshTokenState::Active { rotations: 1 }
    );
    let (status, body) = refresh(first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        peer.refresh_token_state(&second).await,
        RefreshTokenState::Revoked
    );
}

#[tokio::test]
async fn scripted_faults_answer_before_oidc_provider() {
    let peer = OAuthPeer::start().await;
    peer.fail_next_on(
        "/token",
        1,
        Fault::RateLimited {
            retry_after_secs: Some(7),
        },
    )
    .await;
    let response = reqwest::Client::new()
        .post(peer.token_endpoint())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(peer.requests("/token").await, 1);
}

#[tokio::test]
async fn node_is_killed_on_drop() {
    let peer = OAuthPeer::start().await;
    let pid = peer.pid();
    assert!(!gone(pid));
    drop(peer);
    assert!(wait_until_gone(pid));
}

#[test]
fn node_exits_when_its_owner_exits_without_dropping_the_peer() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_oauth-peer"))
        .arg("--exit")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .unwrap_or_else(|| panic!("no pid in {stdout}"))
        .parse()
        .unwrap();
    assert!(wait_until_gone(pid), "node {pid} outlived its owner");
}
