//! The end-to-end harness: a cluster (the stand-in, or a real one when
//! `RECONNECT_TEST_KUBECONFIG` is set), the real controllers (ConnectorCredential and
//! Integration, in one process as the operator runs them) on a manual clock, and helpers
//! that wait for observable states with bounded timeouts instead of sleeping.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::channel::mpsc;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use reconnect_apiserver::TestCluster;
use reconnect_operator::api::{ConnectorCredential, Integration};
use reconnect_operator::clock::ManualClock;
use reconnect_operator::controller::Context;
use reconnect_operator::metrics::Metrics;
use reconnect_operator::providers::Providers;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any wait may take before the test fails: generous, because a wait ends as soon
/// as its condition holds.
pub const WAIT: Duration = Duration::from_secs(30);

/// Far enough past a validation (or a start) for the credential's next probe under the
/// default 15-minute interval: its probe slot falls between half an interval and one and a
/// half intervals later, wherever its phase puts it.
pub const PAST_NEXT_PROBE: Duration = Duration::from_secs(23 * 60);

pub struct Env {
    pub cluster: TestCluster,
    pub clock: ManualClock,
    pub ctx: Arc<Context>,
    configure: fn(Context) -> Context,
    tick: mpsc::UnboundedSender<()>,
    tick_integrations: mpsc::UnboundedSender<()>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Running {
    ctx: Arc<Context>,
    tick: mpsc::UnboundedSender<()>,
    tick_integrations: mpsc::UnboundedSender<()>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts both controllers. The Integration controller keeps its default 10-second restart
/// debounce, measured on the manual clock.
fn start_controller(
    cluster: &TestCluster,
    clock: &ManualClock,
    configure: fn(Context) -> Context,
) -> Running {
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(configure(Context::new(
        cluster.client.clone(),
        Providers::new()
            .with_clock(Arc::new(clock.clone()))
            .with_metrics(metrics.clone()),
        Arc::new(clock.clone()),
        metrics,
        Some("e2e".into()),
    )));
    let (tick, ticks) = mpsc::unbounded();
    let (tick_integrations, integration_ticks) = mpsc::unbounded();
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = stopped.shared();
    let credentials = reconnect_operator::controller::credential::run(
        ctx.clone(),
        Some(cluster.namespace.clone()),
        ticks,
        stopped.clone().map(|_| ()),
    );
    let integrations = reconnect_operator::controller::integration::run(
        ctx.clone(),
        Some(cluster.namespace.clone()),
        integration_ticks,
        stopped.map(|_| ()),
    );
    let task = tokio::spawn(async move {
        futures::join!(credentials, integrations);
    });
    Running {
        ctx,
        tick,
        tick_integrations,
        stop,
        task,
    }
}

impl Env {
    /// A fresh namespace with the credential controller running in it. Set
    /// `RECONNECT_TEST_LOG` (a RUST_LOG-style filter) to see the controller's logs.
    pub async fn start() -> Self {
        Self::start_with(|ctx| ctx).await
    }

    /// [`Env::start`] with the controllers' context changed by `configure`.
    pub async fn start_with(configure: fn(Context) -> Context) -> Self {
        if let Ok(filter) = std::env::var("RECONNECT_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let cluster = reconnect_apiserver::test_cluster().await;
        let clock = ManualClock::new(Timestamp::now());
        let run = start_controller(&cluster, &clock, configure);
        Self {
            cluster,
            clock,
            ctx: run.ctx,
            configure,
            tick: run.tick,
            tick_integrations: run.tick_integrations,
            stop: Some(run.stop),
            task: Some(run.task),
        }
    }

    pub fn ns(&self) -> &str {
        &self.cluster.namespace
    }

    pub fn creds(&self) -> Api<ConnectorCredential> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    /// Stops the controller process (as a crash would: no cleanup) and starts a new one with
    /// fresh in-memory state against the same cluster.
    pub async fn restart(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let run = start_controller(&self.cluster, &self.clock, self.configure);
        self.ctx = run.ctx;
        self.tick = run.tick;
        self.tick_integrations = run.tick_integrations;
        self.stop = Some(run.stop);
        self.task = Some(run.task);
    }

    /// Stops the controller without starting another.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// A counter of the controllers' own metrics, 0 when not recorded yet.
    pub fn metric(&self, series: &str) -> u64 {
        self.ctx
            .metrics()
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// ConnectorCredential reconcile runs so far (from the controller's own metrics).
    pub fn reconciles(&self) -> u64 {
        self.metric("reconnect_reconcile_total{controller=\"connectorcredential\"}")
    }

    /// Integration reconcile runs so far.
    pub fn integration_reconciles(&self) -> u64 {
        self.metric("reconnect_reconcile_total{controller=\"integration\"}")
    }

    async fn wait_reconciles(&self, counter: impl Fn() -> u64, before: u64, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while counter() < before + n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reconcile after a tick"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until at least `n` ConnectorCredential reconciles have finished since the start.
    /// A status written by a reconcile can be seen before that reconcile has finished (on a
    /// real API server the watch may even deliver it first): count from here, not from the
    /// status.
    pub async fn reconciled(&self, n: u64) {
        self.wait_reconciles(|| self.reconciles(), 0, n).await;
    }

    /// Re-reconciles every ConnectorCredential and waits until at least `n` reconciles have
    /// finished.
    pub async fn tick(&self, n: u64) {
        let before = self.reconciles();
        self.tick.unbounded_send(()).expect("controller running");
        self.wait_reconciles(|| self.reconciles(), before, n).await;
    }

    /// Re-reconciles every ConnectorCredential without waiting for the reconciles.
    pub fn tick_nowait(&self) {
        self.tick.unbounded_send(()).expect("controller running");
    }

    /// Re-reconciles every Integration and waits until at least `n` reconciles have finished.
    pub async fn tick_integrations(&self, n: u64) {
        let before = self.integration_reconciles();
        self.tick_integrations
            .unbounded_send(())
            .expect("controller running");
        self.wait_reconciles(|| self.integration_reconciles(), before, n)
            .await;
    }

    /// Moves the manual clock and re-reconciles.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.tick(1).await;
    }

    pub async fn apply_secret(&self, name: &str, data: &[(&str, &str)]) {
        let string_data: serde_json::Map<_, _> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "type": "Opaque",
            "stringData": string_data,
        });
        // Replace the data wholesale, as `kubectl apply` of a new Secret manifest would.
        if let Some(mut existing) = self.secrets().get_opt(name).await.unwrap() {
            existing.data = Some(
                data.iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            );
            self.secrets()
                .replace(name, &PostParams::default(), &existing)
                .await
                .unwrap();
        } else {
            self.secrets()
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(secret).unwrap(),
                )
                .await
                .unwrap();
        }
    }

    pub async fn apply_credential(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> ConnectorCredential {
        let obj = json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "ConnectorCredential",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.creds()
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap()
    }

    /// Waits until the credential satisfies `pred`.
    pub async fn wait_cred(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&ConnectorCredential) -> bool,
    ) -> ConnectorCredential {
        let cond = move |obj: Option<&ConnectorCredential>| obj.is_some_and(&pred);
        match tokio::time::timeout(WAIT, await_condition(self.creds(), name, cond)).await {
            Ok(Ok(Some(obj))) => obj,
            Ok(other) => panic!("waiting for {name} ({what}): {other:?}"),
            Err(_) => {
                let now = self.creds().get_opt(name).await.ok().flatten();
                panic!(
                    "timed out waiting for {name}: {what}; last status: {:#?}",
                    now.and_then(|c| c.status)
                )
            }
        }
    }

    /// Waits until Secret `name` exists and satisfies `pred`.
    pub async fn wait_secret(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Secret) -> bool,
    ) -> Secret {
        let secrets: Api<Secret> = Api::namespaced(self.cluster.client.clone(), self.ns());
        let cond = move |obj: Option<&Secret>| obj.is_some_and(&pred);
        match tokio::time::timeout(WAIT, await_condition(secrets, name, cond)).await {
            Ok(Ok(Some(obj))) => obj,
            Ok(other) => panic!("waiting for Secret {name} ({what}): {other:?}"),
            Err(_) => panic!("timed out waiting for Secret {name}: {what}"),
        }
    }

