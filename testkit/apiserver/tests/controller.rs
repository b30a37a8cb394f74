//! A kube-runtime `Controller` over ConnectorCredentials that also watches Secret metadata,
//! run against the stand-in: it must see objects created after it starts, carry on after
//! its watches are cut, and get through injected 500s and 409s. These need fault injection,
//! so they skip (with a note) on a real cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use reconnect_apiserver::{ApiServer, RequestMatch, TestCluster, Verb, test_cluster};
use reconnect_operator::api::ConnectorCredential;
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
/// Label on a Secret naming the ConnectorCredential it feeds.
const CREDENTIAL_LABEL: &str = "reconnect.dev/credential";

struct Ctx {
    client: kube::Client,
    reconciled: mpsc::UnboundedSender<Reconciled>,
    failures: AtomicUsize,
}

/// A reconcile that happened: the object's name and whether it wrote status.
type Reconciled = (String, bool);

/// Writes status when it is behind the generation (so injected write failures reach the
/// error path), then records the reconcile.
async fn reconcile(cc: Arc<ConnectorCredential>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let name = cc.metadata.name.clone().expect("named");
    let observed = cc.status.as_ref().and_then(|s| s.observed_generation);
    let write = observed != cc.metadata.generation;
    if write {
        let api: Api<ConnectorCredential> = Api::default_namespaced(ctx.client.clone());
        let status = json!({
            "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential",
            "status": {"observedGeneration": cc.metadata.generation},
        });
        api.patch_status(
            &name,
            &PatchParams::apply("test-controller").force(),
            &Patch::Apply(status),
        )
        .await?;
    }
    // The receiver outlives the controller in every test.
    let _ = ctx.reconciled.send((name, write));
    Ok(Action::await_change())
}

fn error_policy(_cc: Arc<ConnectorCredential>, _error: &kube::Error, ctx: Arc<Ctx>) -> Action {
    ctx.failures.fetch_add(1, Ordering::SeqCst);
    Action::requeue(Duration::from_millis(50))
}

struct Running {
    reconciled: mpsc::UnboundedReceiver<Reconciled>,
    ctx: Arc<Ctx>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    /// Waits for the next reconcile of `name` that `matches` (name, wrote status), skipping others.
    async fn wait_for(&mut self, name: &str, mut matches: impl FnMut(bool) -> bool) {
        tokio::time::timeout(WAIT, async {
            while let Some((seen, wrote)) = self.reconciled.recv().await {
                if seen == name && matches(wrote) {
                    return;
                }
            }
            panic!("controller stopped");
        })
        .await
        .unwrap_or_else(|_| panic!("{name} not reconciled within {WAIT:?}"));
    }

    /// Waits for the next reconcile of `name`.
    async fn reconciled(&mut self, name: &str) {
        self.wait_for(name, |_| true).await;
    }

    /// Waits until `name` is reconciled with its status current: the event from the status
    /// write has been handled and nothing else is pending for it.
    async fn settled(&mut self, name: &str) {
        self.wait_for(name, |wrote| !wrote).await;
    }
}

fn start_controller(cluster: &TestCluster) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        client: cluster.client.clone(),
        reconciled: tx,
        failures: AtomicUsize::new(0),
    });
    let credentials: Api<ConnectorCredential> = Api::default_namespaced(cluster.client.clone());
    // `Api<PartialObjectMeta<_>>` makes kube send metadata-only list and watch requests.
    let secret_metadata: Api<PartialObjectMeta<Secret>> =
        Api::default_namespaced(cluster.client.clone());
    let namespace = cluster.namespace.clone();
    let controller = Controller::new(credentials, watcher::Config::default())
        .watches(secret_metadata, watcher::Config::default(), move |secret| {
            let credential = secret
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CREDENTIAL_LABEL))
                .cloned();
            credential.map(|name| ObjectRef::<ConnectorCredential>::new(&name).within(&namespace))
        })
        .run(reconcile, error_policy, ctx.clone())
        // Reconcile errors are counted by error_policy; the stream itself only reports them.
        .for_each(|_| async {});
    Running {
        reconciled: rx,
        ctx,
        task: tokio::spawn(controller),
    }
}

