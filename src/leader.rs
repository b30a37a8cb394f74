//! Leader election on a coordination.k8s.io Lease, so two replicas can run: one reconciles,
//! the other waits. Built on kube-lease-manager (server-side apply on the Lease, so two
//! replicas can never both hold it).
//!
//! The lease manager tells us when we become or stop being the holder, but while the API
//! server cannot be reached it keeps its last belief. A partitioned leader must not go on
//! reconciling while a standby takes over, so a watchdog also reads the Lease: when it
//! cannot confirm that we hold an unexpired Lease for longer than the renewal window, the
//! controllers stop, exactly as when the Lease is lost. Stopping means no new reconcile
//! starts; the ones in flight finish (a reconcile that already spent a refresh token must
//! get to persist the new one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controller::FIELD_MANAGER;
use crate::health::Health;

/// The Lease to hold.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSettings {
    pub name: String,
    /// The client's default namespace when unset.
    pub namespace: Option<String>,
    /// This replica's identity, as the Lease's holder.
    pub identity: String,
    /// How long the Lease stays valid without renewal.
    pub duration: Duration,
}

/// What the watchdog needs to know about the Lease.
struct LeaseCheck {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// How long the Lease may go unconfirmed before we assume it is lost.
    tolerance: Duration,
}

impl LeaseCheck {
    /// Whether the Lease names us as holder and has not expired (by our clock).
    async fn held(&self) -> Result<bool, kube::Error> {
        let lease = self.api.get(&self.name).await?;
        let spec = lease.spec.unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let fresh = spec.renew_time.is_some_and(|t| {
            let age = jiff::Timestamp::now().duration_since(t.0);
            age < jiff::SignedDuration::try_from(self.duration).unwrap_or(jiff::SignedDuration::MAX)
        });
        Ok(ours && fresh)
    }

    /// Resolves when the Lease can no longer be confirmed as ours.
    async fn lost(&self) {
        let every = (self.duration / 4).max(Duration::from_millis(250));
        let mut confirmed = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match self.held().await {
                Ok(true) => confirmed = Instant::now(),
                Ok(false) => return,
                Err(err) if confirmed.elapsed() > self.tolerance => {
                    warn!(error = %err, "cannot confirm the lease");
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// Resolves once the Lease is confirmed as ours.
    async fn confirmed(&self) {
        let every = (self.duration / 4).max(Duration::from_millis(250));
        while !matches!(self.held().await, Ok(true)) {
            tokio::time::sleep(every).await;
        }
    }
}

/// Waits for the Lease, runs the controllers (`run`, until its stop signal flips to true)
/// while holding it, and releases it on shutdown.
pub(crate) async fn lead<F>(
    client: Client,
    options: &LeaseSettings,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
    run: impl Fn(watch::Receiver<bool>) -> F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    F: std::future::Future<Output = ()>,
{
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    // The holder renews a third of the duration before expiry (at least a second).
    let duration = options.duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let check = LeaseCheck {
        api: Api::namespaced(client.clone(), &namespace),
        name: options.name.clone(),
        identity: options.identity.clone(),
        duration: Duration::from_secs(duration),
        tolerance: Duration::from_secs(duration - grace),
    };
    // Setting up the lease reads and may create it: a stop meanwhile (SIGTERM while the API
    // server is slow or unreachable) ends the wait at once.
    let setup = async {
        let manager = LeaseManagerBuilder::new(client, &options.name)
            .with_namespace(&namespace)
            .with_identity(&options.identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager(format!("{FIELD_MANAGER}-lease"))
            .build()
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(manager.watch().await)
    };
    let (mut leading, task) = tokio::select! {
        ready = setup => ready?,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            info!("stopped before the lease was set up");
            return Ok(());
        }
    };
    info!(lease = %options.name, %namespace, identity = %options.identity, "waiting for the lease");
    health.set_standby(true);
    loop {
        // (The watch guards are dropped inside each branch's future: they are not Send.)
        tokio::select! {
            acquired = async {
                leading.wait_for(|l| *l).await.is_ok()
            } => if !acquired { break },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
        // The manager's belief alone is not enough after a partition: read the Lease.
        tokio::select! {
            () = check.confirmed() => {}
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
        info!("acquired the lease; starting controllers");
        health.set_standby(false);
        health.set_running(true);
        let (ctl_stop, ctl_stop_rx) = watch::channel(false);
        let controllers = run(ctl_stop_rx);
        tokio::pin!(controllers);
        tokio::select! {
            () = &mut controllers => {}
            () = async { let _ = leading.wait_for(|l| !*l).await; } => {
                warn!("lost the lease; stopping controllers");
                let _ = ctl_stop.send(true);
                controllers.await;
            }
            () = check.lost() => {
                warn!("the lease is no longer confirmed as ours; stopping controllers");
                let _ = ctl_stop.send(true);
                controllers.await;
            }
            () = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = ctl_stop.send(true);
                controllers.await;
            }
        }
        health.set_running(false);
        health.set_standby(true);
        if *stop.borrow() {
            break;
        }
    }
    health.set_standby(false);
    // Closing the channel makes the manager release the lease, so a standby takes over at
    // once instead of after the lease expires.
    drop(leading);
    match task.await {
        Ok(Ok(_)) => info!("released the lease"),
        Ok(Err(err)) => warn!(error = %err, "could not release the lease"),
        Err(err) => warn!(error = %err, "lease task failed"),
    }
    Ok(())
}
