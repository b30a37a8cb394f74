//! The ConnectorCredential controller end to end: the real controller code against a
//! Kubernetes API (the stand-in, or a real cluster with RECONNECT_TEST_KUBECONFIG) and the
//! provider emulators on loopback, reached through `spec.endpoint` as a user would.

mod support;

use std::time::{Duration, Instant};

use reconnect_apiserver::{RequestMatch, Verb};
use reconnect_emulators::{Account, Fault, ProcoreEmulator, SafetyCultureEmulator};
use reconnect_operator::api::{Phase, RejectionReason};
use serde_json::json;
use support::*;

const SVC: &str = "svc-sync@acme.com";

/// A Procore emulator with three accounts: the service account, a stronger replacement and
/// a weaker one that lacks `documents`.
async fn procore() -> ProcoreEmulator {
    let emu = ProcoreEmulator::start().await;
    emu.add_account(Account::new("4567", SVC).with_permissions([
        "company:1234",
        "documents:admin",
        "budget:read_only",
    ]));
    emu.add_account(
        Account::new("4568", "svc-sync-2@acme.com").with_permissions([
            "company:1234",
            "documents:admin",
            "budget:standard",
        ]),
    );
    emu.add_account(
        Account::new("900", "jane@acme.com").with_permissions(["company:1234", "budget:read_only"]),
    );
    emu.add_client("dmsa-1", "secret-1", Some("4567"));
    emu.add_client("dmsa-2", "secret-2", Some("4568"));
    emu.add_client("dmsa-weak", "secret-weak", Some("900"));
    emu
}

fn procore_spec(emu: &ProcoreEmulator) -> serde_json::Value {
    json!({
        "provider": "procore",
        "auth": "ClientCredentials",
        "secretRef": {"name": "procore-src"},
        "endpoint": emu.base_url(),
        "params": {"companyId": "1234"},
        "requiredPermissions": ["company:1234"],
    })
}

/// Connects `procore-sync` with the first DMSA client and returns the connected object.
async fn connect(env: &Env, emu: &ProcoreEmulator) -> reconnect_operator::api::ConnectorCredential {
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-1"), ("client_secret", "secret-1")],
    )
    .await;
    env.apply_credential("procore-sync", procore_spec(emu))
        .await;
    env.wait_cred("procore-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await
}

#[tokio::test]
async fn a_new_credential_becomes_connected_with_an_owned_target_secret() {
    let env = Env::start().await;
    let emu = procore().await;
    let cred = connect(&env, &emu).await;

    let status = cred.status.clone().unwrap();
    assert_eq!(status.account.as_ref().unwrap().id, "4567");
    assert_eq!(status.account.as_ref().unwrap().name, SVC);
    assert_eq!(
        status.permissions,
        ["budget:read_only", "company:1234", "documents:admin"]
    );
    assert!(
        status
            .active_revision
            .as_ref()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(status.last_validated.is_some() && status.access_token_expires_at.is_some());
    assert_eq!(status.observed_generation, cred.metadata.generation);
    assert!(is_true(&cred, "Ready") && is_true(&cred, "Connected"));
    assert!(!is_true(&cred, "PermissionMismatch") && !is_true(&cred, "Rotating"));
    for c in &status.conditions {
        assert_eq!(
            c.observed_generation, cred.metadata.generation,
            "{}",
            c.type_
        );
    }

    let target = env
        .secret("procore-sync-active")
        .await
        .expect("target Secret written");
    let owner = &target.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, cred.metadata.uid.clone().unwrap());
    assert_eq!(owner.kind, "ConnectorCredential");
    assert_eq!(owner.controller, Some(true));
    let ann = target.metadata.annotations.clone().unwrap();
    assert_eq!(
        ann.get("reconnect.dev/revision"),
        status.active_revision.as_ref()
    );
    let labels = target.metadata.labels.clone().unwrap();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("reconnect-operator")
    );
    let d = data(&target);
    assert_eq!(d["client_id"], "dmsa-1");
    assert_eq!(d["client_secret"], "secret-1");
    assert!(!d["access_token"].is_empty());
    assert_eq!(d["token_type"].to_lowercase(), "bearer");
    assert!(d["expires_at"].parse::<jiff::Timestamp>().is_ok());

    let ev = env.wait_event("procore-sync", "Connected").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(ev.note.unwrap_or_default().contains(SVC));
    env.shutdown().await;
}

