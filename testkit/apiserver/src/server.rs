//! Serving the stand-in over plain HTTP on loopback, with a kubeconfig file pointing at it,
//! for the operator binary and kubectl (token auth is accepted and ignored).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt as _;

use crate::ApiServer;

/// A stand-in listening on loopback. Dropping it stops the listener and every connection
/// and removes the kubeconfig file.
#[derive(Debug)]
pub struct ServedApiServer {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    task: JoinHandle<()>,
}

impl ServedApiServer {
    /// The listening address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file (context `reconnect-standin`, namespace `default`) for this server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

impl Drop for ServedApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: reconnect-standin
  cluster:
    server: {url}
users:
- name: reconnect-standin
  user:
    token: reconnect-standin
contexts:
- name: reconnect-standin
  context:
    cluster: reconnect-standin
    user: reconnect-standin
    namespace: default
current-context: reconnect-standin
"
    )
}

pub(crate) async fn serve(api: ApiServer) -> std::io::Result<ServedApiServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // In the process's scratch directory, so that it goes even when the process is killed.
    let kubeconfig = crate::scratch::dir()
        .map_err(std::io::Error::other)?
        .join(format!("served-{}.kubeconfig", addr.port()));
    std::fs::write(&kubeconfig, kubeconfig_yaml(&format!("http://{addr}")))?;
    let task = tokio::spawn(async move {
        // Connections live in this set, so aborting the accept task closes them too.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let api = api.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| api.clone().oneshot(req));
                // A client hanging up mid-response is not an error worth reporting.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(ServedApiServer {
        addr,
        kubeconfig,
        task,
    })
}
