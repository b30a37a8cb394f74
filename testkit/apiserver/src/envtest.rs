//! A real control plane for the tests, by the envtest convention: `KUBEBUILDER_ASSETS` names
//! a folder holding `etcd` and `kube-apiserver` (and optionally `kube-controller-manager`).
//!
//! Started once per test process, lazily, by the first test that asks for a cluster, and
//! shared by every later test (each builds its own client on its own runtime). Per run it
//! generates a CA, a serving certificate, a service-account signing key and bearer tokens,
//! picks free loopback ports, and starts:
//!
//! - etcd (`--unsafe-no-fsync`: the data is thrown away anyway);
//! - kube-apiserver with token authentication (the admin token's user is in
//!   `system:masters`), `--authorization-mode RBAC`, TokenRequest (service-account issuer
//!   and signing key), default admission plugins;
//! - kube-controller-manager when present, with its own kubeconfig and token, running the
//!   garbage collector and the namespace, Deployment, ReplicaSet, StatefulSet, DaemonSet and
//!   ServiceAccount controllers.
//!
//! Then it waits until `/readyz` answers 200, applies the CRDs from `crds/`, and (with a
//! controller manager) waits until the ServiceAccount controller has created `default` in
//! the `default` namespace: proof that the controllers are connected.
//! Files live in the process's scratch directory and processes die with the test process
//! (see `scratch.rs`).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::scratch::{self, ChildId};

/// Environment variable naming the folder with the control-plane binaries (envtest's name).
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// How long each component may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);

/// A running control plane.
#[derive(Debug)]
pub(crate) struct ControlPlane {
    /// Admin kubeconfig (user `admin` in `system:masters`).
    pub kubeconfig: PathBuf,
    /// How long starting it took, until everything was ready.
    pub startup: Duration,
}

static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The assets folder when `KUBEBUILDER_ASSETS` is set.
///
/// # Panics
/// When it is set but does not hold `kube-apiserver` and `etcd`: a misconfigured run must
/// not quietly fall back to the stand-in.
pub(crate) fn assets() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty())?);
    for bin in ["kube-apiserver", "etcd"] {
        assert!(
            dir.join(bin).is_file(),
            "{ASSETS_ENV}={} holds no {bin} (run `bash .ci/k8s-assets` to unpack the control plane)",
            dir.display()
        );
    }
    Some(dir)
}

/// The process's control plane, started on first use. Blocks; call it off the async threads.
pub(crate) fn shared(assets: &Path) -> Result<&'static ControlPlane, String> {
    PLANE
        .get_or_init(|| {
            let assets = assets.to_path_buf();
            // A thread of its own: the readiness checks run a tokio runtime, which cannot
            // start inside a test's runtime.
            std::thread::Builder::new()
                .name("reconnect-envtest-start".into())
                .spawn(move || start(&assets))
                .map_err(|e| format!("starting the control plane thread: {e}"))?
                .join()
                .map_err(|_| "starting the control plane panicked".to_string())?
        })
        .as_ref()
        .map_err(|e| format!("the control plane from {ASSETS_ENV} did not start: {e}"))
}

/// The process's control plane, if it has been started successfully.
pub(crate) fn started() -> Option<&'static ControlPlane> {
    PLANE.get().and_then(|r| r.as_ref().ok())
}

/// A start attempt's failure; port collisions (another run took a port between probing and
/// binding) are retried with new ports.
struct Failure {
    message: String,
    retry: bool,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            message: e.to_string(),
            retry: false,
        }
    }
}

fn start(assets: &Path) -> Result<ControlPlane, String> {
    let began = Instant::now();
    let mut last = String::new();
    for attempt in 1..=3 {
        match start_once(assets, attempt) {
            Ok(kubeconfig) => {
                return Ok(ControlPlane {
                    kubeconfig,
                    startup: began.elapsed(),
                });
            }
            Err(Failure {
                message,
                retry: true,
            }) => last = message,
            Err(Failure { message, .. }) => return Err(message),
        }
    }
    Err(last)
}

/// A loopback port nobody listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Per-run key material.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    service_account_key_pem: String,
    service_account_public_pem: String,
}

fn generate_pki() -> Result<Pki, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "reconnect-envtest-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "10.0.0.1".to_string(),
    ])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert_pem = server.signed_by(&server_key, &issuer)?.pem();
    let service_account_key = KeyPair::generate()?;
    Ok(Pki {
        ca_pem,
        server_cert_pem,
        server_key_pem: server_key.serialize_pem(),
        service_account_key_pem: service_account_key.serialize_pem(),
        service_account_public_pem: service_account_key.public_key_pem(),
    })
}

/// A kubeconfig (context `reconnect-envtest`) for `server` with a bearer token.
pub(crate) fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: reconnect-envtest
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: reconnect-envtest
  context:
    cluster: reconnect-envtest
    user: {user}
    namespace: default
current-context: reconnect-envtest
"
    )
}

/// The processes of one attempt; killed when the attempt fails.
struct Processes {
    running: Vec<(&'static str, ChildId, PathBuf)>,
    keep: bool,
}

impl Processes {
    fn spawn(
        &mut self,
        name: &'static str,
        program: PathBuf,
        args: &[String],
        log: PathBuf,
    ) -> Result<(), Failure> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut command = Command::new(&program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let id =
            scratch::spawn(command).map_err(|e| format!("starting {}: {e}", program.display()))?;
        self.running.push((name, id, log));
        Ok(())
    }