#[tokio::test]
async fn rotating_to_a_good_credential_swaps_it_in() {
    let env = Env::start().await;
    let emu = procore().await;
    let before = connect(&env, &emu).await;
    let old_rev = active_revision(&before).unwrap();
    let ready_since = condition(&before, "Ready").unwrap().last_transition_time;

    let started = Instant::now();
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-2"), ("client_secret", "secret-2")],
    )
    .await;
    let after = env
        .wait_cred("procore-sync", "new revision active", |c| {
            active_revision(c).is_some_and(|r| r != old_rev) && phase(c) == Some(Phase::Connected)
        })
        .await;
    println!("secret update to swap: {:?}", started.elapsed());

    let status = after.status.clone().unwrap();
    assert_eq!(status.account.unwrap().id, "4568");
    assert!(status.last_rotated.is_some());
    assert!(status.rejected.is_none());
    // Ready stayed True through the rotation, so its transition time did not move.
    let ready = condition(&after, "Ready").unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(ready.last_transition_time, ready_since);
    let d = data(&env.secret("procore-sync-active").await.unwrap());
    assert_eq!(d["client_id"], "dmsa-2");
    let ev = env.wait_event("procore-sync", "Rotated").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    env.shutdown().await;
}

#[tokio::test]
async fn rotating_to_an_account_that_lacks_a_held_permission_is_rejected_and_the_target_is_untouched()
 {
    let env = Env::start().await;
    let emu = procore().await;
    let connected = connect(&env, &emu).await;
    let active = active_revision(&connected).unwrap();
    let target_before = env.secret("procore-sync-active").await.unwrap();

    // Jane holds everything requiredPermissions lists, but not documents:admin, which the
    // active account held: the Superset policy refuses her.
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-weak"), ("client_secret", "secret-weak")],
    )
    .await;
    let rejected = env
        .wait_cred("procore-sync", "rotation rejected", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.rejected.as_ref())
                .is_some()
        })
        .await;
    let status = rejected.status.clone().unwrap();
    assert_eq!(status.active_revision.as_deref(), Some(active.as_str()));
    assert_eq!(status.phase, Some(Phase::PermissionMismatch));
    let mismatch = condition(&rejected, "PermissionMismatch").unwrap();
    assert_eq!(mismatch.status, "True");
    assert!(
        mismatch.message.contains("documents:admin"),
        "{}",
        mismatch.message
    );
    assert!(
        mismatch.message.contains("jane@acme.com"),
        "{}",
        mismatch.message
    );
    assert_eq!(
        status.rejected.as_ref().unwrap().reason,
        RejectionReason::PermissionMismatch
    );
    assert!(!is_true(&rejected, "Ready"));
    assert!(
        is_true(&rejected, "Connected"),
        "the old credential still works"
    );

    let target_after = env.secret("procore-sync-active").await.unwrap();
    assert_eq!(
        target_after.data, target_before.data,
        "target data untouched"
    );
    assert_eq!(
        target_after.metadata.resource_version,
        target_before.metadata.resource_version
    );
    let ev = env.wait_event("procore-sync", "RotationRejected").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    // No retry of the same revision before the validation interval...
    let exchanges = emu.count("/oauth/token");
    env.tick(1).await;
    env.tick(1).await;
    env.advance(Duration::from_secs(5 * 60)).await;
    assert_eq!(
        emu.count("/oauth/token"),
        exchanges,
        "rejected revision retried early"
    );
    // ...and one retry after it (the active credential is probed then too).
    env.advance(Duration::from_secs(11 * 60)).await;
    env.wait_cred("procore-sync", "retried", |c| {
        c.status
            .as_ref()
            .and_then(|s| s.rejected.as_ref())
            .is_some_and(|r| r.at != status.rejected.as_ref().unwrap().at)
    })
    .await;
    assert!(emu.count("/oauth/token") > exchanges);
    env.shutdown().await;
}

