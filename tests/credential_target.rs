//! The target Secret (`<name>-active`, what the sync mounts) is verified, not trusted: a
//! hand edit is undone from the validated source, altered material is never used against
//! the provider, and nothing unvalidated is written when the source no longer validates.

mod support;

use reconnect_emulators::{Account, ProcoreEmulator};
use reconnect_operator::api::Phase;
use serde_json::json;
use support::*;

const SVC: &str = "svc-sync@acme.com";

async fn procore() -> ProcoreEmulator {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(
        Account::new("4567", SVC).with_permissions(["company:1234", "documents:admin"]),
    );
    emu.add_client("dmsa-1", "secret-1", Some("4567"));
    emu
}

async fn connect(env: &Env, emu: &ProcoreEmulator) -> reconnect_operator::api::ConnectorCredential {
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-1"), ("client_secret", "secret-1")],
    )
    .await;
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
    // The reconcile that connected it has finished (its status can be seen before).
    env.reconciled(1).await;
    connected
}

/// Edits the target Secret as `kubectl patch` would.
async fn hand_edit(env: &Env, client_id: &str, client_secret: &str) {
    use kube::api::{Patch, PatchParams};
    let patch = json!({"stringData": {"client_id": client_id, "client_secret": client_secret}});
    env.secrets()
        .patch(
            "procore-sync-active",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("hand edit of the target Secret");
}

async fn target_events(env: &Env) -> Vec<String> {
    env.events()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("TargetAltered"))
        .map(|e| format!("{:?} {}", e.type_, e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_hand_edited_target_is_restored_in_one_reconcile_and_the_credential_stays_connected() {
    let env = Env::start().await;
    let emu = procore().await;
    let connected = connect(&env, &emu).await;
    let revision = active_revision(&connected).unwrap();
    let reconciles = env.reconciles();

    hand_edit(&env, "dmsa-1", "typed-by-hand").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let restored = loop {
        let target = env.secret("procore-sync-active").await.unwrap();
        if data(&target)["client_secret"] == "secret-1" {
            break target;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the target Secret was never restored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let ev = env.wait_event("procore-sync", "TargetAltered").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let note = ev.note.unwrap_or_default();
    assert!(
        note.contains("client_secret"),
        "names the changed key: {note}"
    );
    assert!(
        !note.contains("typed-by-hand") && !note.contains("secret-1"),
        "no credential material in events: {note}"
    );
    // The reconcile is counted when it ends, after its event: wait for it, then for nothing.
    env.reconciled(reconciles + 1).await;
    assert_eq!(
        env.reconciles() - reconciles,
        1,
        "restored by the reconcile the edit triggered, and the restore woke nothing"
    );
    assert_eq!(
        restored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("reconnect.dev/revision")),
        Some(&revision),
        "the same source, so the same revision"
    );
    assert_eq!(data(&restored)["client_id"], "dmsa-1");
    let cred = env.cred("procore-sync").await;
    assert_eq!(phase(&cred), Some(Phase::Connected));
    assert!(is_true(&cred, "Connected") && is_true(&cred, "Ready"));
    assert_eq!(
        cred.status
            .as_ref()
            .and_then(|s| s.account.as_ref())
            .map(|a| a.name.as_str()),
        Some(SVC)
    );

    // Restored material is what the next probe uses, and it passes.
    let probes = emu.count("/rest/v1.0/me");
    env.advance(PAST_NEXT_PROBE).await;
    eventually("the restored credential is probed", || {
        emu.count("/rest/v1.0/me") > probes
    })
    .await;
    let cred = env.cred("procore-sync").await;
    assert_eq!(phase(&cred), Some(Phase::Connected));
    assert!(emu.grant_attempts("dmsa-1") > 0);
    env.shutdown().await;
}

#[tokio::test]
async fn altered_material_is_never_used_and_nothing_unvalidated_is_written_when_the_source_is_dead()
{
    let env = Env::start().await;
    let emu = procore().await;
    connect(&env, &emu).await;

    // The source no longer validates (the client was re-keyed at Procore), and someone puts
    // another client into the target Secret by hand.
    emu.add_client("dmsa-1", "re-keyed", Some("4567"));
    hand_edit(&env, "intruder", "typed-by-hand").await;
    let cred = env
        .wait_cred("procore-sync", "the alteration reported", |c| {
            condition(c, "Connected").is_some_and(|c| c.reason == "TargetAltered")
        })
        .await;
    // More reconciles, with time passing: still never the altered material.
    env.advance(std::time::Duration::from_secs(16 * 60)).await;
    env.advance(std::time::Duration::from_secs(16 * 60)).await;

    assert_eq!(
        emu.grant_attempts("intruder"),
        0,
        "altered material never reaches the provider"
    );
    let target = env.secret("procore-sync-active").await.unwrap();
    assert_eq!(
        data(&target)["client_id"],
        "intruder",
        "the source does not validate: nothing is written over the edit"
    );
    assert!(!is_true(&cred, "Connected"));
    let cred = env.cred("procore-sync").await;
    assert!(!is_true(&cred, "Connected"));
    assert_ne!(phase(&cred), Some(Phase::Connected));
    let ready = condition(&cred, "Ready").unwrap();
    assert!(
        !ready.message.contains("typed-by-hand") && !ready.message.contains("re-keyed"),
        "no credential material in status: {}",
        ready.message
    );
    let events = target_events(&env).await;
    assert!(
        events.iter().any(|e| e.starts_with("Some(\"Warning\")")),
        "a Warning event says the target was altered: {events:?}"
    );
    env.shutdown().await;
}
