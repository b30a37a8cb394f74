//! The Integration controller end to end, running beside the ConnectorCredential controller
//! as in the operator: the real code against a Kubernetes API (the stand-in, or a real
//! cluster with RECONNECT_TEST_KUBECONFIG) and the Procore and Microsoft emulators.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::DeleteParams;
use reconnect_emulators::{Account, MicrosoftEmulator, ProcoreEmulator};
use reconnect_operator::api::{ConnectorCredential, Integration, Phase};
use serde_json::json;
use support::*;

const SVC: &str = "svc-sync@acme.com";
const SITE: &str = "contoso.sharepoint.com,2C712604-1370-44E7-A1F5-426573FDA80A,2D2244C3-251A-49EA-93A8-39E1C3A060FE";
use reconnect_operator::controller::credential::IN_USE_FINALIZER as FINALIZER;

/// Procore with the service account, two replacements, and a second app for `procore-b`.
async fn procore() -> ProcoreEmulator {
    let emu = ProcoreEmulator::start().await;
    let perms = ["company:1234", "documents:admin", "budget:read_only"];
    emu.add_account(Account::new("4567", SVC).with_permissions(perms));
    emu.add_account(Account::new("4568", "svc-sync-2@acme.com").with_permissions(perms));
    emu.add_account(Account::new("4569", "svc-sync-3@acme.com").with_permissions(perms));
    emu.add_client("dmsa-1", "secret-1", Some("4567"));
    emu.add_client("dmsa-2", "secret-2", Some("4568"));
    emu.add_client("dmsa-3", "secret-3", Some("4569"));
    emu
}

async fn microsoft() -> MicrosoftEmulator {
    let emu = MicrosoftEmulator::start().await;
    emu.add_account(
        Account::new("sp-object-id", "procore-sharepoint sync app")
            .with_scopes(["Sites.ReadWrite.All"])
            .with_permissions([format!("site:{SITE}")]),
    );
    emu.add_client("app-id", "app-secret", Some("sp-object-id"));
    emu
}

/// The two sides of the sync, both connected.
struct Sides {
    procore: ProcoreEmulator,
    _microsoft: MicrosoftEmulator,
}

async fn connect_both(env: &Env) -> Sides {
    let procore = procore().await;
    let microsoft = microsoft().await;
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-1"), ("client_secret", "secret-1")],
    )
    .await;
    env.apply_credential(
        "procore-sync",
        json!({
            "provider": "procore", "auth": "ClientCredentials",
            "secretRef": {"name": "procore-src"}, "endpoint": procore.base_url(),
            "params": {"companyId": "1234"}, "requiredPermissions": ["company:1234"],
        }),
    )
    .await;
    env.apply_secret(
        "sharepoint-src",
        &[("client_id", "app-id"), ("client_secret", "app-secret")],
    )
    .await;
    env.apply_credential(
        "sharepoint-app",
        json!({
            "provider": "microsoft", "auth": "ClientCredentials",
            "secretRef": {"name": "sharepoint-src"}, "endpoint": microsoft.base_url(),
            "params": {"tenantId": "contoso-tenant", "siteId": SITE},
            "requiredPermissions": ["Sites.ReadWrite.All"],
        }),
    )
    .await;
    for name in ["procore-sync", "sharepoint-app"] {
        env.wait_cred(name, "Connected", |c| phase(c) == Some(Phase::Connected))
            .await;
    }
    Sides {
        procore,
        _microsoft: microsoft,
    }
}

fn sync_spec(procore_required: &[&str], restart_targets: &[&str]) -> serde_json::Value {
    let targets: Vec<_> = restart_targets
        .iter()
        .map(|n| json!({"kind": "Deployment", "name": n}))
        .collect();
    json!({
        "connectors": [
            {"name": "procore", "credentialRef": {"name": "procore-sync"}, "requiredPermissions": procore_required},
            {"name": "sharepoint", "credentialRef": {"name": "sharepoint-app"}},
        ],
        "restartTargets": targets,
    })
}

