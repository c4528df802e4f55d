//! `millrace-jepsen check HISTORY.jsonl [--idempotent]`: checks a recorded history and prints
//! the report as JSON; exits 1 when it finds an anomaly.

use clap::{Parser, Subcommand};
use millrace_jepsen::{checker, history};

#[derive(Parser)]
#[command(
    name = "millrace-jepsen",
    about = "Fault injection and history checking for Millrace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a history file (JSON lines) and print the report.
    Check {
        history: std::path::PathBuf,
        /// The run used the idempotent producer: any duplicate is an anomaly.
        #[arg(long)]
        idempotent: bool,
    },
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Check {
            history,
            idempotent,
        } => {
            let text = std::fs::read_to_string(&history)?;
            let events = history::parse(&text).map_err(anyhow::Error::msg)?;
            let report = checker::check(&events, checker::Options { idempotent });
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.valid {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            })
        }
    }
}