#[tokio::test]
async fn a_required_permission_missing_from_the_new_account_names_it_and_the_account() {
    let env = Env::start().await;
    let emu = procore().await;
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-weak"), ("client_secret", "secret-weak")],
    )
    .await;
    let mut spec = procore_spec(&emu);
    spec["requiredPermissions"] = json!(["company:1234", "documents:standard"]);
    env.apply_credential("procore-sync", spec).await;
    let cred = env
        .wait_cred("procore-sync", "PermissionMismatch", |c| {
            phase(c) == Some(Phase::PermissionMismatch)
        })
        .await;
    let msg = condition(&cred, "PermissionMismatch").unwrap().message;
    assert!(
        msg.contains("documents:standard") && msg.contains("jane@acme.com"),
        "{msg}"
    );
    assert!(
        env.secret("procore-sync-active").await.is_none(),
        "nothing unvalidated is written"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn rotating_to_a_dead_credential_keeps_the_active_one_working() {
    let env = Env::start().await;
    let emu = procore().await;
    let connected = connect(&env, &emu).await;
    let active = active_revision(&connected).unwrap();
    let target_before = env.secret("procore-sync-active").await.unwrap();

    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-1"), ("client_secret", "wrong")],
    )
    .await;
    let cred = env
        .wait_cred("procore-sync", "rejected", |c| {
            c.status
                .as_ref()
                .and_then(|s| s.rejected.as_ref())
                .is_some()
        })
        .await;
    let status = cred.status.clone().unwrap();
    assert_eq!(
        status.rejected.as_ref().unwrap().reason,
        RejectionReason::ConnectionLost
    );
    assert!(
        status
            .rejected
            .as_ref()
            .unwrap()
            .message
            .contains("rejected")
    );
    assert_eq!(status.active_revision.as_deref(), Some(active.as_str()));
    assert_eq!(
        status.phase,
        Some(Phase::RotationRejected),
        "the phase describes the newest revision"
    );
    assert!(is_true(&cred, "Connected"), "the sync keeps running");
    let ready = condition(&cred, "Ready").unwrap();
    assert!(
        ready.message.contains("stays active"),
        "Ready says which credential stays active: {}",
        ready.message
    );
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "RotationRejected")
    );
    assert_eq!(
        env.secret("procore-sync-active").await.unwrap().data,
        target_before.data
    );

    // The active credential is still probed and still passes. (When the retry of the
    // rejected revision falls due at the same time, the retry goes first and the probe
    // follows in the next reconcile.)
    let me = || emu.count("/rest/v1.0/me");
    let probes = me();
    env.advance(PAST_NEXT_PROBE).await;
    eventually("the active credential is probed", || me() > probes).await;
    let cred = env.cred("procore-sync").await;
    assert_eq!(phase(&cred), Some(Phase::RotationRejected));
    assert!(is_true(&cred, "Connected"));
    env.shutdown().await;
}

#[tokio::test]
async fn a_revoked_active_credential_reports_connection_lost_naming_the_account() {
    let env = Env::start().await;
    let emu = procore().await;
    connect(&env, &emu).await;

    emu.disconnect_app();
    env.advance(PAST_NEXT_PROBE).await;
    let cred = env
        .wait_cred("procore-sync", "ConnectionLost", |c| {
            phase(c) == Some(Phase::ConnectionLost)
        })
        .await;
    let connected = condition(&cred, "Connected").unwrap();
    assert_eq!(
        (connected.status.as_str(), connected.reason.as_str()),
        ("False", "ConnectionLost")
    );
    assert!(
        connected.message.contains(SVC) && connected.message.contains("re-authenticate"),
        "{}",
        connected.message
    );
    let ev = env.wait_event("procore-sync", "ConnectionLost").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains(SVC));
    env.shutdown().await;
}

#[tokio::test]
async fn transient_failures_flip_nothing_before_the_failure_threshold() {
    let env = Env::start().await;
    let emu = procore().await;
    connect(&env, &emu).await;

    // Two 503s, then the provider recovers: never ConnectionLost with a threshold of 3.
    emu.fail_next_on("/rest/v1.0/me", 2, Fault::Status(503));
    env.advance(PAST_NEXT_PROBE).await;
    let cred = env
        .wait_cred("procore-sync", "two failures counted", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.consecutive_failures == 2)
        })
        .await;
    assert_eq!(phase(&cred), Some(Phase::Connected));
    let cred = env
        .wait_cred("procore-sync", "recovered", |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.consecutive_failures == 0)
        })
        .await;
    assert_eq!(phase(&cred), Some(Phase::Connected));

    // A provider that stays down is reported once the threshold is reached.
    emu.fail_next_on(
        "/rest/v1.0/me",
        10,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    env.advance(PAST_NEXT_PROBE).await;
    let cred = env
        .wait_cred("procore-sync", "ConnectionLost after 3", |c| {
            phase(c) == Some(Phase::ConnectionLost)
        })
        .await;
    let connected = condition(&cred, "Connected").unwrap();
    assert_eq!(connected.reason, "ProviderUnreachable");
    assert!(cred.status.unwrap().consecutive_failures >= 3);
    env.shutdown().await;
}