async fn wait_phase(env: &Env, name: &str, want: Phase) -> Integration {
    env.wait_integration(name, want.as_str(), |i| integration_phase(i) == Some(want))
        .await
}

fn recorded_revision(integration: &Integration, connector: &str) -> Option<String> {
    connector_status(integration, connector).and_then(|c| c.active_revision)
}

fn generation(d: &Deployment) -> i64 {
    d.metadata.generation.unwrap_or_default()
}

fn pod_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

fn has_finalizer(c: &ConnectorCredential) -> bool {
    c.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Swaps procore-sync to `client` and waits until the credential reports the new revision.
async fn swap_procore(env: &Env, client: &str, secret: &str) -> String {
    let before = active_revision(&env.cred("procore-sync").await);
    env.apply_secret(
        "procore-src",
        &[("client_id", client), ("client_secret", secret)],
    )
    .await;
    let cred = env
        .wait_cred("procore-sync", "swapped", |c| {
            active_revision(c).is_some() && active_revision(c) != before
        })
        .await;
    active_revision(&cred).unwrap()
}

#[tokio::test]
async fn two_connected_credentials_make_a_connected_integration_naming_their_accounts() {
    let env = Env::start().await;
    let _sides = connect_both(&env).await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &[]))
        .await;
    let integ = wait_phase(&env, "procore-sharepoint", Phase::Connected).await;

    let status = integ.status.clone().unwrap();
    assert_eq!(status.ready_connectors.as_deref(), Some("2/2"));
    assert_eq!(status.observed_generation, integ.metadata.generation);
    let procore = connector_status(&integ, "procore").unwrap();
    assert_eq!(procore.credential, "procore-sync");
    assert_eq!(procore.phase, Some(Phase::Connected));
    assert_eq!(procore.account.as_deref(), Some(SVC));
    assert_eq!(
        procore.active_revision,
        active_revision(&env.cred("procore-sync").await)
    );
    let sharepoint = connector_status(&integ, "sharepoint").unwrap();
    assert_eq!(
        sharepoint.account.as_deref(),
        Some("procore-sharepoint sync app")
    );
    for type_ in ["Ready", "Connected"] {
        let c = integration_condition(&integ, type_).unwrap();
        assert_eq!(c.status, "True", "{type_}");
        assert_eq!(c.observed_generation, integ.metadata.generation);
    }
    assert_eq!(
        integration_condition(&integ, "PermissionMismatch")
            .unwrap()
            .status,
        "False"
    );
    let ev = env.wait_event("procore-sharepoint", "Connected").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    env.shutdown().await;
}

