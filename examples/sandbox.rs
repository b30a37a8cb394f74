//! The no-cluster sandbox: the operator's main job on an embedded default.
//!
//! One process starts the stand-in Kubernetes API (also served over HTTP, so `kubectl` can
//! look), the Procore and Microsoft emulators, applies `examples/procore-sharepoint.yaml`
//! with its endpoints pointed at the emulators, and runs the real controller code through a
//! story: connect, rotate to a good credential, rotate to an account that lacks a
//! permission, lose the active account at the provider, recover. The Integration controller
//! runs beside the credential controller, so the tables show the Integration's phase too. It prints a `kubectl
//! get`-style table after each step and exits 0 when every step reached the state it
//! should (non-zero otherwise, so CI can run it as a smoke test).
//!
//! Time is simulated: "23 minutes later" moves the controller's clock, not the wall clock.
//!
//!     cargo run --example sandbox            # the story, then exit
//!     cargo run --example sandbox -- --hold  # then keep serving for kubectl until Ctrl-C

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use reconnect_apiserver::ApiServer;
use reconnect_emulators::{Account, MicrosoftEmulator, ProcoreEmulator};
use reconnect_operator::api::{ConnectorCredential, Integration, Phase};
use reconnect_operator::clock::ManualClock;
use reconnect_operator::controller::Context;
use reconnect_operator::metrics::Metrics;
use reconnect_operator::providers::Providers;
use serde_json::{Value, json};

const NS: &str = "acme";
const SITE: &str = "contoso.sharepoint.com,2C712604-1370-44E7-A1F5-426573FDA80A,2D2244C3-251A-49EA-93A8-39E1C3A060FE";
const WAIT: Duration = Duration::from_secs(30);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Sandbox {
    client: kube::Client,
    clock: ManualClock,
    tick: mpsc::UnboundedSender<()>,
    procore: ProcoreEmulator,
}