    pub fn integrations(&self) -> Api<Integration> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.cluster.client.clone(), self.ns())
    }

    pub async fn apply_integration(&self, name: &str, spec: serde_json::Value) -> Integration {
        let obj = json!({
            "apiVersion": "reconnect.dev/v1alpha1",
            "kind": "Integration",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.integrations()
            .patch(
                name,
                &PatchParams::apply("e2e-test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap()
    }

    /// Waits until the Integration satisfies `pred`.
    pub async fn wait_integration(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Integration) -> bool,
    ) -> Integration {
        let cond = move |obj: Option<&Integration>| obj.is_some_and(&pred);
        match tokio::time::timeout(WAIT, await_condition(self.integrations(), name, cond)).await {
            Ok(Ok(Some(obj))) => obj,
            Ok(other) => panic!("waiting for {name} ({what}): {other:?}"),
            Err(_) => {
                let now = self.integrations().get_opt(name).await.ok().flatten();
                panic!(
                    "timed out waiting for {name}: {what}; last status: {:#?}",
                    now.and_then(|i| i.status)
                )
            }
        }
    }

    pub async fn integration(&self, name: &str) -> Integration {
        self.integrations().get(name).await.unwrap()
    }

    /// Creates a one-container Deployment whose pod template carries a user annotation.
    pub async fn create_deployment(&self, name: &str) -> Deployment {
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": {"team.example/owner": "sync-team"}},
                    "spec": {"containers": [{"name": "sync", "image": "example/sync:1.0"}]},
                },
            },
        });
        self.deployments()
            .create(
                &PostParams::default(),
                &serde_json::from_value(deployment).unwrap(),
            )
            .await
            .unwrap()
    }

    pub async fn cred(&self, name: &str) -> ConnectorCredential {
        self.creds().get(name).await.unwrap()
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets().get_opt(name).await.unwrap()
    }

    pub async fn events(&self) -> Vec<Event> {
        Api::<Event>::namespaced(self.cluster.client.clone(), self.ns())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Waits for an event with `reason` about object `name` and returns it.
    pub async fn wait_event(&self, name: &str, reason: &str) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(ev) = self.events().await.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            }) {
                return ev;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {reason} event for {name}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
        self.cluster.cleanup().await;
    }
}