#[tokio::test]
async fn a_lost_connection_names_connector_credential_and_account_then_recovers() {
    let env = Env::start().await;
    let sides = connect_both(&env).await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &[]))
        .await;
    wait_phase(&env, "procore-sharepoint", Phase::Connected).await;

    // Only the credential controller is ticked: the Integration hears of the loss through
    // its watch on ConnectorCredentials and the credential -> Integration index.
    sides.procore.deactivate("4567");
    env.advance(PAST_NEXT_PROBE).await;
    let integ = wait_phase(&env, "procore-sharepoint", Phase::ConnectionLost).await;
    let status = integ.status.clone().unwrap();
    assert_eq!(status.ready_connectors.as_deref(), Some("1/2"));
    let procore = connector_status(&integ, "procore").unwrap();
    assert_eq!(procore.phase, Some(Phase::ConnectionLost));
    let msg = procore.message.unwrap();
    assert!(
        msg.starts_with(&format!("procore: {SVC} must re-authenticate (")),
        "{msg}"
    );
    assert!(msg.contains("procore-sync"), "{msg}");
    let connected = integration_condition(&integ, "Connected").unwrap();
    assert_eq!(
        (connected.status.as_str(), connected.reason.as_str()),
        ("False", "ConnectionLost")
    );
    assert!(connected.message.contains(&msg), "{}", connected.message);
    assert_eq!(
        connector_status(&integ, "sharepoint").unwrap().phase,
        Some(Phase::Connected)
    );
    let ev = env.wait_event("procore-sharepoint", "ConnectionLost").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains(SVC));

    // Re-authenticate with another service account: the Integration recovers.
    swap_procore(&env, "dmsa-2", "secret-2").await;
    let integ = wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    assert_eq!(
        connector_status(&integ, "procore")
            .unwrap()
            .account
            .as_deref(),
        Some("svc-sync-2@acme.com")
    );
    // The first connect and the recovery: two Normal Connected events (the recorder folds
    // the second into a series of the first).
    eventually_async("a Normal event on recovery", || async {
        let connected: i32 = env
            .events()
            .await
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("Connected")
                    && e.type_.as_deref() == Some("Normal")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some("procore-sharepoint")
            })
            .map(|e| e.series.map_or(1, |s| s.count))
            .sum();
        connected >= 2
    })
    .await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_missing_credential_is_reported_and_picked_up_once_created() {
    let env = Env::start().await;
    let procore = procore().await;
    env.apply_integration(
        "procore-only",
        json!({"connectors": [{"name": "procore", "credentialRef": {"name": "procore-sync"}}]}),
    )
    .await;
    let integ = wait_phase(&env, "procore-only", Phase::Pending).await;
    let c = connector_status(&integ, "procore").unwrap();
    assert_eq!(
        c.message.as_deref(),
        Some("ConnectorCredential procore-sync not found")
    );
    let ready = integration_condition(&integ, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CredentialNotFound")
    );
    assert_eq!(
        integ.status.unwrap().ready_connectors.as_deref(),
        Some("0/1")
    );
    env.wait_event("procore-only", "CredentialNotFound").await;

    // Creating it wakes the Integration through the index (no Integration tick here).
    env.apply_secret(
        "procore-src",
        &[("client_id", "dmsa-1"), ("client_secret", "secret-1")],
    )
    .await;
    env.apply_credential(
        "procore-sync",
        json!({
            "provider": "procore", "auth": "ClientCredentials",
            "secretRef": {"name": "procore-src"}, "endpoint": procore.base_url(),
            "params": {"companyId": "1234"},
        }),
    )
    .await;
    wait_phase(&env, "procore-only", Phase::Connected).await;
    env.shutdown().await;
}

#[tokio::test]
async fn integration_required_permissions_the_account_lacks_make_it_permission_mismatch() {
    let env = Env::start().await;
    let _sides = connect_both(&env).await;
    // The account holds budget:read_only; this sync needs budget:standard. documents:standard
    // is satisfied by documents:admin in Procore's level order.
    env.apply_integration(
        "procore-sharepoint",
        sync_spec(&["budget:standard", "documents:standard"], &[]),
    )
    .await;
    let integ = wait_phase(&env, "procore-sharepoint", Phase::PermissionMismatch).await;
    let procore = connector_status(&integ, "procore").unwrap();
    assert_eq!(procore.phase, Some(Phase::PermissionMismatch));
    assert_eq!(procore.missing_permissions, ["budget:standard"]);
    let mismatch = integration_condition(&integ, "PermissionMismatch").unwrap();
    assert_eq!(mismatch.status, "True");
    assert!(
        mismatch.message.contains("budget:standard") && mismatch.message.contains(SVC),
        "{}",
        mismatch.message
    );
    assert_eq!(
        integration_condition(&integ, "Connected").unwrap().status,
        "True",
        "both connections work"
    );
    assert_eq!(
        phase(&env.cred("procore-sync").await),
        Some(Phase::Connected),
        "the credential itself is fine"
    );
    let ev = env
        .wait_event("procore-sharepoint", "PermissionMismatch")
        .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    env.shutdown().await;
}