#[tokio::test]
async fn a_missing_source_secret_or_key_is_reported_and_the_target_untouched() {
    let env = Env::start().await;
    let emu = procore().await;
    env.apply_credential("procore-sync", procore_spec(&emu))
        .await;
    let cred = env
        .wait_cred("procore-sync", "SecretNotFound", |c| {
            condition(c, "Ready").is_some_and(|r| r.reason == "SecretNotFound")
        })
        .await;
    assert_eq!(phase(&cred), Some(Phase::Misconfigured));
    env.wait_event("procore-sync", "SecretNotFound").await;

    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-1"), ("client_secret", "secret-1")],
    )
    .await;
    env.wait_cred("procore-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await;
    let target_before = env.secret("procore-sync-active").await.unwrap();

    env.apply_secret("procore-src", &[("client_id", "dmsa-1")])
        .await;
    let cred = env
        .wait_cred("procore-sync", "MissingKey", |c| {
            condition(c, "Ready").is_some_and(|r| r.reason == "MissingKey")
        })
        .await;
    let ready = condition(&cred, "Ready").unwrap();
    assert!(ready.message.contains("client_secret"), "{}", ready.message);
    assert!(ready.message.contains("stays active"), "{}", ready.message);
    assert_eq!(phase(&cred), Some(Phase::Misconfigured), "action needed");
    assert!(
        is_true(&cred, "Connected"),
        "the active credential keeps working"
    );
    assert_eq!(
        env.secret("procore-sync-active").await.unwrap().data,
        target_before.data
    );
    env.shutdown().await;
}

#[tokio::test]
async fn expiring_credentials_raise_expiring_soon_and_a_warning() {
    let env = Env::start().await;
    let emu = SafetyCultureEmulator::start().await;
    emu.add_account(
        Account::new("user_1", "ops@acme.com").with_permissions(["organisation:role_1"]),
    );
    emu.add_api_key("sc-key", "user_1");
    env.apply_secret("sc-src", &[("api_key", "sc-key")]).await;
    env.apply_credential(
        "safetyculture",
        json!({
            "provider": "safetyculture", "auth": "ApiKey",
            "secretRef": {"name": "sc-src"}, "endpoint": emu.base_url(),
            "requiredPermissions": ["organisation:role_1"],
            // Tokens die after 30 days without use: a 31-day window is already open.
            "expiryWarning": "744h",
        }),
    )
    .await;
    let cred = env
        .wait_cred("safetyculture", "ExpiringSoon", |c| {
            is_true(c, "ExpiringSoon")
        })
        .await;
    assert!(cred.status.unwrap().expires_at.is_some());
    let ev = env.wait_event("safetyculture", "ExpiringSoon").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    env.shutdown().await;
}

#[tokio::test]
async fn refresh_tokens_are_refreshed_before_expiry_and_the_rotated_one_persisted() {
    let env = Env::start().await;
    let emu = procore().await;
    emu.add_client("app", "app-secret", None);
    let rt0 = emu.issue_refresh_token("app", "4567");
    env.apply_secret(
        "procore-src",
        &[
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("refresh_token", &rt0),
        ],
    )
    .await;
    let mut spec = procore_spec(&emu);
    spec["auth"] = json!("RefreshToken");
    env.apply_credential("procore-sync", spec).await;
    let cred = env
        .wait_cred("procore-sync", "Connected", |c| {
            phase(c) == Some(Phase::Connected)
        })
        .await;

    // Procore rotates refresh tokens: the source's is spent, the target holds the new one.
    let rt1 = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert_ne!(rt1, rt0);
    assert!(!emu.refresh_token_valid(&rt0) && emu.refresh_token_valid(&rt1));

    // 85 minutes later the 90-minute token is inside refreshBefore (10m): refreshed.
    let exp_before = cred.status.unwrap().access_token_expires_at;
    env.advance(Duration::from_secs(85 * 60)).await;
    let cred = env
        .wait_cred("procore-sync", "refreshed", |c| {
            c.status.as_ref().map(|s| s.access_token_expires_at.clone()) != Some(exp_before.clone())
        })
        .await;
    let rt2 = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert_ne!(rt2, rt1);
    assert!(!emu.refresh_token_valid(&rt1) && emu.refresh_token_valid(&rt2));
    assert_eq!(phase(&cred), Some(Phase::Connected));
    env.shutdown().await;
}

