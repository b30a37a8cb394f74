//! Status and events tell the truth about the newest revision: phase, Ready and the message
//! describe its outcome while naming the credential that stays active, and every rejected
//! revision and every distinct cause gets its own event text.

mod support;

use reconnect_emulators::{Account, ProcoreEmulator};
use reconnect_operator::api::{Phase, RejectionReason};
use serde_json::json;
use support::*;

const SVC: &str = "svc-sync@acme.com";

async fn procore() -> ProcoreEmulator {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(
        Account::new("4567", SVC).with_permissions(["company:1234", "documents:admin"]),
    );
    emu.add_account(Account::new("900", "jane@acme.com").with_permissions(["company:1234"]));
    emu.add_client("dmsa-1", "secret-1", Some("4567"));
    emu.add_client("dmsa-weak", "secret-weak", Some("900"));
    emu
}

async fn rotate(env: &Env, id: &str, secret: &str) {
    env.apply_secret(
        "procore-src",
        &[("client_id", id), ("client_secret", secret)],
    )
    .await;
}

/// The Warning events about `procore-sync` with reason `reason`, oldest first.
async fn warnings(env: &Env, reason: &str) -> Vec<String> {
    let mut events: Vec<_> = env
        .events()
        .await
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("procore-sync")
                && e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
        })
        .collect();
    events.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    events
        .into_iter()
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_weak_then_a_dead_rotation_each_get_their_own_event_and_status_follows_the_newest() {
    let env = Env::start().await;
    let emu = procore().await;
    rotate(&env, "dmsa-1", "secret-1").await;
    env.apply_credential(
        "procore-sync",
        json!({
            "provider": "procore",
            "auth": "ClientCredentials",
            "secretRef": {"name": "procore-src"},
            "endpoint": emu.base_url(),
            "params": {"companyId": "1234"},
        }),
    )
    .await;
    let connected = env
        .wait_cred("procore-sync", "Connected", |c| {
            phase(c) == Some(Phase::Connected)
        })
        .await;
    let active = active_revision(&connected).unwrap();

    // 1. A weak account: rejected for permissions.
    rotate(&env, "dmsa-weak", "secret-weak").await;
    let weak = env
        .wait_cred("procore-sync", "weak rotation rejected", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.rejected.as_ref())
                .is_some_and(|r| r.reason == RejectionReason::PermissionMismatch)
        })
        .await;
    let weak_revision = weak
        .status
        .as_ref()
        .unwrap()
        .rejected
        .as_ref()
        .unwrap()
        .revision
        .clone();
    assert_eq!(phase(&weak), Some(Phase::PermissionMismatch));

    // 2. A dead credential: rejected as invalid; status now describes this one.
    rotate(&env, "dmsa-1", "s3cr3t-typo").await;
    let dead = env
        .wait_cred("procore-sync", "dead rotation rejected", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.rejected.as_ref())
                .is_some_and(|r| r.reason == RejectionReason::ConnectionLost)
        })
        .await;
    let status = dead.status.clone().unwrap();
    let rejected = status.rejected.clone().unwrap();
    assert_ne!(
        rejected.revision, weak_revision,
        "the newest revision is named"
    );
    assert_eq!(status.active_revision.as_deref(), Some(active.as_str()));
    assert_eq!(
        phase(&dead),
        Some(Phase::RotationRejected),
        "phase follows the newest revision, not the superseded weak one"
    );
    assert!(
        !is_true(&dead, "PermissionMismatch"),
        "the weak revision's mismatch is no longer reported"
    );
    let ready = condition(&dead, "Ready").unwrap();
    assert_eq!(ready.reason, "RotationRejected");
    assert!(
        ready.message.contains("invalid_client") && ready.message.contains("stays active"),
        "Ready names the newest cause and the active credential: {}",
        ready.message
    );
    assert!(!ready.message.contains("jane"), "{}", ready.message);
    assert!(is_true(&dead, "Connected"), "the sync keeps running");

    // Each rejection has its own event, with its own cause.
    let deadline = tokio::time::Instant::now() + WAIT;
    let notes = loop {
        let notes = warnings(&env, "RotationRejected").await;
        if notes.len() >= 2 || tokio::time::Instant::now() > deadline {
            break notes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(notes.len(), 2, "one event per rejected revision: {notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("jane") && !n.contains("invalid_client")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("invalid_client") && !n.contains("jane")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .all(|n| !n.contains("s3cr3t-typo") && !n.contains("secret-weak")),
        "no credential material in events: {notes:?}"
    );
    env.shutdown().await;
}