#[tokio::test]
async fn a_lost_connection_and_a_missing_credential_aggregate_to_connection_lost() {
    let env = Env::start().await;
    let sides = connect_both(&env).await;
    env.apply_integration(
        "three-way",
        json!({"connectors": [
            {"name": "procore", "credentialRef": {"name": "procore-sync"}},
            {"name": "sharepoint", "credentialRef": {"name": "sharepoint-app"}},
            {"name": "dropbox", "credentialRef": {"name": "dropbox-app"}},
        ]}),
    )
    .await;
    wait_phase(&env, "three-way", Phase::Pending).await;
    sides.procore.disconnect_app();
    env.advance(PAST_NEXT_PROBE).await;
    let integ = wait_phase(&env, "three-way", Phase::ConnectionLost).await;
    assert_eq!(
        integ.status.clone().unwrap().ready_connectors.as_deref(),
        Some("1/3")
    );
    let ready = integration_condition(&integ, "Ready").unwrap();
    assert_eq!(ready.reason, "ConnectionLost");
    assert!(
        ready.message.contains("must re-authenticate")
            && ready
                .message
                .contains("ConnectorCredential dropbox-app not found"),
        "{}",
        ready.message
    );
    env.shutdown().await;
}

#[tokio::test]
async fn two_swaps_inside_the_debounce_window_roll_the_deployment_once() {
    let env = Env::start().await;
    let _sides = connect_both(&env).await;
    let created = env.create_deployment("sync-engine").await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &["sync-engine"]))
        .await;
    let first_rev = active_revision(&env.cred("procore-sync").await);
    let integ = wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    assert_eq!(
        recorded_revision(&integ, "procore"),
        first_rev,
        "baseline recorded"
    );
    env.tick_integrations(1).await;
    let before = env.deployments().get("sync-engine").await.unwrap();
    assert_eq!(
        generation(&before),
        generation(&created),
        "the first observation rolls nothing"
    );

    // Swap one: seen by the Integration, which opens the window.
    swap_procore(&env, "dmsa-2", "secret-2").await;
    env.tick_integrations(1).await;
    env.clock.advance(Duration::from_secs(5));
    // Swap two, inside the window.
    let last = swap_procore(&env, "dmsa-3", "secret-3").await;
    env.tick_integrations(1).await;
    let integ = env.integration("procore-sharepoint").await;
    assert_eq!(
        recorded_revision(&integ, "procore"),
        first_rev,
        "nothing recorded before the roll"
    );
    assert_eq!(
        generation(&env.deployments().get("sync-engine").await.unwrap()),
        generation(&before),
        "no roll inside the window"
    );

    // The window passes: one roll, with the latest revisions, then recorded.
    let integ = let_the_window_pass(&env, "procore-sharepoint", "procore", &last).await;
    for _ in 0..3 {
        env.tick_integrations(1).await;
    }
    env.clock.advance(Duration::from_secs(60));
    env.tick_integrations(1).await;
    let after = env.deployments().get("sync-engine").await.unwrap();
    assert_eq!(
        generation(&after),
        generation(&before) + 1,
        "exactly one rollout"
    );
    let revisions = pod_annotation(&after, "reconnect.dev/revisions").unwrap();
    let sharepoint_rev = recorded_revision(&integ, "sharepoint").unwrap();
    assert_eq!(
        revisions,
        format!("procore={last},sharepoint={sharepoint_rev}")
    );
    let restarted_at = pod_annotation(&after, "reconnect.dev/restartedAt").unwrap();
    assert!(
        restarted_at.parse::<jiff::Timestamp>().is_ok(),
        "{restarted_at}"
    );
    // Nothing the user owns changed.
    assert_eq!(
        pod_annotation(&after, "team.example/owner").as_deref(),
        Some("sync-team")
    );
    let (b, a) = (before.spec.clone().unwrap(), after.spec.clone().unwrap());
    assert_eq!(a.replicas, b.replicas);
    assert_eq!(a.template.spec, b.template.spec);
    assert_eq!(a.selector, b.selector);
    // The Deployment's own annotations are untouched, except the revision the Deployment
    // controller (on a real control plane) bumps for the rollout.
    let ours = |d: &Deployment| {
        let mut a = d.metadata.annotations.clone().unwrap_or_default();
        a.remove("deployment.kubernetes.io/revision");
        a
    };
    assert_eq!(ours(&after), ours(&before), "only the pod template");
    let ev = env.wait_event("procore-sharepoint", "Restarted").await;
    assert!(
        ev.note
            .unwrap_or_default()
            .contains("Deployment/sync-engine"),
        "the event names the workload"
    );
    env.shutdown().await;
}