/// Stores `object`, a `K` that the real schema refuses, the way a
/// malformed object reaches a real cluster: under an older, looser schema. Registers a
/// permissive schema for `K` on the stand-in, creates the object, restores the real CRD.
pub async fn store_malformed<K>(
    env: &Env,
    standin: &reconnect_apiserver::ApiServer,
    object: serde_json::Value,
) where
    K: kube::CustomResourceExt + kube::Resource<DynamicType = ()>,
{
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceValidation, JSONSchemaProps,
    };
    let real = K::crd();
    let mut loose = real.clone();
    loose.spec.versions[0].schema = Some(CustomResourceValidation {
        open_api_v3_schema: Some(JSONSchemaProps {
            type_: Some("object".into()),
            x_kubernetes_preserve_unknown_fields: Some(true),
            ..Default::default()
        }),
    });
    standin.register_crd(&loose).unwrap();
    let object: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
    let resource = kube::api::ApiResource::erase::<K>(&());
    Api::<kube::api::DynamicObject>::namespaced_with(
        env.cluster.client.clone(),
        env.ns(),
        &resource,
    )
    .create(&PostParams::default(), &object)
    .await
    .unwrap();
    standin.register_crd(&real).unwrap();
}

/// Waits until `cond` holds, polling; fails the test after [`WAIT`].
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Data of a Secret as strings.
pub fn data(secret: &Secret) -> std::collections::BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

/// The condition of `type_` on a credential.
pub fn condition(
    cred: &ConnectorCredential,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    cred.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

pub fn is_true(cred: &ConnectorCredential, type_: &str) -> bool {
    condition(cred, type_).is_some_and(|c| c.status == "True")
}

pub fn phase(cred: &ConnectorCredential) -> Option<reconnect_operator::api::Phase> {
    cred.status.as_ref().and_then(|s| s.phase)
}

pub fn active_revision(cred: &ConnectorCredential) -> Option<String> {
    cred.status.as_ref().and_then(|s| s.active_revision.clone())
}

/// The condition of `type_` on an Integration.
pub fn integration_condition(
    integration: &Integration,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    integration
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

pub fn integration_phase(integration: &Integration) -> Option<reconnect_operator::api::Phase> {
    integration.status.as_ref().and_then(|s| s.phase)
}

/// The status entry of connector `name`.
pub fn connector_status(
    integration: &Integration,
    name: &str,
) -> Option<reconnect_operator::api::ConnectorStatus> {
    integration
        .status
        .as_ref()?
        .connectors
        .iter()
        .find(|c| c.name == name)
        .cloned()
}
