//! The reconnect-operator binary: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use reconnect_operator::telemetry::{self, LogFormat};

/// Keeps SaaS integrations connected while their credentials change.
#[derive(Parser, Debug)]
#[command(name = "reconnect-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (the content of crds/).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Run the operator against the cluster in the ambient kubeconfig or in-cluster config.
    Run(RunArgs),
    /// Verify a credential against its provider without a cluster (CI preflight). Exit codes:
    /// 0 connected, 2 invalid input, 3 connection lost, 4 permission mismatch, 5 provider
    /// unreachable, 6 misconfigured.
    Check {
        /// The ConnectorCredential manifest (YAML).
        credential: std::path::PathBuf,
        /// The Secret manifest (YAML) that spec.secretRef names.
        #[arg(long, value_name = "FILE")]
        secret: std::path::PathBuf,
        /// Also require this permission (repeatable), e.g. those the active account holds.
        #[arg(long = "require", value_name = "PERMISSION")]
        require: Vec<String>,
        /// Per-call timeout (Go duration), instead of spec.validation.timeout.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Write the Secret with the new refresh token here when the provider rotates it
        /// (required for procore, salesforce and oauth2 refresh tokens).
        #[arg(long, value_name = "FILE")]
        rotated_secret: Option<std::path::PathBuf>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Watch only these namespaces (comma-separated); all namespaces when empty.
    #[arg(long, value_delimiter = ',', env = "RECONNECT_WATCH_NAMESPACES")]
    watch_namespaces: Vec<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Reconcile only while holding a Lease, so several replicas can run.
    #[arg(long)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "reconnect-operator")]
    lease_name: String,
    /// Namespace of the Lease; the kubeconfig's or the pod's namespace by default.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity; the pod name by default.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the leader-election Lease stays valid without renewal (Go duration).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// How long credential swaps are gathered into one rollout of an Integration's
    /// restart targets (Go duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    restart_debounce: std::time::Duration,
    /// Reconciles each controller runs at once (0: unbounded); bounds the provider
    /// connections and API requests in flight when many credentials are due together.
    #[arg(long, default_value_t = reconnect_operator::controller::DEFAULT_CONCURRENCY)]
    max_concurrent_reconciles: u16,
    /// Restart-target rollouts in flight at once across every Integration (0: unbounded),
    /// so that a mass rotation does not restart every workload at once.
    #[arg(long, default_value_t = reconnect_operator::controller::integration::DEFAULT_MAX_CONCURRENT_ROLLOUTS)]
    max_concurrent_rollouts: usize,
    /// How long a rollout holds its slot at most when its workload never reports it done
    /// (Go duration).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    rollout_hold: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    reconnect_operator::api::duration::parse(s).map_err(|e| e.to_string())
}

fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format, "info,kube=warn,kube_lease_manager=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let identity = args.identity.unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("reconnect-operator-{}", std::process::id()))
        });
        let options = reconnect_operator::operator::Options {
            namespaces: args
                .watch_namespaces
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            metrics_addr: args.metrics_addr,
            leader_election: args.leader_election,
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            identity,
            lease_duration: args.lease_duration,
            restart_debounce: args.restart_debounce,
            max_concurrent_reconciles: args.max_concurrent_reconciles,
            max_concurrent_rollouts: args.max_concurrent_rollouts,
            rollout_hold: args.rollout_hold,
        };
        reconnect_operator::operator::run(client, options, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "operator stopped");
            ExitCode::FAILURE
        }
    }
}

/// Listens for SIGINT and SIGTERM from the call on (a signal during start-up is not left to
/// the default action, which kills the process); the future resolves on the first.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            credential,
            secret,
            require,
            timeout,
            output,
            rotated_secret,
        } => {
            let timeout = match timeout
                .as_deref()
                .map(reconnect_operator::api::duration::parse)
            {
                Some(Err(err)) => {
                    eprintln!("error: --timeout: {err}");
                    return ExitCode::from(reconnect_operator::check::EXIT_INVALID_INPUT);
                }
                Some(Ok(t)) => Some(t),
                None => None,
            };
            let options = reconnect_operator::check::CheckOptions {
                credential,
                secret,
                require,
                timeout,
                rotated_secret,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread tokio runtime");
            let providers = reconnect_operator::providers::Providers::new();
            let report = runtime.block_on(reconnect_operator::check::check(&options, &providers));
            match output {
                Output::Text => print!("{}", report.to_text()),
                Output::Json => println!("{}", report.to_json()),
            }
            ExitCode::from(report.exit_code)
        }
        Command::Crd { dir: None } => match reconnect_operator::crd::all_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: cannot render the CRDs: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Crd { dir: Some(dir) } => match reconnect_operator::crd::write_dir(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: cannot write the CRDs to {}: {err}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(args),
    }
}
