//! Measures a rotation: the time from a source Secret update to the validated swap (status
//! `activeRevision` changed), and the Kubernetes API and provider requests one rotation
//! costs. Runs the real controller against the stand-in API and the Procore emulator, all
//! in-process on loopback, and prints medians.
//!
//!     cargo run --release --example rotation_figures [-- ROTATIONS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use reconnect_apiserver::ApiServer;
use reconnect_emulators::{Account, ProcoreEmulator};
use reconnect_operator::api::ConnectorCredential;
use reconnect_operator::clock::SystemClock;
use reconnect_operator::controller::Context;
use reconnect_operator::metrics::Metrics;
use reconnect_operator::providers::Providers;
use serde_json::json;

const NS: &str = "figures";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rotations: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let api = ApiServer::new();
    api.register_crds_from_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))?;
    let client = api.client();
    let emu = ProcoreEmulator::start().await;
    emu.add_account(
        Account::new("1", "svc-a@acme.com").with_permissions(["company:1", "documents:admin"]),
    );
    emu.add_account(
        Account::new("2", "svc-b@acme.com").with_permissions(["company:1", "documents:admin"]),
    );
    emu.add_client("a", "secret-a", Some("1"));
    emu.add_client("b", "secret-b", Some("2"));

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let creds: Api<ConnectorCredential> = Api::namespaced(client.clone(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "src"}, "stringData": {"client_id": "a", "client_secret": "secret-a"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;

    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Providers::new().with_metrics(metrics.clone()),
        Arc::new(SystemClock),
        metrics,
        None,
    ));
    tokio::spawn(reconnect_operator::controller::credential::run(
        ctx,
        Some(NS.into()),
        futures::stream::pending(),
        std::future::pending(),
    ));
    let cred = json!({
        "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
        "metadata": {"name": "c"},
        "spec": {"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": "src"},
                 "endpoint": emu.base_url(), "params": {"companyId": "1"},
                 "requiredPermissions": ["company:1"]},
    });
    creds
        .patch("c", &PatchParams::apply("figures"), &Patch::Apply(&cred))
        .await?;
    let revision = |c: Option<&ConnectorCredential>| {
        c.and_then(|c| c.status.as_ref())
            .and_then(|s| s.active_revision.clone())
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            creds.clone(),
            "c",
            move |c: Option<&ConnectorCredential>| revision(c).is_some(),
        ),
    )
    .await??;

    let (mut latencies, mut api_reads, mut api_writes, mut provider_calls) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut secret_writes, mut status_writes, mut event_writes) =
        (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rotations {
        // Let the previous rotation's follow-up reconcile finish before measuring.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let before = revision(Some(&creds.get("c").await?));
        let (id, secret) = if i % 2 == 0 {
            ("b", "secret-b")
        } else {
            ("a", "secret-a")
        };
        api.clear_requests();
        let calls_before = emu.total_requests();
        let started = Instant::now();
        secrets
            .patch(
                "src",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"client_id": id, "client_secret": secret}})),
            )
            .await?;
        let cond =
            move |c: Option<&ConnectorCredential>| revision(c).is_some() && revision(c) != before;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(creds.clone(), "c", cond),
        )
        .await??;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        // Count the operator's requests for this rotation (minus the update and the wait).
        let requests = api.requests();
        let writes = requests
            .iter()
            .filter(|r| r.verb.is_write() && !r.path.contains("/secrets/src"))
            .count();
        let reads = requests
            .iter()
            .filter(|r| !r.verb.is_write())
            .count()
            .saturating_sub(1);
        let count = |needle: &str| {
            requests
                .iter()
                .filter(|r| {
                    r.verb.is_write() && r.path.contains(needle) && !r.path.contains("/secrets/src")
                })
                .count() as f64
        };
        secret_writes.push(count("/secrets"));
        status_writes.push(count("/status"));
        event_writes.push(count("/events"));
        api_reads.push(reads as f64);
        api_writes.push(writes as f64);
        provider_calls.push((emu.total_requests() - calls_before) as f64);
    }
    println!("rotations measured: {rotations}");
    println!(
        "Secret update -> validated swap: median {:.1} ms (p90 {:.1} ms)",
        median(latencies.clone()),
        {
            let mut l = latencies.clone();
            l.sort_by(|a, b| a.total_cmp(b));
            l[(l.len() * 9 / 10).min(l.len() - 1)]
        }
    );
    println!(
        "per rotation, median: {} Kubernetes API writes ({} target Secret, {} status, {} events), {} reads, {} provider calls",
        median(api_writes),
        median(secret_writes),
        median(status_writes),
        median(event_writes),
        median(api_reads),
        median(provider_calls)
    );
    Ok(())
}
