//! Liveness and readiness, and the HTTP endpoints that report them with the metrics:
//! /metrics, /healthz and /readyz.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::controller::CacheSync;
use crate::metrics::Metrics;

/// Liveness and readiness as the HTTP endpoints report them.
#[derive(Debug, Default)]
pub struct Health {
    /// The controllers are running (this replica leads, or leader election is off).
    controllers_running: AtomicBool,
    /// This replica waits as a standby for the Lease.
    standby: AtomicBool,
    /// The running controllers' caches.
    caches: Arc<CacheSync>,
}

impl Health {
    /// Health for controllers whose caches `caches` tracks.
    pub fn new(caches: Arc<CacheSync>) -> Self {
        Self {
            caches,
            ..Self::default()
        }
    }

    /// Ready: the controllers run and have synced their caches, or this replica is a
    /// healthy standby. A standby must be ready, or a two-replica rollout would never finish.
    pub fn ready(&self) -> bool {
        (self.controllers_running.load(Ordering::SeqCst) && self.caches.all_synced())
            || self.standby.load(Ordering::SeqCst)
    }
}

/// Serves /metrics, /healthz and /readyz on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(req.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
        });
    }
}

fn respond(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if health.ready() => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "controllers not running\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

impl Health {
    /// The controllers run (or stopped).
    pub(crate) fn set_running(&self, running: bool) {
        self.controllers_running.store(running, Ordering::SeqCst);
    }

    /// This replica waits for the Lease (or stopped waiting).
    pub(crate) fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }
}
