//! The host side of the container image's smoke test (`.ci/image`): everything the image's
//! binary talks to, served on loopback, and the verdict on what it did.
//!
//!     cargo run --example image_smoke -- DIR HOSTS_NAME DNS_NAME DNS_SERVER
//!
//! DIR holds `server.crt` and `server.key`: a certificate for HOSTS_NAME and DNS_NAME issued
//! by a test CA that `.ci/image` makes for each run. This example
//!
//! - serves the stand-in Kubernetes API over HTTP, a Procore emulator over HTTP, the same
//!   emulator behind TLS with that certificate, and a DNS server on DNS_SERVER:53 that
//!   answers A queries for DNS_NAME with 127.0.0.1 (HOSTS_NAME is for the container's
//!   /etc/hosts);
//! - writes `DIR/kubeconfig`, `DIR/secret.yaml`, `DIR/credential-{http,localhost,hosts,dns}.yaml`
//!   (the same Procore credential at `http://127.0.0.1`, `http://localhost`,
//!   `https://HOSTS_NAME` and `https://DNS_NAME`, for `reconnect-operator check`),
//!   `DIR/smoke.env` (ports and addresses, shell syntax) and last `DIR/ready`;
//! - creates the namespaces `acme` and `reconnect-system` and in `acme` the Secret
//!   `procore-sync` and a ConnectorCredential `procore-sync` whose endpoint is
//!   `https://DNS_NAME:<port>`, then waits for the operator that `.ci/image` runs from the
//!   image (`run`, metrics on `METRICS_ADDR` from smoke.env) to connect it: phase
//!   Connected, the target Secret written, `/healthz` answering 200 (and `/readyz` too with
//!   SMOKE_REQUIRE_READYZ=1).
//!
//! Exits 0 when all of that happened within SMOKE_TIMEOUT seconds (default 120), 1 otherwise.

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use reconnect_apiserver::ApiServer;
use reconnect_emulators::{Account, ProcoreEmulator};
use reconnect_operator::api::{ConnectorCredential, Phase};
use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const NS: &str = "acme";
const CLIENT_ID: &str = "image-smoke-dmsa";
const CLIENT_SECRET: &str = "image-smoke-secret";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, hosts_name, dns_name, dns_server] = args.as_slice() else {
        eprintln!("usage: image_smoke DIR HOSTS_NAME DNS_NAME DNS_SERVER");
        return ExitCode::from(2);
    };
    match run(Path::new(dir), hosts_name, dns_name, dns_server).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("image_smoke: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(dir: &Path, hosts_name: &str, dns_name: &str, dns_server: &str) -> Result<()> {
    let timeout = Duration::from_secs(
        std::env::var("SMOKE_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );

    let api = ApiServer::new();
    api.register_crds_from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))?;
    let served = api.serve().await?;
    std::fs::copy(served.kubeconfig(), dir.join("kubeconfig"))?;

    let procore = ProcoreEmulator::start().await;
    procore.add_account(
        Account::new("4567", "svc-image-smoke@acme.com")
            .with_permissions(["company:1234", "documents:admin"]),
    );
    procore.add_client(CLIENT_ID, CLIENT_SECRET, Some("4567"));
    let procore_addr: SocketAddr = procore.base_url().trim_start_matches("http://").parse()?;

    let tls = TcpListener::bind("127.0.0.1:0").await?;
    let tls_port = tls.local_addr()?.port();
    tokio::spawn(tls_relay(tls, procore_addr, Arc::new(tls_config(dir)?)));

    let dns = UdpSocket::bind((dns_server, 53))
        .await
        .map_err(|e| format!("cannot serve DNS on {dns_server}:53: {e}"))?;
    let dns_answers = Arc::new(AtomicUsize::new(0));
    tokio::spawn(dns_responder(dns, dns_name.to_owned(), dns_answers.clone()));

    // A free port for the operator's metrics, health and readiness endpoints.
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    let http_port = procore_addr.port();
    std::fs::write(dir.join("secret.yaml"), secret_yaml())?;
    for (label, endpoint) in [
        ("http", format!("http://127.0.0.1:{http_port}")),
        ("localhost", format!("http://localhost:{http_port}")),
        ("hosts", format!("https://{hosts_name}:{tls_port}")),
        ("dns", format!("https://{dns_name}:{tls_port}")),
    ] {
        std::fs::write(
            dir.join(format!("credential-{label}.yaml")),
            credential_yaml(&endpoint),
        )?;
    }
    std::fs::write(
        dir.join("smoke.env"),
        format!(
            "KUBE_API={}\nPROCORE_HTTP=http://127.0.0.1:{http_port}\nTLS_PORT={tls_port}\nMETRICS_ADDR={metrics_addr}\n",
            served.url()
        ),
    )?;

    let client = api.client();
    for ns in [NS, "reconnect-system"] {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    let secret: Secret = serde_saphyr::from_str(&secret_yaml())?;
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    let endpoint = format!("https://{dns_name}:{tls_port}");
    let credential: ConnectorCredential = serde_saphyr::from_str(&credential_yaml(&endpoint))?;
    let creds = Api::<ConnectorCredential>::namespaced(client.clone(), NS);
    creds.create(&PostParams::default(), &credential).await?;
    std::fs::write(dir.join("ready"), "")?;
    println!(
        "image_smoke: stand-in API {}, Procore emulator {} (TLS on {tls_port}), DNS {dns_server}:53; \
         waiting up to {}s for ConnectorCredential {NS}/procore-sync ({endpoint}) to connect",
        served.url(),
        procore.base_url(),
        timeout.as_secs()
    );

    // /readyz is required only with SMOKE_REQUIRE_READYZ=1: the operator binary answers 503
    // there for good today (its cache-sync waiter on the controller's store is never woken;
    // see docs/container-image.md), while /healthz and the reconciling work.
    let require_ready = std::env::var("SMOKE_REQUIRE_READYZ").is_ok_and(|v| v == "1");
    let deadline = tokio::time::Instant::now() + timeout;
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    loop {
        let status = creds.get("procore-sync").await?.status.unwrap_or_default();
        let connected = status.phase == Some(Phase::Connected);
        let target = secrets.get_opt("procore-sync-active").await?;
        let healthy = http_status(metrics_addr, "/healthz").await == Some(200);
        let ready = http_status(metrics_addr, "/readyz").await;
        if connected && target.is_some() && healthy && (ready == Some(200) || !require_ready) {
            let account = status.account.map(|a| a.name).unwrap_or_default();
            println!(
                "image_smoke: procore-sync is Connected as {account}; Secret {NS}/procore-sync-active \
                 written; /healthz 200 on {metrics_addr}; DNS answered {} queries for {dns_name}",
                dns_answers.load(Ordering::SeqCst)
            );
            if ready != Some(200) {
                println!(
                    "image_smoke: note: /readyz answers {} (not required; SMOKE_REQUIRE_READYZ=1 requires 200)",
                    ready.map_or("nothing".to_owned(), |s| s.to_string())
                );
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let phase = status.phase.map(|p| p.as_str()).unwrap_or("none");
            let conditions: Vec<String> = status
                .conditions
                .iter()
                .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                .collect();
            return Err(format!(
                "after {}s: phase {phase}, target Secret {}, /healthz {}, /readyz {:?}; conditions: {}",
                timeout.as_secs(),
                if target.is_some() { "written" } else { "missing" },
                if healthy { "200" } else { "not 200" },
                ready,
                conditions.join("; ")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secret_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: procore-sync
  namespace: {NS}
stringData:
  client_id: {CLIENT_ID}
  client_secret: {CLIENT_SECRET}
"
    )
}

fn credential_yaml(endpoint: &str) -> String {
    format!(
        "apiVersion: reconnect.dev/v1alpha1
kind: ConnectorCredential
metadata:
  name: procore-sync
  namespace: {NS}
spec:
  provider: procore
  auth: ClientCredentials
  secretRef:
    name: procore-sync
  endpoint: {endpoint}
  params:
    companyId: \"1234\"
  requiredPermissions:
  - company:1234
  - documents:standard
"
    )
}

/// The status code of `GET path` on `addr`, or None when nothing answers.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let line = String::from_utf8_lossy(&response);
    line.split_whitespace().nth(1)?.parse().ok()
}

fn tls_config(dir: &Path) -> Result<rustls::ServerConfig> {
    let cert_file: PathBuf = dir.join("server.crt");
    let chain = CertificateDer::pem_file_iter(&cert_file)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

/// Terminates TLS and relays the plaintext to `backend` (the HTTP emulator), one task per
/// connection.
async fn tls_relay(listener: TcpListener, backend: SocketAddr, config: Arc<rustls::ServerConfig>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(stream, backend, config).await {
                // The negative check (an image without the test CA) ends here on purpose.
                println!("image_smoke: TLS connection from {peer} ended: {e}");
            }
        });
    }
}

async fn relay(
    client: TcpStream,
    backend: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<()> {
    let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut upstream_rd, mut upstream_wr) = TcpStream::connect(backend).await?.into_split();
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_upstream = vec![0u8; 16 * 1024];
    let mut plain = vec![0u8; 16 * 1024];
    loop {
        while tls.wants_write() {
            let mut out = Vec::new();
            tls.write_tls(&mut out)?;
            client_wr.write_all(&out).await?;
        }
        tokio::select! {
            n = client_rd.read(&mut from_client) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                let mut data = &from_client[..n];
                while !data.is_empty() {
                    tls.read_tls(&mut data)?;
                    if let Err(e) = tls.process_new_packets() {
                        // Send the alert rustls queued before giving up.
                        let mut out = Vec::new();
                        let _ = tls.write_tls(&mut out);
                        let _ = client_wr.write_all(&out).await;
                        return Err(io::Error::other(e));
                    }
                }
                loop {
                    match tls.reader().read(&mut plain) {
                        Ok(0) => return Ok(()),
                        Ok(n) => upstream_wr.write_all(&plain[..n]).await?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            n = upstream_rd.read(&mut from_upstream) => {
                let n = n?;
                if n == 0 {
                    tls.send_close_notify();
                } else {
                    tls.writer().write_all(&from_upstream[..n])?;
                }
                if n == 0 {
                    let mut out = Vec::new();
                    while tls.wants_write() {
                        tls.write_tls(&mut out)?;
                    }
                    client_wr.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
    }
}

/// A DNS server for one name: A queries for `name` get 127.0.0.1, other types of it get an
/// empty answer, other names NXDOMAIN.
async fn dns_responder(socket: UdpSocket, name: String, answered: Arc<AtomicUsize>) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some((reply, answer)) = dns_reply(&buf[..n], &name) {
            if answer {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// The reply to one query and whether it carries an address; None for what is not a
/// single-question query.
fn dns_reply(query: &[u8], name: &str) -> Option<(Vec<u8>, bool)> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    query.get(..question_end)?;
    let known = labels.join(".") == name.to_ascii_lowercase();
    let answer = known && qtype == 1;
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]); // ID
    reply.push(0x84 | (query[2] & 0x01)); // QR, AA, RD as asked
    reply.push(if known { 0 } else { 3 }); // NOERROR or NXDOMAIN
    reply.extend_from_slice(&[0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..question_end]);
    if answer {
        // Name (pointer to the question), A, IN, TTL 5 s, 4 bytes: 127.0.0.1.
        reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 1]);
    }
    Some((reply, answer))
}