#[tokio::main]
async fn main() -> ExitCode {
    let hold = std::env::args().any(|a| a == "--hold");
    match run(hold).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nsandbox failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(hold: bool) -> Result<()> {
    println!(
        "reconnect-operator sandbox: stand-in Kubernetes API + provider emulators, no cluster\n"
    );
    let api = ApiServer::new();
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    api.register_crds_from_dir(&crds)?;
    let served = api.serve().await?;
    println!("Kubernetes API (stand-in): {}", served.url());
    println!(
        "  look around:  kubectl --kubeconfig {} get reconnect -n {NS}",
        served.kubeconfig().display()
    );

    let procore = ProcoreEmulator::start().await;
    let full = ["company:1234", "project:5678", "documents:admin"];
    procore.add_account(Account::new("4567", "svc-sync@acme.com").with_permissions(full));
    procore.add_account(Account::new("4568", "svc-sync-2@acme.com").with_permissions(full));
    procore.add_account(Account::new("4569", "svc-sync-3@acme.com").with_permissions(full));
    procore.add_account(
        Account::new("900", "jane@acme.com").with_permissions(["company:1234", "project:5678"]),
    );
    procore.add_client("dmsa-1", "secret-1", Some("4567"));
    procore.add_client("dmsa-2", "secret-2", Some("4568"));
    procore.add_client("dmsa-3", "secret-3", Some("4569"));
    procore.add_client("jane-app", "jane-secret", Some("900"));
    let microsoft = MicrosoftEmulator::start().await;
    microsoft.add_account(
        Account::new("sp-object-id", "procore-sharepoint sync app")
            .with_scopes(["Sites.ReadWrite.All"])
            .with_permissions([format!("site:{SITE}")]),
    );
    microsoft.add_client("app-id", "app-secret", Some("sp-object-id"));
    println!("Procore emulator:           {}", procore.base_url());
    println!("Microsoft emulator:         {}\n", microsoft.base_url());

    let client = api.client();
    let clock = ManualClock::new(jiff::Timestamp::now());
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Providers::new()
            .with_clock(Arc::new(clock.clone()))
            .with_metrics(metrics.clone()),
        Arc::new(clock.clone()),
        metrics,
        Some("sandbox".into()),
    ));
    let (tick, ticks) = mpsc::unbounded();
    tokio::spawn(reconnect_operator::controller::credential::run(
        ctx.clone(),
        Some(NS.into()),
        ticks,
        std::future::pending(),
    ));
    tokio::spawn(reconnect_operator::controller::integration::run(
        ctx,
        Some(NS.into()),
        futures::stream::pending(),
        std::future::pending(),
    ));
    let sb = Sandbox {
        client,
        clock,
        tick,
        procore,
    };

    step("1. Apply examples/procore-sharepoint.yaml (endpoints pointed at the emulators)");
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(sb.client.clone())
        .create(&Default::default(), &namespace)
        .await?;
    apply_example(&sb.client, &sb.procore, &microsoft).await?;
    // The sync workload the Integration rolls after a swap (its restart target).
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "procore-sharepoint-sync"},
        "spec": {
            "selector": {"matchLabels": {"app": "sync"}},
            "template": {
                "metadata": {"labels": {"app": "sync"}},
                "spec": {"containers": [{"name": "sync", "image": "example/sync:1.0"}]},
            },
        },
    }))?;
    Api::<Deployment>::namespaced(sb.client.clone(), NS)
        .create(&Default::default(), &deployment)
        .await?;
    println!("   created Deployment/procore-sharepoint-sync (the Integration's restart target)");
    sb.wait("procore-sync", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await?;
    sb.wait("sharepoint-app", "Connected", |c| {
        phase(c) == Some(Phase::Connected)
    })
    .await?;
    sb.wait_integration(Phase::Connected).await?;
    sb.table().await?;

    step("2. Rotate procore-sync to a new service account (good credential)");
    let before = revision(&sb.get("procore-sync").await?);
    sb.set_source("procore-sync", "dmsa-2", "secret-2").await?;
    sb.wait("procore-sync", "swapped to svc-sync-2", |c| {
        revision(c) != before && account(c) == "svc-sync-2@acme.com"
    })
    .await?;
    sb.table().await?;
    sb.show_target("procore-sync-active").await?;
    // Swaps within the debounce window (10s) roll the workload once, when it closes.
    sb.wait_rollout().await?;

    step("3. Rotate procore-sync to jane@acme.com, who lacks documents:admin");
    sb.set_source("procore-sync", "jane-app", "jane-secret")
        .await?;
    sb.wait("procore-sync", "rejected", |c| {
        phase(c) == Some(Phase::PermissionMismatch)
    })
    .await?;
    sb.wait_integration(Phase::PermissionMismatch).await?;
    sb.table().await?;
    sb.show_target("procore-sync-active").await?;
    println!(
        "   -> rejected: the target Secret still holds svc-sync-2's credential; the sync keeps running"
    );

    step(
        "4. svc-sync-2@acme.com is deactivated in Procore; 23 minutes later (past its next probe slot) the operator has probed",
    );
    sb.procore.deactivate("4568");
    sb.advance(Duration::from_secs(23 * 60));
    sb.wait("procore-sync", "ConnectionLost", |c| {
        phase(c) == Some(Phase::ConnectionLost)
    })
    .await?;
    sb.wait_integration(Phase::ConnectionLost).await?;
    sb.table().await?;

    step("5. Re-authenticate: rotate procore-sync to svc-sync-3@acme.com");
    sb.set_source("procore-sync", "dmsa-3", "secret-3").await?;
    sb.wait("procore-sync", "Connected as svc-sync-3", |c| {
        phase(c) == Some(Phase::Connected) && account(c) == "svc-sync-3@acme.com"
    })
    .await?;
    sb.wait_integration(Phase::Connected).await?;
    sb.table().await?;

    println!("\nEvery step reached the expected state.");
    if hold {
        println!(
            "Holding: the stand-in keeps serving at {} (Ctrl-C to stop)",
            served.url()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn phase(c: &ConnectorCredential) -> Option<Phase> {
    c.status.as_ref().and_then(|s| s.phase)
}

fn revision(c: &ConnectorCredential) -> Option<String> {
    c.status.as_ref().and_then(|s| s.active_revision.clone())
}

fn account(c: &ConnectorCredential) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.account.as_ref())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

/// Applies the example manifests with the emulators' URLs and demo credentials filled in.
async fn apply_example(
    client: &kube::Client,
    procore: &ProcoreEmulator,
    microsoft: &MicrosoftEmulator,
) -> Result<()> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/procore-sharepoint.yaml");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&path)?)?;
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match (kind.as_str(), name.as_str()) {
            ("Secret", "procore-sync") => {
                doc["stringData"] = json!({"client_id": "dmsa-1", "client_secret": "secret-1"});
            }
            ("Secret", "sharepoint-app") => {
                doc["stringData"] = json!({"client_id": "app-id", "secret": "app-secret"});
            }
            ("ConnectorCredential", "procore-sync") => {
                doc["spec"]["endpoint"] = json!(procore.base_url());
            }
            ("ConnectorCredential", "sharepoint-app") => {
                doc["spec"]["endpoint"] = json!(microsoft.base_url());
                doc["spec"]["params"]["tenantId"] = json!("contoso-tenant");
            }
            _ => {}
        }
        let (group, version) = match doc["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
        {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap_or_default().to_owned(),
            ),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let plural = match kind.as_str() {
            "Secret" => "secrets",
            "ConnectorCredential" => "connectorcredentials",
            "Integration" => "integrations",
            other => return Err(format!("unexpected kind {other} in the example").into()),
        };
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
        api.patch(&name, &PatchParams::apply("sandbox"), &Patch::Apply(&doc))
            .await?;
        println!("   applied {kind}/{name}");
    }
    Ok(())
}

impl Sandbox {
    fn creds(&self) -> Api<ConnectorCredential> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn get(&self, name: &str) -> Result<ConnectorCredential> {
        Ok(self.creds().get(name).await?)
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        let _ = self.tick.unbounded_send(());
    }

    async fn set_source(&self, name: &str, id: &str, secret: &str) -> Result<()> {
        let patch = json!({"stringData": {"client_id": id, "client_secret": secret}});
        Api::<Secret>::namespaced(self.client.clone(), NS)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        println!("   updated Secret/{name}: client_id={id}");
        Ok(())
    }

    async fn wait(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&ConnectorCredential) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(c) = self.creds().get_opt(name).await?
                && pred(&c)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{name} did not reach: {what}").into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the example's Integration reaches `want`.
    async fn wait_integration(&self, want: Phase) -> Result<()> {
        let api: Api<Integration> = Api::namespaced(self.client.clone(), NS);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = api.get_opt("procore-sharepoint").await?
                && i.status.as_ref().and_then(|s| s.phase) == Some(want)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("Integration procore-sharepoint did not reach {want}").into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn table(&self) -> Result<()> {
        let list = self.creds().list(&Default::default()).await?;
        println!(
            "\n   {:<16} {:<10} {:<32} {:<20} READY",
            "NAME", "PROVIDER", "ACCOUNT", "STATUS"
        );
        for c in &list.items {
            let ready = c
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|r| format!("{} {}", r.status, r.reason))
                .unwrap_or_default();
            println!(
                "   {:<16} {:<10} {:<32} {:<20} {}",
                c.metadata.name.clone().unwrap_or_default(),
                c.spec.provider.as_str(),
                account(c),
                phase(c).map(|p| p.as_str()).unwrap_or("-"),
                ready
            );
        }
        let integrations = Api::<Integration>::namespaced(self.client.clone(), NS)
            .list(&Default::default())
            .await?;
        for i in &integrations.items {
            let status = i.status.clone().unwrap_or_default();
            println!(
                "   Integration {}: {} ({} connectors connected)",
                i.metadata.name.clone().unwrap_or_default(),
                status.phase.map(|p| p.as_str()).unwrap_or("-"),
                status.ready_connectors.as_deref().unwrap_or("-"),
            );
            for c in status.connectors.iter().filter(|c| c.message.is_some()) {
                println!("     {}", c.message.as_deref().unwrap_or_default());
            }
        }
        for c in &list.items {
            let Some(status) = &c.status else { continue };
            for cond in &status.conditions {
                let notable = (cond.type_ == "Ready" && cond.status == "False")
                    || (cond.type_ == "PermissionMismatch" && cond.status == "True");
                if notable {
                    println!(
                        "   {}: {} {}: {}",
                        c.metadata.name.clone().unwrap_or_default(),
                        cond.type_,
                        cond.reason,
                        cond.message
                    );
                }
            }
        }
        Ok(())
    }

    /// Lets simulated time run (a second every 100 ms) until the restart target's pod
    /// template carries the operator's annotations. Time keeps running rather than jumping
    /// once: the Integration may see the swap only after the jump, and its debounce window
    /// opens when it does.
    async fn wait_rollout(&self) -> Result<()> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), NS);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.clock.advance(Duration::from_secs(1));
            let d = api.get("procore-sharepoint-sync").await?;
            let annotations = d
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .unwrap_or_default();
            if let Some(revisions) = annotations.get("reconnect.dev/revisions") {
                println!(
                    "   Deployment/procore-sharepoint-sync rolled (10s debounce closed): pod template annotated reconnect.dev/revisions={}",
                    revisions.chars().take(60).collect::<String>()
                );
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("the restart target was never rolled".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn show_target(&self, name: &str) -> Result<()> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), NS)
            .get(name)
            .await?;
        let client_id = secret
            .data
            .as_ref()
            .and_then(|d| d.get("client_id"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default();
        let revision = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("reconnect.dev/revision"))
            .cloned()
            .unwrap_or_default();
        println!(
            "   Secret/{name} (what the sync mounts): client_id={client_id}, revision {}",
            revision.get(..15).unwrap_or(&revision)
        );
        Ok(())
    }
}
