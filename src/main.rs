//! The reconnect-operator binary: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    }
}