    /// Fails when a process has exited: with its log's tail, retryable on a port collision.
    fn check(&self) -> Result<(), Failure> {
        for (name, id, log) in &self.running {
            if let Some(status) = scratch::exited(*id) {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Failure {
                    retry: text.contains("address already in use"),
                    message: format!(
                        "{name} exited ({status}); last lines of {}:\n{}",
                        log.display(),
                        tail.join("\n")
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        if !self.keep {
            for (_, id, _) in &self.running {
                scratch::kill(*id);
            }
        }
    }
}

/// Polls `ready` until it holds, failing when a process exits or after `READY_TIMEOUT`.
async fn wait_until<F, Fut>(what: &str, processes: &Processes, mut ready: F) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ready().await {
            return Ok(());
        }
        processes.check()?;
        if Instant::now() > deadline {
            return Err(format!("{what} not ready within {READY_TIMEOUT:?}").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// etcd's `/health` over plain HTTP.
fn etcd_healthy(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.contains("\"health\":\"true\""))
    };
    attempt().unwrap_or(false)
}

fn start_once(assets: &Path, attempt: u32) -> Result<PathBuf, Failure> {
    let dir = scratch::dir()?.join(format!("envtest-{attempt}"));
    let result = (|| {
        std::fs::create_dir_all(dir.join("etcd"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(start_in(assets, &dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn start_in(assets: &Path, dir: &Path) -> Result<PathBuf, Failure> {
    let file = |name: &str| dir.join(name);
    let write = |name: &str, text: &str| -> Result<String, Failure> {
        std::fs::write(file(name), text)?;
        Ok(file(name).to_string_lossy().into_owned())
    };
    let pki = generate_pki()?;
    let ca = write("ca.crt", &pki.ca_pem)?;
    let server_cert = write("apiserver.crt", &pki.server_cert_pem)?;
    let server_key = write("apiserver.key", &pki.server_key_pem)?;
    let sa_key = write("service-account.key", &pki.service_account_key_pem)?;
    let sa_pub = write("service-account.pub", &pki.service_account_public_pem)?;
    let admin_token = random_hex(24)?;
    let kcm_token = random_hex(24)?;
    let tokens = write(
        "tokens.csv",
        &format!(
            "{admin_token},admin,reconnect-admin,system:masters\n{kcm_token},system:kube-controller-manager,reconnect-kcm,system:masters\n"
        ),
    )?;
    let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let server = format!("https://127.0.0.1:{api_port}");
    let kcm = assets.join("kube-controller-manager");
    let kcm = kcm.is_file().then_some(kcm);

    let mut processes = Processes {
        running: Vec::new(),
        keep: false,
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    processes.spawn(
        "etcd",
        assets.join("etcd"),
        &args(&[
            "--name",
            "reconnect-envtest",
            "--data-dir",
            &file("etcd").to_string_lossy(),
            "--listen-client-urls",
            &etcd_url,
            "--advertise-client-urls",
            &etcd_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("reconnect-envtest={peer_url}"),
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]),
        file("etcd.log"),
    )?;
    wait_until("etcd", &processes, || async { etcd_healthy(etcd_port) }).await?;

    let mut apiserver_args = args(&[
        "--etcd-servers",
        &etcd_url,
        "--secure-port",
        &api_port.to_string(),
        "--bind-address",
        "127.0.0.1",
        "--advertise-address",
        "127.0.0.1",
        "--tls-cert-file",
        &server_cert,
        "--tls-private-key-file",
        &server_key,
        "--client-ca-file",
        &ca,
        "--token-auth-file",
        &tokens,
        "--service-account-key-file",
        &sa_pub,
        "--service-account-signing-key-file",
        &sa_key,
        "--service-account-issuer",
        "https://kubernetes.default.svc",
        "--authorization-mode",
        "RBAC",
        "--service-cluster-ip-range",
        "10.0.0.0/24",
        "--allow-privileged",
    ]);
    if kcm.is_none() {
        // Without the ServiceAccount controller no `default` ServiceAccount appears, and the
        // admission plugin would refuse every Pod.
        apiserver_args.extend(args(&["--disable-admission-plugins", "ServiceAccount"]));
    }
    processes.spawn(
        "kube-apiserver",
        assets.join("kube-apiserver"),
        &apiserver_args,
        file("kube-apiserver.log"),
    )?;
    let kubeconfig = file("admin.kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_yaml(&server, &pki.ca_pem, "admin", &admin_token),
    )?;
    let client = {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &Default::default(),
        )
        .await?;
        kube::Client::try_from(config)?
    };
    wait_until("kube-apiserver", &processes, || {
        let client = client.clone();
        async move {
            let readyz = http::Request::get("/readyz").body(Vec::new());
            match readyz {
                Ok(request) => client.request_text(request).await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await?;

    if let Some(kcm) = kcm {
        let kcm_kubeconfig = write(
            "kube-controller-manager.kubeconfig",
            &kubeconfig_yaml(
                &server,
                &pki.ca_pem,
                "system:kube-controller-manager",
                &kcm_token,
            ),
        )?;
        processes.spawn(
            "kube-controller-manager",
            kcm,
            &args(&[
                "--kubeconfig",
                &kcm_kubeconfig,
                "--leader-elect=false",
                // No HTTPS endpoint: nothing scrapes it, and it would need a port.
                "--secure-port",
                "0",
                "--controllers",
                "garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,serviceaccount-controller",
                "--service-cluster-ip-range",
                "10.0.0.0/24",
            ]),
            file("kube-controller-manager.log"),
        )?;
    }
    crate::harness::install_crds(&client).await?;
    if processes.running.len() == 3 {
        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client.clone(), "default");
        wait_until("kube-controller-manager", &processes, || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten().is_some() }
        })
        .await?;
    }
    processes.check()?;
    processes.keep = true;
    Ok(kubeconfig)
}
