//! `qci`: run CI jobs on Qubes machines.
//!
//! Invoked as `qrexec-client-vm`, `qvm-run` or `qrexec-client` (the links an
//! emulated machine puts on its domains' PATH), it is that emulated tool.

mod error;
mod gitlab_executor;
mod jobs;
mod local;
mod out;
mod pool;
mod results;
mod serve;
mod socket_activation;

use clap::{Parser, Subcommand};
use error::CliError;
use qci_core::ExitCode;
use qci_emulator::{self as emulator, Caller, DOM0, Machine};
use qci_pool::backend::install;
use std::path::{Path, PathBuf};

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
    /// Run a CI job, on an emulated machine or on a machine of the pool.
    ///
    /// With --local DIR: creates (or reuses) an emulated machine under the
    /// state directory, installs qci's services, policy and binaries into
    /// it, and runs the project's steps (.qci.toml, or make clone, make dev,
    /// make test) in its dom0, exactly as CI would.
    ///
    /// With --machine NAME or --qubes VERSION (and --repo, --commit): leases
    /// that machine, or the first free one of that Qubes version, from the
    /// pool in HOST.toml (waiting in line when all are busy), reverts it to
    /// its clean snapshot, boots it, runs the commit there, copies the log
    /// out, makes sure a final status exists, and powers it off.
    ///
    /// The live log goes to stdout, progress to stderr; at the end the final
    /// state and the log's path are printed, then, for a job that declared
    /// `[artifacts]`, where its files are (and a failed machine's
    /// screenshot) and a summary of its JUnit reports: the counts, then each
    /// failed test by name.
    #[command(
        group(clap::ArgGroup::new("where").required(true).args(["local", "machine", "qubes"])),
        arg_required_else_help = true,
        override_usage = "qci run --local DIR [--commit REV] [--state-dir S | --machine-dir M] [--timeout T]\n       \
                          qci run --machine NAME --repo URL --commit SHA [--ref REF] [--job JOB] [--config HOST.toml] [--timeout T]\n       \
                          qci run --qubes VERSION --repo URL --commit SHA [--ref REF] [--job JOB] [--config HOST.toml] [--timeout T]"
    )]
    Run {
        /// Run the working tree in DIR on an emulated machine.
        #[arg(long, value_name = "DIR")]
        local: Option<PathBuf>,
        /// Run on this machine of the pool.
        #[arg(long, value_name = "NAME")]
        machine: Option<String>,
        /// Run on the first free machine of this Qubes version.
        #[arg(long, value_name = "VERSION")]
        qubes: Option<String>,
        /// The repository to clone in the dev VM (with --machine/--qubes).
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "local",
            required_unless_present = "local"
        )]
        repo: Option<String>,
        /// The commit to run: with --machine/--qubes, 40 hex digits; with
        /// --local, any revision, run as a clean checkout instead of the
        /// working tree as it is (uncommitted changes included). With
        /// --local, DIR must then be the top of a git repository: a
        /// subdirectory is refused, saying which top to pass.
        #[arg(long, value_name = "REV", required_unless_present = "local")]
        commit: Option<String>,
        /// The ref the commit belongs to, for the record.
        #[arg(long = "ref", value_name = "REF", conflicts_with = "local")]
        git_ref: Option<String>,
        /// The job id, with --machine/--qubes (default: run-TIMESTAMP-PID;
        /// --local jobs are always named local-TIMESTAMP-PID).
        #[arg(long, value_name = "JOB", conflicts_with = "local")]
        job: Option<String>,
        /// The host config (its [pool] table lists the machines).
        #[arg(long, value_name = "HOST.toml", default_value = pool::DEFAULT_CONFIG, conflicts_with = "local")]
        config: PathBuf,
        /// Where the emulated machine of --local lives.
        #[arg(long, value_name = "S", default_value = ".qci")]
        state_dir: PathBuf,
        /// Run on the emulated machine in M as it is, installing nothing
        /// into it: qci must be there already (put there by Salt, say; see
        /// `qci bare-machine`). Its dev VM is sd-dev.
        #[arg(
            long,
            value_name = "M",
            conflicts_with = "state_dir",
            requires = "local"
        )]
        machine_dir: Option<PathBuf>,
        /// Bound on the whole job (e.g. 90s, 30m, 6h); default 6h, or the
        /// pool's job_timeout.
        #[arg(long, value_parser = qci_core::pipeline::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Show the pool: each machine's power state, lease, job, snapshot and
    /// Qubes version.
    Pool {
        /// The host config (its [pool] table lists the machines).
        #[arg(long, value_name = "HOST.toml", default_value = pool::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Refresh the machines' clean snapshots.
    ///
    /// Per machine (leased like a job): boot the clean snapshot, run the
    /// update commands and qci's Salt states ([pool.nightly] in HOST.toml;
    /// the defaults are Qubes's own update commands, then qci's states in
    /// dom0 and in the dev VM), shut down cleanly and
    /// snapshot as qci-YYYY-MM-DD, keeping the newest N. A failed command or
    /// an unclean stop takes no snapshot: the old one stays in use.
    Nightly {
        /// The host config (its [pool] table lists the machines).
        #[arg(long, value_name = "HOST.toml", default_value = pool::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only these machines (repeat the option); default all.
        #[arg(long, value_name = "NAME")]
        machine: Vec<String>,
    },
    /// Create an emulated Qubes machine with nothing of qci in it.
    ///
    /// dom0 and the VMs, with the emulated qrexec tools on their PATH and
    /// qubes.VMShell in each VM: Qubes itself, ready for qci to be installed
    /// into it, for example by Salt with pillar qci:root set to M/dom0 or
    /// M/sd-dev (see salt/). Then `qci run --local DIR --machine-dir M`
    /// runs jobs on it. An existing machine gets the VMs it lacks.
    BareMachine {
        /// The machine directory.
        #[arg(value_name = "M")]
        machine: PathBuf,
        /// A VM besides dom0 (repeat for more).
        #[arg(long = "vm", value_name = "NAME", default_value = "sd-dev")]
        vms: Vec<String>,
    },
    /// Serve GitHub webhooks: queue jobs, run them on the pool, report to
    /// GitHub (commit statuses, or check runs as a GitHub App), publish logs
    /// and the monitor page. As a GitHub App it also gives GitHub Actions
    /// jobs of [server.actions] labels a machine and a runner each.
    ///
    /// Reads the [server] and [pool] tables of HOST.toml. Stops cleanly on
    /// SIGTERM or SIGINT; after a crash it reconciles at start (jobs that
    /// never started are queued again, running ones end as error, waiting
    /// Actions jobs are queued again) and asks GitHub to redeliver the
    /// webhooks it missed while down.
    ///
    /// Under systemd socket activation (LISTEN_PID and LISTEN_FDS=1, as a
    /// .socket unit sets them) it serves the socket it is given instead of
    /// `listen`: webhooks that arrive while it restarts then wait for it
    /// rather than being refused.
    Serve {
        /// The host config: its [server] table (listen address, public URL,
        /// secrets, repositories) and its [pool] table (the machines).
        #[arg(long, value_name = "HOST.toml")]
        config: PathBuf,
    },
    /// List, cancel or retry the jobs of a running `qci serve`, or show a
    /// job's tests.
    Jobs {
        /// The host config of the running `qci serve` (its listen address
        /// and, for cancel and retry, its operator token).
        #[arg(long, value_name = "HOST.toml")]
        config: PathBuf,
        /// The server's address (default: http://LISTEN from the config).
        #[arg(long)]
        url: Option<String>,
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// GitLab Runner's custom executor: the config, prepare, run and
    /// cleanup stages of a job on a machine of the pool.
    ///
    /// Set as config_exec, prepare_exec, run_exec and cleanup_exec in
    /// gitlab-runner's config.toml (see contrib/gitlab-runner/config.toml).
    /// The job variable QCI_QUBES picks the Qubes version. Failures exit
    /// with gitlab-runner's BUILD_FAILURE_EXIT_CODE (the script failed, or
    /// the job asked for a version no machine runs) or
    /// SYSTEM_FAILURE_EXIT_CODE (machine, hypervisor, timeout, cancel).
    GitlabExecutor {
        /// The host config (its [pool] table lists the machines).
        #[arg(long, value_name = "HOST.toml", default_value = pool::DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        stage: gitlab_executor::Stage,
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
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// The one place a failure is told, as `qci: WHY`, and becomes the exit
/// code.
fn fail(e: CliError) -> std::process::ExitCode {
    if let CliError::Output {
        earlier: Some(first),
        ..
    } = &e
    {
        eprintln!("qci: {first}");
    }
    eprintln!("qci: {e}");
    e.exit_code().into()
}

/// Sends the subcommand to its function, then checks that its output got
/// out whole (out.rs).
fn run(command: Command) -> Result<std::process::ExitCode, CliError> {
    let result = match command {
        Command::Run {
            local: Some(dir),
            commit,
            state_dir,
            machine_dir,
            timeout,
            ..
        } => local::LocalRun {
            dir,
            commit,
            state_dir,
            machine_dir,
            timeout: timeout.unwrap_or(std::time::Duration::from_secs(6 * 3600)),
        }
        .execute()
        .map(|outcome| outcome.exit.into())
        .map_err(CliError::from),
        Command::Run {
            local: None,
            machine,
            qubes,
            repo,
            commit,
            git_ref,
            job,
            config,
            timeout,
            ..
        } => {
            let target = match (machine, qubes) {
                (Some(m), _) => qci_pool::Target::Machine(m),
                (None, Some(q)) => qci_pool::Target::Qubes(q),
                (None, None) => unreachable!("clap requires one of them"),
            };
            pool::run(pool::RunArgs {
                target,
                repo: repo.unwrap_or_default(),
                commit: commit.unwrap_or_default(),
                git_ref,
                job,
                config,
                timeout,
            })
            .map(Into::into)
            .map_err(CliError::from)
        }
        Command::Pool { config } => pool::show(&config).map(Into::into).map_err(CliError::from),
        Command::Nightly { config, machine } => pool::nightly(&config, &machine)
            .map(Into::into)
            .map_err(CliError::from),
        Command::BareMachine { machine, vms } => bare_machine(&machine, &vms),
        Command::Serve { config } => serve::serve(&config)
            .map(Into::into)
            .map_err(CliError::from),
        Command::Jobs {
            config,
            url,
            command,
        } => jobs::run(&config, url.as_deref(), &command)
            .map(Into::into)
            .map_err(CliError::from),
        Command::GitlabExecutor { config, stage } => Ok(gitlab_executor::main(&config, &stage)),
        Command::Qrexec {
            machine,
            from,
            target,
            service,
        } => qrexec(&machine, &from, &target, &service),
    };
    match out::finish() {
        Ok(()) => result,
        Err(source) => Err(CliError::Output {
            source,
            earlier: result.err().map(Box::new),
        }),
    }
}

/// `qci bare-machine`: prints the machine's directory.
fn bare_machine(machine: &Path, vms: &[String]) -> Result<std::process::ExitCode, CliError> {
    let vms: Vec<&str> = vms.iter().map(String::as_str).collect();
    let m = install::bare_machine(machine, &vms, &install::default_bin_dir())?;
    out::outln!("{}", m.root().display());
    Ok(ExitCode::Success.into())
}

/// `qci qrexec`: the call's own exit status, passed through.
fn qrexec(
    machine: &Path,
    from: &str,
    target: &str,
    service: &str,
) -> Result<std::process::ExitCode, CliError> {
    let m = Machine::open(machine)?;
    // The caller is a process in a domain: never root.
    m.enter()?;
    let caller = if from == DOM0 {
        Caller::Dom0 { source: DOM0 }
    } else {
        Caller::Vm(from)
    };
    let outcome = m.call(caller, target, service, None)?;
    if let Some(msg) = outcome.message {
        eprintln!("{msg}");
    }
    Ok(exit_raw(outcome.code))
}

/// Passes through an exit status that is not ours (a service's, qrexec's).
fn exit_raw(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(255))
}