/// Marks a Deployment's rollout complete at its current generation, as the Deployment
/// controller would (the stand-in runs none; a real control plane's does this itself, and
/// with no kubelet its pods never become available, so its rollouts never complete).
async fn report_rollout_complete(env: &Env, name: &str) {
    if env.cluster.backend() != reconnect_apiserver::Backend::Standin {
        return;
    }
    let d = env.deployments().get(name).await.unwrap();
    let status = json!({"status": {
        "observedGeneration": generation(&d),
        "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1,
    }});
    env.deployments()
        .patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(status),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_mass_swap_rolls_no_more_workloads_at_once_than_the_rollout_limit() {
    // One rollout in flight at a time, held until its workload reports it done.
    let env = Env::start_with(|ctx| ctx.with_rollouts(1, Duration::from_secs(3600))).await;
    let _sides = connect_both(&env).await;
    for (integration, workload) in [("sync-a", "engine-a"), ("sync-b", "engine-b")] {
        env.create_deployment(workload).await;
        report_rollout_complete(&env, workload).await;
        env.apply_integration(integration, sync_spec(&[], &[workload]))
            .await;
        wait_phase(&env, integration, Phase::Connected).await;
    }
    env.tick_integrations(2).await;
    let before = [generations_of(&env, 0).await, generations_of(&env, 1).await];

    // One swap concerns both Integrations: when the window has passed, one rolls and the
    // other waits for the slot, however often it looks again.
    swap_procore(&env, "dmsa-2", "secret-2").await;
    env.tick_integrations(2).await;
    let mut rolled = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while rolled.is_empty() {
        env.clock.advance(Duration::from_secs(11));
        env.tick_integrations(2).await;
        let now = [generations_of(&env, 0).await, generations_of(&env, 1).await];
        rolled = (0..2).filter(|i| now[*i] > before[*i]).collect::<Vec<_>>();
        assert!(tokio::time::Instant::now() < deadline, "nothing rolled");
    }
    assert_eq!(rolled.len(), 1, "both workloads rolled at once");
    let (first, second) = if rolled[0] == 0 {
        ("engine-a", 1)
    } else {
        ("engine-b", 0)
    };
    for _ in 0..3 {
        env.clock.advance(Duration::from_secs(11));
        env.tick_integrations(2).await;
    }
    assert_eq!(
        generations_of(&env, second).await,
        before[second],
        "the second workload rolled while the first rollout was in flight"
    );
    assert_eq!(env.metric("reconnect_rollouts_in_flight"), 1);
    assert_eq!(env.metric("reconnect_rollouts_waiting"), 1);

    // The first rollout completes (here: its workload goes away, which frees the slot on
    // any cluster): the second rolls, exactly once.
    env.deployments()
        .delete(first, &DeleteParams::default())
        .await
        .unwrap();
    eventually_async("the second workload rolls", || async {
        env.clock.advance(Duration::from_secs(11));
        env.tick_integrations(2).await;
        generations_of(&env, second).await > before[second]
    })
    .await;
    for _ in 0..3 {
        env.clock.advance(Duration::from_secs(11));
        env.tick_integrations(2).await;
    }
    assert_eq!(generations_of(&env, second).await, before[second] + 1);
    assert_eq!(env.metric("reconnect_rollouts_waiting"), 0);
    env.shutdown().await;
}

async fn generations_of(env: &Env, index: usize) -> i64 {
    let name = ["engine-a", "engine-b"][index];
    generation(&env.deployments().get(name).await.unwrap())
}

#[tokio::test]
async fn a_missing_restart_target_is_reported_with_a_warning_and_not_retried_as_an_error() {
    let env = Env::start().await;
    let _sides = connect_both(&env).await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &["sync-engine"]))
        .await;
    let integ = env
        .wait_integration("procore-sharepoint", "RestartTargetsFound=False", |i| {
            integration_condition(i, "RestartTargetsFound").is_some_and(|c| c.status == "False")
        })
        .await;
    let c = integration_condition(&integ, "RestartTargetsFound").unwrap();
    assert_eq!(c.reason, "RestartTargetNotFound");
    assert!(
        c.message.contains("Deployment/sync-engine"),
        "{}",
        c.message
    );
    assert_eq!(
        integration_phase(&integ),
        Some(Phase::Connected),
        "the connections are fine"
    );
    let ev = env
        .wait_event("procore-sharepoint", "RestartTargetNotFound")
        .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    // A missing target is a finding, not a failed reconcile: no error backoff loop.
    env.tick_integrations(1).await;
    env.tick_integrations(1).await;
    assert_eq!(
        env.metric(
            "reconnect_reconcile_errors_total{controller=\"integration\",reason=\"KubeApiError\"}"
        ),
        0
    );
    let warnings = env
        .events()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RestartTargetNotFound"))
        .map(|e| e.series.map_or(1, |s| s.count))
        .sum::<i32>();
    assert_eq!(warnings, 1, "said once");

    // Created later: found on the next look.
    env.create_deployment("sync-engine").await;
    env.tick_integrations(1).await;
    env.wait_integration("procore-sharepoint", "RestartTargetsFound=True", |i| {
        integration_condition(i, "RestartTargetsFound").is_some_and(|c| c.status == "True")
    })
    .await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_credential_in_use_survives_deletion_until_no_integration_references_it() {
    let env = Env::start().await;
    let sides = connect_both(&env).await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &[]))
        .await;
    env.wait_cred("procore-sync", "in-use finalizer", has_finalizer)
        .await;

    env.creds()
        .delete("procore-sync", &DeleteParams::default())
        .await
        .unwrap();
    let cred = env
        .wait_cred("procore-sync", "DeletionBlocked", |c| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "DeletionBlocked" && c.status == "True")
            })
        })
        .await;
    assert!(cred.metadata.deletion_timestamp.is_some());
    assert!(has_finalizer(&cred));
    let blocked = condition(&cred, "DeletionBlocked").unwrap();
    assert_eq!(blocked.reason, "InUse");
    assert!(
        blocked.message.contains("procore-sharepoint"),
        "{}",
        blocked.message
    );
    let ev = env.wait_event("procore-sync", "InUse").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("procore-sharepoint"));
    assert!(
        env.secret("procore-sync-active").await.is_some(),
        "the sync keeps its Secret"
    );
    // While the deletion waits, the credential is still maintained for the sync using it.
    let probes = sides.procore.count("/rest/v1.0/me");
    env.advance(PAST_NEXT_PROBE).await;
    eventually("the blocked credential is still probed", || {
        sides.procore.count("/rest/v1.0/me") > probes
    })
    .await;
    env.tick(1).await;
    let cred = env.cred("procore-sync").await;
    assert_eq!(phase(&cred), Some(Phase::Connected));
    assert_eq!(
        condition(&cred, "DeletionBlocked").map(|c| c.status),
        Some("True".to_owned()),
        "the pipeline's status write keeps DeletionBlocked"
    );

    // The Integration drops the reference: the credential is released and goes.
    env.apply_integration(
        "procore-sharepoint",
        json!({"connectors": [{"name": "sharepoint", "credentialRef": {"name": "sharepoint-app"}}]}),
    )
    .await;
    eventually_async("procore-sync is deleted", || async {
        env.creds().get_opt("procore-sync").await.unwrap().is_none()
    })
    .await;
    assert!(
        has_finalizer(&env.cred("sharepoint-app").await),
        "the other credential stays protected"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn deleting_an_integration_leaves_its_credentials_and_secrets_alone() {
    let env = Env::start().await;
    let _sides = connect_both(&env).await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &[]))
        .await;
    wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    env.wait_cred("procore-sync", "in-use finalizer", has_finalizer)
        .await;
    let secrets_before: Vec<_> = futures::future::join_all(
        [
            "procore-src",
            "procore-sync-active",
            "sharepoint-src",
            "sharepoint-app-active",
        ]
        .map(|s| env.secret(s)),
    )
    .await;

    env.integrations()
        .delete("procore-sharepoint", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["procore-sync", "sharepoint-app"] {
        let cred = env
            .wait_cred(name, "finalizer released", |c| !has_finalizer(c))
            .await;
        assert!(cred.metadata.deletion_timestamp.is_none(), "{name}");
        assert_eq!(phase(&cred), Some(Phase::Connected), "{name}");
    }
    for (name, before) in [
        "procore-src",
        "procore-sync-active",
        "sharepoint-src",
        "sharepoint-app-active",
    ]
    .iter()
    .zip(secrets_before)
    {
        let before = before.unwrap_or_else(|| panic!("{name} existed"));
        let after = env
            .secret(name)
            .await
            .unwrap_or_else(|| panic!("{name} kept"));
        assert_eq!(after.data, before.data, "{name}");
        assert!(after.metadata.deletion_timestamp.is_none(), "{name}");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn a_suspended_integration_reports_health_but_rolls_nothing_until_resumed() {
    let env = Env::start().await;
    let sides = connect_both(&env).await;
    env.create_deployment("sync-engine").await;
    let mut spec = sync_spec(&[], &["sync-engine"]);
    spec["suspend"] = json!(true);
    env.apply_integration("procore-sharepoint", spec.clone())
        .await;
    let integ = wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    let baseline = recorded_revision(&integ, "procore");
    let gen0 = generation(&env.deployments().get("sync-engine").await.unwrap());

    let new_rev = swap_procore(&env, "dmsa-2", "secret-2").await;
    env.tick_integrations(1).await;
    env.clock.advance(Duration::from_secs(60));
    env.tick_integrations(1).await;
    assert_eq!(
        generation(&env.deployments().get("sync-engine").await.unwrap()),
        gen0,
        "no roll while suspended"
    );
    assert_eq!(
        recorded_revision(&env.integration("procore-sharepoint").await, "procore"),
        baseline
    );

    // Health is still reported while suspended.
    sides.procore.disconnect_app();
    env.advance(PAST_NEXT_PROBE).await;
    wait_phase(&env, "procore-sharepoint", Phase::ConnectionLost).await;

    // Resumed: the swap it missed rolls out once, after the window.
    spec["suspend"] = json!(false);
    env.apply_integration("procore-sharepoint", spec).await;
    let_the_window_pass(&env, "procore-sharepoint", "procore", &new_rev).await;
    assert_eq!(
        generation(&env.deployments().get("sync-engine").await.unwrap()),
        gen0 + 1
    );
    env.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_integration_writes_no_status() {
    let env = Env::start().await;
    let Some(standin) = env
        .cluster
        .standin_or_skip("an_unchanged_integration_writes_no_status")
    else {
        return;
    };
    let standin = standin.clone();
    let _sides = connect_both(&env).await;
    env.create_deployment("sync-engine").await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &["sync-engine"]))
        .await;
    wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    env.wait_cred("procore-sync", "in-use finalizer", has_finalizer)
        .await;
    env.wait_cred("sharepoint-app", "in-use finalizer", has_finalizer)
        .await;
    env.tick(2).await;
    env.tick_integrations(1).await;
    standin.clear_requests();

    for _ in 0..3 {
        env.tick_integrations(1).await;
    }
    env.clock.advance(Duration::from_secs(60));
    env.tick_integrations(1).await;
    env.tick(2).await;
    let requests = standin.requests();
    let writes: Vec<_> = requests
        .iter()
        .filter(|r| r.verb.is_write() && !r.path.contains("/events"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "writes at steady state: {writes:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.path.contains("/integrations/procore-sharepoint")),
        "the Integration was looked at"
    );
    env.shutdown().await;
}

/// Moves the controller clock past the debounce window until the Integration records
/// `revision` for `connector` (which it does right after the roll). A reconcile that started
/// before a tick may finish after it, so the window may open one tick later than the test
/// expects; stepping the clock again cannot roll twice, as the roll records the revision.
async fn let_the_window_pass(
    env: &Env,
    integration: &str,
    connector: &str,
    revision: &str,
) -> Integration {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        env.clock.advance(Duration::from_secs(11));
        env.tick_integrations(1).await;
        let integ = env.integration(integration).await;
        if recorded_revision(&integ, connector).as_deref() == Some(revision) {
            return integ;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{integration} never recorded {revision}"
        );
    }
}

/// Waits until the async `cond` holds; fails the test after [`WAIT`].
async fn eventually_async<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_malformed_integration_never_blocks_the_others() {
    let env = Env::start().await;
    let Some(standin) = env
        .cluster
        .standin_or_skip("a_malformed_integration_never_blocks_the_others")
    else {
        return;
    };
    let standin = standin.clone();
    // Stored under an older, looser schema, the way a malformed object reaches a cluster.
    store_malformed::<Integration>(
        &env,
        &standin,
        json!({
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "Integration",
            "metadata": {"name": "broken"},
            "spec": {"connectors": "procore-sync"},
        }),
    )
    .await;

    let _sides = connect_both(&env).await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &[]))
        .await;
    wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    // The credential controller lists Integrations for the in-use finalizer: the broken one
    // does not stop it either.
    env.wait_cred("procore-sync", "in-use finalizer", has_finalizer)
        .await;
    let ev = env.wait_event("broken", "Misconfigured").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.unwrap_or_default().contains("schema"));
    env.shutdown().await;
}

