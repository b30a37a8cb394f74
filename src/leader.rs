//! Leader election on a coordination.k8s.io Lease, so two replicas can run: one reconciles,
//! the other waits. Built on kube-lease-manager (server-side apply on the Lease, so two
//! replicas can never both hold it).
//!
//! A replica that loses the Lease stops its controllers at once: no new reconcile starts,
//! and the ones in flight finish (a reconcile that already spent a refresh token must get to
//! persist the new one).

use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controller::{Context, FIELD_MANAGER};
use crate::operator::{Health, Options, run_controllers};

/// Waits for the Lease, runs the controllers while holding it, and releases it on shutdown.
pub(crate) async fn lead(
    client: Client,
    options: &Options,
    ctx: Arc<Context>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let namespace = options
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    // The holder renews a third of the duration before expiry (at least a second).
    let duration = options.lease_duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, &options.lease_name)
        .with_namespace(&namespace)
        .with_identity(&options.identity)
        .with_duration(duration)
        .with_grace(grace)
        .with_field_manager(format!("{FIELD_MANAGER}-lease"))
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %options.lease_name, %namespace, identity = %options.identity, "waiting for the lease");
    health.set_standby(true);
    loop {
        // (The watch guards are dropped inside each branch's future: they are not Send.)
        tokio::select! {
            acquired = async { leading.wait_for(|l| *l).await.is_ok() } => if !acquired { break },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
        info!("acquired the lease; starting controllers");
        health.set_standby(false);
        health.set_running(true);
        let (ctl_stop, ctl_stop_rx) = watch::channel(false);
        let controllers = run_controllers(ctx.clone(), &options.namespaces, ctl_stop_rx);
        tokio::pin!(controllers);
        tokio::select! {
            () = &mut controllers => {}
            () = async { let _ = leading.wait_for(|l| !*l).await; } => {
                warn!("lost the lease; stopping controllers");
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
