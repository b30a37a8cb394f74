//! The operator process: the HTTP endpoints (/metrics, /healthz, /readyz), leader election
//! on a Lease, and the controllers, joined until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::clock::SystemClock;
use crate::controller::{self, Context};
pub use crate::health::{Health, serve_http};
use crate::leader::LeaseSettings;
use crate::metrics::Metrics;
use crate::providers::Providers;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_addr: SocketAddr,
    /// Run the controllers only while holding the Lease.
    pub leader_election: bool,
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the client's default namespace when unset).
    pub lease_namespace: Option<String>,
    /// This replica's identity (Lease holder, event reportingInstance).
    pub identity: String,
    /// How long the Lease stays valid without renewal.
    pub lease_duration: std::time::Duration,
    /// How long credential swaps are gathered into one rollout of an Integration's workloads.
    pub restart_debounce: std::time::Duration,
    /// Reconciles each controller runs at once (0: unbounded).
    pub max_concurrent_reconciles: u16,
    /// Restart-target rollouts in flight at once across every Integration (0: unbounded).
    pub max_concurrent_rollouts: usize,
    /// How long a rollout holds its slot at most, if its workload never reports it done.
    pub rollout_hold: std::time::Duration,
}

/// Runs the controllers for every configured namespace until `stop` flips to true.
pub(crate) async fn run_controllers(
    ctx: Arc<Context>,
    options: &Options,
    stop: watch::Receiver<bool>,
) {
    ctx.begin_term();
    let namespaces = &options.namespaces;
    let settings = controller::integration::Settings {
        restart_debounce: options.restart_debounce,
    };
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let shutdown = || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let runs = scopes.into_iter().flat_map(|ns| {
        let credentials: futures::future::BoxFuture<'static, ()> =
            Box::pin(controller::credential::run(
                ctx.clone(),
                ns.clone(),
                futures::stream::pending(),
                shutdown(),
            ));
        let integrations: futures::future::BoxFuture<'static, ()> =
            Box::pin(controller::integration::run_with(
                ctx.clone(),
                settings.clone(),
                ns,
                futures::stream::pending(),
                shutdown(),
            ));
        [credentials, integrations]
    });
    futures::future::join_all(runs).await;
}

/// How long reconciles in flight may take to finish after a stop. Below the chart's
/// `terminationGracePeriodSeconds` (30), so the process ends on its own before the kubelet
/// kills it.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    crate::memory::start_trimming();
    let listener = TcpListener::bind(options.metrics_addr).await?;
    run_on(client, options, listener, shutdown).await
}

/// Runs the operator with its HTTP endpoints on an already bound `listener`.
pub async fn run_on(
    client: Client,
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let metrics = Arc::new(Metrics::new());
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");

    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Providers::new().with_metrics(metrics.clone()),
            Arc::new(SystemClock),
            metrics.clone(),
            Some(options.identity.clone()),
        )
        .with_concurrency(options.max_concurrent_reconciles)
        .with_rollouts(options.max_concurrent_rollouts, options.rollout_hold),
    );
    let health = Arc::new(Health::new(ctx.caches().clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = tokio::spawn(serve_http(listener, metrics, health.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }));
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    // After a stop, reconciles in flight get SHUTDOWN_GRACE to finish; then the process
    // goes anyway (no worse than the SIGKILL that would follow: every step is crash-safe).
    let grace = {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let work = async {
        if options.leader_election {
            let lease = LeaseSettings {
                name: options.lease_name.clone(),
                namespace: options.lease_namespace.clone(),
                identity: options.identity.clone(),
                duration: options.lease_duration,
            };
            let run = |stop| run_controllers(ctx.clone(), &options, stop);
            crate::leader::lead(client, &lease, health.clone(), stop_rx, run).await?;
        } else {
            health.set_running(true);
            run_controllers(ctx, &options, stop_rx).await;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        done = work => done?,
        () = grace => warn!(
            grace = ?SHUTDOWN_GRACE,
            "reconciles in flight did not finish within the shutdown grace period; stopping anyway"
        ),
    }
    health.set_running(false);
    if let Err(err) = http.await {
        error!(error = %err, "HTTP server task failed");
    }
    Ok(())
}