#[tokio::test]
async fn a_failed_status_write_after_a_roll_does_not_roll_again() {
    let env = Env::start().await;
    let Some(standin) = env
        .cluster
        .standin_or_skip("a_failed_status_write_after_a_roll_does_not_roll_again")
    else {
        return;
    };
    let standin = standin.clone();
    let _sides = connect_both(&env).await;
    env.create_deployment("sync-engine").await;
    env.apply_integration("procore-sharepoint", sync_spec(&[], &["sync-engine"]))
        .await;
    wait_phase(&env, "procore-sharepoint", Phase::Connected).await;
    env.tick_integrations(1).await;
    let gen0 = generation(&env.deployments().get("sync-engine").await.unwrap());

    let new_rev = swap_procore(&env, "dmsa-2", "secret-2").await;
    // The new account shows while the roll waits for its window.
    env.wait_integration("procore-sharepoint", "new account shown", |i| {
        connector_status(i, "procore").and_then(|c| c.account) == Some("svc-sync-2@acme.com".into())
    })
    .await;
    // The status write that follows the roll fails once.
    standin.fail_next(
        1,
        reconnect_apiserver::RequestMatch::any()
            .verb(reconnect_apiserver::Verb::Patch)
            .path_contains("/integrations/procore-sharepoint/status"),
        500,
    );
    let_the_window_pass(&env, "procore-sharepoint", "procore", &new_rev).await;
    env.clock.advance(Duration::from_secs(60));
    env.tick_integrations(1).await;
    assert_eq!(
        generation(&env.deployments().get("sync-engine").await.unwrap()),
        gen0 + 1,
        "one rollout although the first status write after it failed"
    );
    assert!(
        env.metric(
            "reconnect_reconcile_errors_total{controller=\"integration\",reason=\"KubeApiError\"}"
        ) >= 1,
        "the failed write went through error_policy"
    );
    env.shutdown().await;
}
