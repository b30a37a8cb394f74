//! The reconnect-operator binary: parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
