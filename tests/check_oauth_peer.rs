//! `reconnect-operator check` (the built binary) against a real authorization server
//! (oidc-provider, testkit/oauth-peer).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

use reconnect_oauth_peer::{OAuthPeer, RefreshTokenState};

/// A scratch dir under cargo's target tmp dir (not /tmp), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "check-oauth-peer-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn credential(auth: &str, issuer: &str, params: &str, required: &[&str]) -> String {
    format!(
        "apiVersion: reconnect.dev/v1alpha1
kind: ConnectorCredential
metadata:
  name: sync
  namespace: acme
spec:
  provider: oauth2
  auth: {auth}
  endpoint: {issuer}
  secretRef:
    name: sync-source
  params: {{{params}}}
  requiredPermissions: [{}]
",
        required.join(", ")
    )
}

fn secret(entries: &[(&str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sync-source\n  namespace: acme\nstringData:\n",
    );
    for (k, v) in entries {
        yaml.push_str(&format!("  {k}: {v:?}\n"));
    }
    yaml
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_reconnect-operator"))
            .arg("check")
            .args(args)
            .output()
            .expect("run the binary")
    })
    .await
    .unwrap()
}

fn args(credential: &Path, secret: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        credential.display().to_string(),
        "--secret".into(),
        secret.display().to_string(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connects_a_client_credentials_client_and_names_it() {
    let peer = OAuthPeer::start().await;
    let svc = peer
        .client_credentials_client("svc-sync", &["read", "write"])
        .await;
    let weak = peer.client_credentials_client("weak", &["read"]).await;
    let dir = Scratch::new();
    let manifest = dir.write(
        "credential.yaml",
        &credential(
            "ClientCredentials",
            &peer.issuer(),
            "scope: read write",
            &["read", "write"],
        ),
    );

    let good = dir.write(
        "good.yaml",
        &secret(&[("client_id", &svc.id), ("client_secret", svc.secret())]),
    );
    let out = run(args(&manifest, &good, &[])).await;
    assert_eq!(out.status.code(), Some(0), "{}", json(&out));
    let report = json(&out);
    assert_eq!(report["verdict"], "Connected");
    assert_eq!(report["account"]["id"], "svc-sync");
    assert_eq!(report["permissions"], serde_json::json!(["read", "write"]));
    assert!(report["accessTokenExpiresAt"].is_string());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(svc.secret()));

    let weak_secret = dir.write(
        "weak.yaml",
        &secret(&[("client_id", &weak.id), ("client_secret", weak.secret())]),
    );
    let out = run(args(&manifest, &weak_secret, &[])).await;
    assert_eq!(out.status.code(), Some(4), "{}", json(&out));
    assert_eq!(
        json(&out)["missingPermissions"],
        serde_json::json!(["write"])
    );

    let wrong = dir.write(
        "wrong.yaml",
        &secret(&[("client_id", &svc.id), ("client_secret", "not-it")]),
    );
    let out = run(args(&manifest, &wrong, &[])).await;
    assert_eq!(out.status.code(), Some(3), "{}", json(&out));
    assert_eq!(json(&out)["verdict"], "ConnectionLost");
    assert_eq!(peer.token_requests("svc-sync").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_of_a_rotating_refresh_token_writes_the_rotated_secret() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let first = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    let dir = Scratch::new();
    let manifest = dir.write(
        "credential.yaml",
        &credential("RefreshToken", &peer.issuer(), "", &["read"]),
    );
    let source = dir.write(
        "secret.yaml",
        &secret(&[
            ("client_id", &app.id),
            ("client_secret", app.secret()),
            ("refresh_token", &first),
        ]),
    );

    // Without somewhere to put the new token the check refuses before spending the old one.
    let out = run(args(&manifest, &source, &[])).await;
    assert_eq!(out.status.code(), Some(2), "{}", json(&out));
    assert!(
        json(&out)["message"]
            .as_str()
            .unwrap()
            .contains("--rotated-secret")
    );
    assert_eq!(peer.token_requests("app").await, 0);
    assert_eq!(
        peer.refresh_token_state(&first).await,
        RefreshTokenState::Active { rotations: 0 }
    );

    let rotated = dir.0.join("rotated.yaml");
    let rotated_arg = rotated.display().to_string();
    let out = run(args(
        &manifest,
        &source,
        &["--rotated-secret", &rotated_arg],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", json(&out));
    let report = json(&out);
    assert_eq!(report["account"]["id"], "user-1");
    assert_eq!(report["rotatedSecret"], rotated_arg.as_str());
    assert_eq!(
        peer.refresh_token_state(&first).await,
        RefreshTokenState::Consumed
    );

    let written: k8s_openapi::api::core::v1::Secret =
        serde_saphyr::from_str(&std::fs::read_to_string(&rotated).unwrap()).unwrap();
    let data = written.data.unwrap();
    let second = String::from_utf8(data["refresh_token"].0.clone()).unwrap();
    assert_eq!(
        peer.refresh_token_state(&second).await,
        RefreshTokenState::Active { rotations: 1 }
    );
    assert_eq!(data["client_id"].0, app.id.as_bytes());

    // The written Secret is the next check's input: the chain goes on.
    let again = dir.0.join("rotated-again.yaml");
    let again_arg = again.display().to_string();
    let out = run(args(&manifest, &rotated, &["--rotated-secret", &again_arg])).await;
    assert_eq!(out.status.code(), Some(0), "{}", json(&out));
    assert_eq!(
        peer.refresh_token_state(&second).await,
        RefreshTokenState::Consumed
    );
    assert_eq!(peer.token_requests_with("app", "refresh_token").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_of_a_revoked_refresh_token_is_connection_lost_and_writes_nothing() {
    let peer = OAuthPeer::start().await;
    let app = peer.refresh_token_client("app", &["read"]).await;
    let token = peer.refresh_token_for(&app, "user-1", &["read"]).await;
    peer.revoke(&app, &token).await;
    let dir = Scratch::new();
    let manifest = dir.write(
        "credential.yaml",
        &credential("RefreshToken", &peer.issuer(), "", &[]),
    );
    let source = dir.write(
        "secret.yaml",
        &secret(&[
            ("client_id", &app.id),
            ("client_secret", app.secret()),
            ("refresh_token", &token),
        ]),
    );
    let rotated = dir.0.join("rotated.yaml");
    let out = run(args(
        &manifest,
        &source,
        &["--rotated-secret", &rotated.display().to_string()],
    ))
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", json(&out));
    assert_eq!(json(&out)["verdict"], "ConnectionLost");
    assert!(!rotated.exists());
}