async fn create_credential(cluster: &TestCluster, name: &str) {
    let cc: ConnectorCredential = serde_json::from_value(json!({
        "apiVersion": "reconnect.dev/v1alpha1", "kind": "ConnectorCredential", "metadata": {"name": name},
        "spec": {"provider": "procore", "auth": "ClientCredentials", "secretRef": {"name": format!("{name}-source")}},
    }))
    .expect("static credential");
    Api::<ConnectorCredential>::default_namespaced(cluster.client.clone())
        .create(&PostParams::default(), &cc)
        .await
        .unwrap();
}

/// Waits until both of the controller's watches (credentials, secret metadata) are open.
async fn watches_open(standin: &ApiServer, count: usize) {
    tokio::time::timeout(WAIT, async {
        while standin.open_watches() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("controller watches opened");
}

#[tokio::test]
async fn controller_sees_credentials_created_after_it_starts_and_secret_changes() {
    let cluster = test_cluster().await;
    let Some(standin) = cluster
        .standin_or_skip("controller_sees_credentials_created_after_it_starts_and_secret_changes")
    else {
        return;
    };
    let mut running = start_controller(&cluster);
    watches_open(standin, 2).await;
    create_credential(&cluster, "late").await;
    running.settled("late").await;
    // From here on only the Secret can trigger another reconcile of "late".
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-source", "labels": {CREDENTIAL_LABEL: "late"}}, "stringData": {"client_id": "x"},
    }))
    .unwrap();
    Api::<Secret>::default_namespaced(cluster.client.clone())
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    running.reconciled("late").await;
    // The Secret side is listed and watched as metadata only.
    let secret_reads: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/secrets") && matches!(r.verb, Verb::List | Verb::Watch))
        .collect();
    assert!(secret_reads.iter().any(|r| r.verb == Verb::Watch));
    assert!(
        secret_reads.iter().all(|r| r
            .accept
            .as_deref()
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"))),
        "{secret_reads:?}"
    );
    cluster.cleanup().await;
}

#[tokio::test]
async fn controller_resumes_after_its_watches_are_closed() {
    let cluster = test_cluster().await;
    let Some(standin) = cluster.standin_or_skip("controller_resumes_after_its_watches_are_closed")
    else {
        return;
    };
    let mut running = start_controller(&cluster);
    create_credential(&cluster, "first").await;
    running.reconciled("first").await;
    watches_open(standin, 2).await;
    let lists_before = standin
        .requests()
        .iter()
        .filter(|r| r.verb == Verb::List)
        .count();
    standin.close_watches();
    create_credential(&cluster, "second").await;
    running.reconciled("second").await;
    watches_open(standin, 2).await;
    // Resumed from the last resourceVersion: a new watch, no relist.
    let lists_after = standin
        .requests()
        .iter()
        .filter(|r| r.verb == Verb::List)
        .count();
    assert_eq!(lists_before, lists_after);
    cluster.cleanup().await;
}

#[tokio::test]
async fn controller_survives_injected_server_errors_and_conflicts() {
    let cluster = test_cluster().await;
    let Some(standin) =
        cluster.standin_or_skip("controller_survives_injected_server_errors_and_conflicts")
    else {
        return;
    };
    let mut running = start_controller(&cluster);
    create_credential(&cluster, "steady").await;
    running.reconciled("steady").await;
    watches_open(standin, 2).await;

    // Status writes fail twice with 409 and once with 500, then succeed.
    standin.fail_next(
        2,
        RequestMatch::any()
            .method(http::Method::PATCH)
            .path_contains("/status"),
        409,
    );
    standin.fail_next(
        1,
        RequestMatch::any()
            .method(http::Method::PATCH)
            .path_contains("/status"),
        500,
    );
    // Re-established watches fail with 500 before they get through.
    standin.fail_next(2, RequestMatch::any().verb(Verb::Watch), 500);
    standin.close_watches();
    create_credential(&cluster, "bumpy").await;
    running.reconciled("bumpy").await;
    assert_eq!(running.ctx.failures.load(Ordering::SeqCst), 3);
    let cc = Api::<ConnectorCredential>::default_namespaced(cluster.client.clone())
        .get("bumpy")
        .await
        .unwrap();
    assert_eq!(cc.status.and_then(|s| s.observed_generation), Some(1));
    cluster.cleanup().await;
}
