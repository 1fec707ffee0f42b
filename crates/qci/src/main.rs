//! `qci`: run CI jobs on Qubes machines.
//!
//! Invoked as `qrexec-client-vm`, `qvm-run` or `qrexec-client` (the links an
//! emulated machine puts on its domains' PATH), it is that emulated tool.

mod install;
mod local;

use clap::{Parser, Subcommand};
use qci_core::ExitCode;
use qci_qrexec::emulator::{self, Caller, DOM0, Machine};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "qci",
    version,
    about = "CI for projects that must be tested inside Qubes OS",
    after_help = "Exit codes: 0 success, 1 a step failed, 2 bad input, 3 CI error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a CI job on an emulated Qubes machine, exactly as CI would.
    ///
    /// Creates (or reuses) the machine under the state directory, installs
    /// qci's services, policy and binaries into it, and runs the project's
    /// steps (.qci.toml, or make clone, make dev, make test) in its dom0. The
    /// live log goes to stdout; at the end the final state and the log's
    /// path are printed.
    Run {
        /// Run the working tree in DIR.
        #[arg(long, value_name = "DIR")]
        local: PathBuf,
        /// Run a clean checkout of this commit instead of the working tree
        /// as it is (uncommitted changes included).
        #[arg(long, value_name = "REV")]
        commit: Option<String>,
        /// Where the emulated machine lives.
        #[arg(long, value_name = "S", default_value = ".qci")]
        state_dir: PathBuf,
        /// Bound on the whole job (e.g. 90s, 30m, 6h).
        #[arg(long, default_value = "6h", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Make one qrexec call on an emulated machine, as `qrexec-client-vm`
    /// does inside Qubes (calls from dom0 are not policy-checked).
    Qrexec {
        /// The machine directory (STATE_DIR/machine).
        #[arg(long, value_name = "M")]
        machine: PathBuf,
        /// The calling qube.
        #[arg(long, value_name = "VM")]
        from: String,
        /// The target qube, `dom0` or `@adminvm`.
        target: String,
        /// SERVICE or SERVICE+ARG.
        service: String,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    qci_core::pipeline::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if emulator::tools::TOOLS.contains(&name.as_str()) {
        return exit_raw(emulator::tools::main(&name, args.collect()));
    }
    qci_core::diagnostics::init("warn");
    match Cli::parse().command {
        Command::Run {
            local,
            commit,
            state_dir,
            timeout,
        } => {
            let run = local::LocalRun {
                dir: local,
                commit,
                state_dir,
                timeout,
            };
            match run.execute() {
                Ok(code) => code.into(),
                Err(e) => {
                    eprintln!("qci: {e}");
                    e.exit_code().into()
                }
            }
        }
        Command::Qrexec {
            machine,
            from,
            target,
            service,
        } => {
            let result = Machine::open(&machine).and_then(|m| {
                // The caller is a process in a domain: never root.
                m.enter()?;
                let caller = if from == DOM0 {
                    Caller::Dom0 { source: DOM0 }
                } else {
                    Caller::Vm(&from)
                };
                m.call(caller, &target, &service, None)
            });
            match result {
                Ok(outcome) => {
                    if let Some(msg) = outcome.message {
                        eprintln!("{msg}");
                    }
                    exit_raw(outcome.code)
                }
                Err(e) => {
                    eprintln!("qci: {e}");
                    ExitCode::BadInput.into()
                }
            }
        }
    }
}

/// Passes through an exit status that is not ours (a service's, qrexec's).
fn exit_raw(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(255))
}