#[tokio::test]
async fn concurrent_reconciles_never_spend_the_same_refresh_token() {
    let env = Env::start().await;
    let emu = procore().await;
    emu.add_client("app", "app-secret", None);
    let rt0 = emu.issue_refresh_token("app", "4567");
    env.apply_secret(
        "procore-src",
        &[
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("refresh_token", &rt0),
        ],
    )
    .await;
    let mut spec = procore_spec(&emu);
    spec["auth"] = json!("RefreshToken");
    env.apply_credential("procore-sync", spec).await;
    env.wait_cred("procore-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await;

    // Put the access token inside refreshBefore, then run two reconciles at once next to
    // the controller's own.
    env.clock.advance(Duration::from_secs(85 * 60));
    let grants = emu.count("/oauth/token");
    let obj = std::sync::Arc::new(
        kube::Api::<
            kube::core::DeserializeGuard<
                reconnect_operator::controller::credential::CredentialHead,
            >,
        >::namespaced(env.cluster.client.clone(), env.ns())
        .get("procore-sync")
        .await
        .unwrap(),
    );
    let reconcile = |o| reconnect_operator::controller::credential::reconcile(o, env.ctx.clone());
    let (a, b) = tokio::join!(reconcile(obj.clone()), reconcile(obj.clone()));
    a.unwrap();
    b.unwrap();
    assert_eq!(
        emu.count("/oauth/token"),
        grants + 1,
        "one refresh for two reconciles"
    );
    let rt = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert!(
        emu.refresh_token_valid(&rt),
        "the persisted refresh token is the live one"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn steady_state_makes_no_writes_and_one_probe_per_interval() {
    let env = Env::start().await;
    let Some(standin) = env
        .cluster
        .standin_or_skip("steady_state_makes_no_writes_and_one_probe_per_interval")
    else {
        return;
    };
    let standin = standin.clone();
    let emu = procore().await;
    connect(&env, &emu).await;
    // Let the follow-up reconcile after the swap settle.
    env.tick(1).await;
    standin.clear_requests();
    let probes = emu.count("/rest/v1.0/me");
    let grants = emu.count("/oauth/token");

    for _ in 0..3 {
        env.tick(1).await;
    }
    env.advance(Duration::from_secs(5 * 60)).await;
    assert_eq!(
        emu.count("/rest/v1.0/me"),
        probes,
        "no probe inside the interval"
    );

    // The credential's probe slot falls between half an interval and one and a half
    // intervals after its validation: one probe by then, however often it is looked at.
    env.advance(Duration::from_secs(18 * 60)).await;
    env.tick(1).await;
    assert_eq!(
        emu.count("/rest/v1.0/me"),
        probes + 1,
        "exactly one probe per interval"
    );
    assert_eq!(
        emu.count("/oauth/token"),
        grants + 1,
        "the probe's token exchange"
    );
    let writes: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.verb.is_write() && !r.path.contains("/events"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "writes at steady state: {writes:?}");
    env.shutdown().await;
}

#[tokio::test]
async fn a_crash_between_the_secret_write_and_the_status_write_converges_without_a_second_exchange()
{
    let mut env = Env::start().await;
    let Some(standin) = env.cluster.standin_or_skip("crash_between_writes") else {
        return;
    };
    let standin = standin.clone();
    let emu = procore().await;
    connect(&env, &emu).await;
    env.tick(1).await;
    let grants = emu.count("/oauth/token");

    // The status write that follows the target Secret write fails, as if the process died
    // there. Later retries fail the same way until the "process" is gone.
    standin.fail_next(
        1000,
        RequestMatch::any()
            .verb(Verb::Patch)
            .path_contains("/connectorcredentials/procore-sync/status"),
        500,
    );
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-2"), ("client_secret", "secret-2")],
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let new_rev = loop {
        let target = env.secret("procore-sync-active").await.unwrap();
        if data(&target)["client_id"] == "dmsa-2" {
            break target.metadata.annotations.unwrap()["reconnect.dev/revision"].clone();
        }
        assert!(Instant::now() < deadline, "target never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    env.kill().await;
    standin.clear_faults();
    assert_eq!(emu.count("/oauth/token"), grants + 1);
    let cred = env.cred("procore-sync").await;
    assert_ne!(
        active_revision(&cred).as_deref(),
        Some(new_rev.as_str()),
        "status was not written"
    );

    env.restart().await;
    let cred = env
        .wait_cred("procore-sync", "swap finished", |c| {
            active_revision(c).as_deref() == Some(new_rev.as_str())
        })
        .await;
    assert_eq!(cred.status.unwrap().account.unwrap().id, "4568");
    assert_eq!(
        emu.count("/oauth/token"),
        grants + 1,
        "no second exchange after the restart"
    );
    env.shutdown().await;
}

/// How often the emulator was asked to spend `token` (any answer).
fn presented(emu: &ProcoreEmulator, token: &str) -> usize {
    emu.served()
        .iter()
        .filter(|s| s.refresh_token.as_deref() == Some(token))
        .count()
}

/// The token the emulator minted when `parent` was spent.
fn child_of(emu: &ProcoreEmulator, parent: &str) -> Option<String> {
    emu.with_state(|s| {
        s.refresh_tokens
            .iter()
            .find(|(_, r)| r.parent.as_deref() == Some(parent))
            .map(|(t, _)| t.clone())
    })
}

/// A refresh-token credential on Procore (which rotates refresh tokens), connected.
async fn connect_refresh_token(env: &Env, emu: &ProcoreEmulator) {
    emu.add_client("app", "app-secret", None);
    let rt0 = emu.issue_refresh_token("app", "4567");
    env.apply_secret(
        "procore-src",
        &[
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("refresh_token", &rt0),
        ],
    )
    .await;
    let mut spec = procore_spec(emu);
    spec["auth"] = json!("RefreshToken");
    env.apply_credential("procore-sync", spec).await;
    env.wait_cred("procore-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await;
    env.tick(1).await;
}

#[tokio::test]
async fn a_kill_between_the_exchange_and_the_swap_continues_from_the_staged_token() {
    let mut env = Env::start().await;
    let emu = procore().await;
    connect_refresh_token(&env, &emu).await;

    // The next probe hangs, so the process is killed after the provider rotated the new
    // revision's refresh token and before anything was swapped in.
    emu.fail_next_on("/rest/v1.0/me", 1, Fault::Hang);
    let probes = emu.count("/rest/v1.0/me");
    let rt_new = emu.issue_refresh_token("app", "4568");
    env.apply_secret(
        "procore-src",
        &[
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("refresh_token", &rt_new),
        ],
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let (staged, revision) = loop {
        let staging = env.secret("procore-sync.reconnect-staging").await;
        let child = child_of(&emu, &rt_new);
        if let (Some(staging), Some(child)) = (staging, child)
            && data(&staging).get("refresh_token") == Some(&child)
            && emu.count("/rest/v1.0/me") > probes
        {
            let revision = staging.metadata.annotations.unwrap()["reconnect.dev/revision"].clone();
            break (child, revision);
        }
        assert!(
            Instant::now() < deadline,
            "the rotated token was never staged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    env.kill().await;
    let staging = env.secret("procore-sync.reconnect-staging").await.unwrap();
    assert_eq!(
        staging.metadata.labels.unwrap()["reconnect.dev/role"],
        "staging"
    );
    assert!(
        staging
            .metadata
            .owner_references
            .unwrap()
            .iter()
            .any(|o| o.kind == "ConnectorCredential" && o.name == "procore-sync"),
        "the staging Secret is collected with its credential"
    );
    let target = env.secret("procore-sync-active").await.unwrap();
    assert_ne!(
        target.metadata.annotations.unwrap()["reconnect.dev/revision"],
        revision,
        "nothing unvalidated reached the target"
    );

    env.restart().await;
    let cred = env
        .wait_cred("procore-sync", "swapped after the restart", |c| {
            active_revision(c).as_deref() == Some(revision.as_str())
        })
        .await;
    assert_eq!(cred.status.unwrap().account.unwrap().id, "4568");
    assert_eq!(
        presented(&emu, &rt_new),
        1,
        "the spent refresh token is never presented again"
    );
    assert_eq!(
        presented(&emu, &staged),
        1,
        "the restart went on from the staged token"
    );
    let held = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert_eq!(Some(held.clone()), child_of(&emu, &staged));
    assert!(
        emu.refresh_token_valid(&held),
        "the target holds the live token"
    );
    // Emptied after the status write that records the swap, so it may lag that write.
    env.wait_secret(
        "procore-sync.reconnect-staging",
        "the staging Secret is emptied after the swap",
        |s| !data(s).contains_key("refresh_token"),
    )
    .await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_probe_of_the_active_credential_persists_its_rotated_token_before_probing() {
    let mut env = Env::start().await;
    let emu = procore().await;
    connect_refresh_token(&env, &emu).await;
    let before = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();

    // The routine probe's exchange rotates the token; the probe itself hangs and the process
    // is killed: the target already holds the new token.
    emu.fail_next_on("/rest/v1.0/me", 1, Fault::Hang);
    let probes = emu.count("/rest/v1.0/me");
    env.clock.advance(PAST_NEXT_PROBE);
    env.tick_nowait();
    let deadline = Instant::now() + WAIT;
    while emu.count("/rest/v1.0/me") == probes {
        assert!(Instant::now() < deadline, "no probe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rotated = child_of(&emu, &before).expect("the probe's exchange rotated the token");
    let held = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert_eq!(
        held, rotated,
        "persisted before the probe used its access token"
    );
    env.kill().await;

    env.restart().await;
    env.advance(PAST_NEXT_PROBE).await;
    env.wait_cred("procore-sync", "probed again", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await;
    assert_eq!(
        presented(&emu, &before),
        1,
        "the spent token is never presented again"
    );
    let held = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert!(emu.refresh_token_valid(&held));
    env.shutdown().await;
}

/// A relay in front of `upstream` that passes requests on at once but holds back the answer
/// to the first token request by `delay`: the provider has done the grant (and spent the
/// refresh token) long before the client hears of it.
async fn slow_answer_relay(upstream: std::net::SocketAddr, delay: Duration) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held_once = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let held_once = held_once.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let token_request = Arc::new(AtomicBool::new(false));
                let seen = token_request.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if buf[..n].starts_with(b"POST /oauth/token") {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if token_request.swap(false, Ordering::SeqCst)
                        && !held_once.swap(true, Ordering::SeqCst)
                    {
                        tokio::time::sleep(delay).await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_rotating_grant_answered_after_the_timeout_is_taken_up_not_presented_again() {
    let env = Env::start().await;
    let emu = procore().await;
    emu.add_client("app", "app-secret", None);
    let rt0 = emu.issue_refresh_token("app", "4567");
    env.apply_secret(
        "procore-src",
        &[
            ("client_id", "app"),
            ("client_secret", "app-secret"),
            ("refresh_token", &rt0),
        ],
    )
    .await;
    // The provider does the first grant at once, but its answer reaches the operator only
    // after the 1-second timeout.
    let upstream: std::net::SocketAddr = emu
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = slow_answer_relay(upstream, Duration::from_millis(1500)).await;
    let mut spec = procore_spec(&emu);
    spec["auth"] = json!("RefreshToken");
    spec["endpoint"] = json!(relay);
    spec["validation"] = json!({"timeout": "1s"});
    env.apply_credential("procore-sync", spec).await;
    env.wait_cred("procore-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await;
    assert_eq!(
        presented(&emu, &rt0),
        1,
        "the late answer was taken up, the spent token not presented again"
    );
    let held = data(&env.secret("procore-sync-active").await.unwrap())["refresh_token"].clone();
    assert!(emu.refresh_token_valid(&held));
    env.shutdown().await;
}

/// What kstatus (Flux, kpt, Config Sync) computes for an object: InProgress until the
/// generation is observed or while Reconciling, Failed when Stalled, else Current.
fn kstatus(cred: &reconnect_operator::api::ConnectorCredential) -> &'static str {
    let observed = cred.status.as_ref().and_then(|s| s.observed_generation);
    if observed != cred.metadata.generation || is_true(cred, "Reconciling") {
        "InProgress"
    } else if is_true(cred, "Stalled") {
        "Failed"
    } else {
        "Current"
    }
}

#[tokio::test]
async fn kstatus_sees_current_when_connected_and_failed_when_the_connection_is_lost() {
    let env = Env::start().await;
    let emu = procore().await;
    let cred = connect(&env, &emu).await;
    assert_eq!(kstatus(&cred), "Current");
    assert!(is_true(&cred, "Ready"));

    // A spec change is InProgress until observed, then Current again.
    let mut spec = procore_spec(&emu);
    spec["validation"] = json!({"interval": "20m"});
    let changed = env.apply_credential("procore-sync", spec).await;
    let generation = changed.metadata.generation;
    let cred = env
        .wait_cred("procore-sync", "new generation observed", |c| {
            c.status.as_ref().and_then(|s| s.observed_generation) == generation
        })
        .await;
    assert_eq!(kstatus(&cred), "Current");
    for c in &cred.status.clone().unwrap().conditions {
        assert_eq!(c.observed_generation, generation, "{}", c.type_);
    }

    emu.disconnect_app();
    // Past the credential's next probe slot (within one and a half intervals).
    env.advance(Duration::from_secs(31 * 60)).await;
    let cred = env
        .wait_cred("procore-sync", "ConnectionLost", |c| {
            phase(c) == Some(Phase::ConnectionLost)
        })
        .await;
    assert_eq!(kstatus(&cred), "Failed");
    assert_eq!(
        condition(&cred, "Stalled").unwrap().reason,
        "ConnectionLost"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_malformed_credential_never_blocks_the_others() {
    let env = Env::start().await;
    let Some(standin) = env
        .cluster
        .standin_or_skip("a_malformed_credential_never_blocks_the_others")
    else {
        return;
    };
    let standin = standin.clone();
    // Stored under an older, looser schema, the way a malformed object reaches a cluster.
    store_malformed::<reconnect_operator::api::ConnectorCredential>(
        &env,
        &standin,
        json!({
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
            "metadata": {"name": "broken"},
            "spec": {"provider": "box", "auth": 42},
        }),
    )
    .await;

    let emu = procore().await;
    connect(&env, &emu).await;
    let ev = env.wait_event("broken", "Misconfigured").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("schema"));
    env.shutdown().await;
}

#[tokio::test]
async fn only_referenced_secrets_are_read_and_the_rest_are_watched_as_metadata() {
    let env = Env::start().await;
    let Some(standin) = env
        .cluster
        .standin_or_skip("only_referenced_secrets_are_read_and_the_rest_are_watched_as_metadata")
    else {
        return;
    };
    let standin = standin.clone();
    for i in 0..20 {
        env.apply_secret(&format!("unrelated-{i}"), &[("password", "not-ours")])
            .await;
    }
    let emu = procore().await;
    let before = connect(&env, &emu).await;

    // From here on every read is the operator's: the test only writes (patches) and waits
    // on the ConnectorCredential.
    standin.clear_requests();
    standin.close_watches();
    let change =
        |id: &str, secret: &str| json!({"stringData": {"client_id": id, "client_secret": secret}});
    let merge = kube::api::PatchParams::default();
    env.secrets()
        .patch(
            "unrelated-3",
            &merge,
            &kube::api::Patch::Merge(json!({"stringData": {"password": "changed"}})),
        )
        .await
        .unwrap();
    env.secrets()
        .patch(
            "procore-src",
            &merge,
            &kube::api::Patch::Merge(change("dmsa-2", "secret-2")),
        )
        .await
        .unwrap();
    let old = active_revision(&before);
    env.wait_cred("procore-sync", "rotated", |c| active_revision(c) != old)
        .await;

    let reads: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/secrets") && !r.verb.is_write())
        .collect();
    let mut saw_watch = false;
    for r in &reads {
        match r.verb {
            reconnect_apiserver::Verb::List | reconnect_apiserver::Verb::Watch => {
                saw_watch |= r.verb == reconnect_apiserver::Verb::Watch;
                let accept = r.accept.clone().unwrap_or_default();
                assert!(
                    accept.contains("as=PartialObjectMetadata"),
                    "{} {} accept={accept}",
                    r.method,
                    r.path
                );
            }
            reconnect_apiserver::Verb::Get => {
                let name = r
                    .path
                    .split('?')
                    .next()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap();
                assert!(
                    name == "procore-src" || name == "procore-sync-active",
                    "an unreferenced Secret was read: {}",
                    r.path
                );
            }
            _ => {}
        }
    }
    assert!(
        saw_watch,
        "the Secret watch was re-established after close_watches: {reads:?}"
    );
    env.shutdown().await;
}
