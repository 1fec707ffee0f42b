//! `qci-vm`: the dev VM side of qci.
//!
//! - `qci-vm begin JOB` prepares the job's workspace and calls dom0's
//!   `qci.Run+JOB`, passing the live log through. With `--source DIR` or
//!   `--repo URL --commit SHA` it first writes the job file itself, for a
//!   job started by hand.
//! - `qci-vm run [--dir DIR] [-- COMMAND…]` is `begin --source` for a CI
//!   engine's step: a new job id, the checkout (or the current directory),
//!   `.qci.toml`'s steps or the one COMMAND, the log on stdout (grouped by
//!   step under GitHub Actions, a collapsible section per step under GitLab
//!   CI) and the job's exit code.
//! - `qci-vm status [JOB]` is the `qci.Status` service: one status event on
//!   stdin, forwarded to the job's sink.
//! - `qci-vm export [JOB]` is the `qci.Export` service: the job's workspace
//!   as a tar stream on stdout.
//!
//! The services take the job id from their argument (`$1`, or
//! `QREXEC_SERVICE_ARGUMENT`), as qrexec passes it, and answer only dom0.

#![forbid(unsafe_code)]

mod begin;
mod deliver;
mod export;
mod manual;
mod paths;
mod run;
mod settings;
mod sink;

use clap::{Parser, Subcommand};
use paths::Paths;
use qci_core::job_file::JobFile;
use qci_core::{ExitCode, JobId, StatusEvent};
use qci_qrexec::service::ServiceCall;
use std::ffi::OsString;
use std::io::{Read, Write};

#[derive(Parser)]
#[command(
    name = "qci-vm",
    version,
    about = "The dev VM side of qci: starts jobs and serves dom0's qci.Status and qci.Export calls",
    after_help = "Job files live in ~/.qci/jobs/JOB.json, workspaces in ~/.qci/work/JOB, and the\n\
                  status that ended a job in ~/.qci/status/JOB.final.json. begin keeps the\n\
                  workspaces of the last finished jobs (keep_workspaces in ~/.qci/config.toml,\n\
                  3 by default) and removes older ones.\n\
                  Exit codes: 0 success, 1 a step failed, 2 bad input, 3 CI error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare the job's workspace, run it in dom0 and stream its log.
    ///
    /// Without --source or --repo, runs the job described by
    /// ~/.qci/jobs/JOB.json, which the host placed there.
    ///
    /// To start a job by hand, describe it with options instead: begin then
    /// writes ~/.qci/jobs/JOB.json itself (reason "manual", author $USER) and
    /// runs it the same way. A job id is used once: begin refuses one whose
    /// job file or statuses exist already.
    ///
    ///   qci-vm begin JOB --source DIR
    ///   qci-vm begin JOB --repo URL --commit SHA [--ref REF]
    ///       [--github OWNER/REPO --token-file FILE]
    ///
    /// Statuses are appended to ~/.qci/status/JOB.jsonl, or posted to GitHub
    /// with --github.
    #[command(verbatim_doc_comment)]
    Begin {
        /// The job id (1 to 64 of A-Z a-z 0-9 _ . -).
        job: String,
        #[command(flatten)]
        manual: Box<manual::ManualArgs>,
    },
    /// Run the checkout in dom0 from a CI step; exit with the job's code.
    ///
    /// For GitHub Actions on a self-hosted runner in the dev VM, or GitLab
    /// CI's shell executor there:
    ///
    ///   steps:                              script:
    ///     - uses: actions/checkout@v4         - qci-vm run
    ///     - run: qci-vm run
    ///
    /// The checkout is DIR, or the current directory (the checkout in both
    /// engines). Like `begin JOB --source DIR`, it is sent to dom0 over
    /// qci.Export as it is (in a git work tree, ignored files and .git left
    /// out), and dom0 runs its .qci.toml's steps; with `-- COMMAND…`, dom0
    /// runs that command as the one step "command" instead (a generated
    /// .qci.toml, sent in place of the tree's own and checked by dom0 like
    /// any; the checkout is not changed, and the tree's artifacts are not
    /// collected).
    ///
    /// The job id is new each run, made from the engine's ids when there are
    /// some: gh-RUN_ID-RUN_ATTEMPT-JOB-RANDOM (GitHub), gl-CI_JOB_ID-RANDOM
    /// (GitLab), else run-RANDOM. Statuses go to ~/.qci/status/JOB.jsonl.
    ///
    /// dom0's log goes to stdout line by line. With GITHUB_ACTIONS=true each
    /// step's lines are between `::group::STEP` and `::endgroup::`, and
    /// workflow commands are stopped while dom0's lines are shown, so that
    /// nothing the job prints (`::error::`, `::set-output`, …) reaches the
    /// workflow. With GITLAB_CI=true each step is a collapsible section.
    /// Otherwise the lines are as dom0 sends them.
    ///
    /// Exit codes: the job's: 0 success, 1 a step failed, 2 bad input,
    /// 3 CI error.
    #[command(verbatim_doc_comment)]
    Run(Box<run::RunArgs>),
    /// The qci.Status service: forward one status event (JSON on stdin).
    Status {
        /// The job id (qrexec passes it as the service argument).
        job: Option<OsString>,
    },
    /// The qci.Export service: write the job's workspace as a tar stream.
    Export {
        /// The job id (qrexec passes it as the service argument).
        job: Option<OsString>,
    },
}

fn main() -> std::process::ExitCode {
    qci_core::diagnostics::init("warn");
    let cli = Cli::parse();
    let paths = match Paths::from_env() {
        Ok(p) => p,
        Err(e) => return fail(ExitCode::CiError, &e.to_string()).into(),
    };
    let code = match cli.command {
        Command::Begin { job, manual } => match JobId::parse(&job) {
            Ok(job) => start(&job, &manual, &paths),
            Err(e) => fail(ExitCode::BadInput, &e.to_string()),
        },
        Command::Run(args) => run::run(&args, &paths),
        Command::Status { job } => service_call(job).map_or_else(|e| e, |job| status(&job, &paths)),
        Command::Export { job } => service_call(job).map_or_else(|e| e, |job| export(&job, &paths)),
    };
    code.into()
}

/// `begin`, after writing the job file when the job is started by hand.
fn start(job: &JobId, manual: &manual::ManualArgs, paths: &Paths) -> ExitCode {
    if manual.given()
        && let Err(e) = manual::write_job_file(job, manual, paths)
    {
        return fail(e.exit_code(), &e.to_string());
    }
    begin::begin(job, paths)
}

fn fail(code: ExitCode, why: &str) -> ExitCode {
    eprintln!("qci-vm: {why}");
    code
}

/// Validates a service call: the job id, and that dom0 is the caller (policy
/// already keeps other VMs out; this holds if policy is ever loosened).
fn service_call(arg: Option<OsString>) -> Result<JobId, ExitCode> {
    let call = ServiceCall::from_env(arg.as_slice())
        .map_err(|e| fail(ExitCode::BadInput, &e.to_string()))?;
    if let Some(caller) = call.remote_domain.as_deref().filter(|d| *d != "dom0") {
        return Err(fail(
            ExitCode::BadInput,
            &format!("only dom0 may call this service, not {caller}"),
        ));
    }
    JobId::parse(&call.argument).map_err(|e| fail(ExitCode::BadInput, &e.to_string()))
}

fn status(job: &JobId, paths: &Paths) -> ExitCode {
    let job_file = match JobFile::load(&paths.job_file(job)) {
        Ok(j) => j,
        Err(e) => return fail(ExitCode::BadInput, &e.to_string()),
    };
    let mut raw = Vec::new();
    let limit = StatusEvent::MAX_WIRE_BYTES;
    if let Err(e) = std::io::stdin()
        .lock()
        .take(limit + 1)
        .read_to_end(&mut raw)
    {
        return fail(
            ExitCode::CiError,
            &format!("cannot read the status event: {e}"),
        );
    }
    if raw.len() as u64 > limit {
        return fail(
            ExitCode::BadInput,
            &format!("status event is larger than {limit} bytes"),
        );
    }
    let event = match StatusEvent::parse_for(&raw, job) {
        Ok(e) => e,
        Err(e) => return fail(ExitCode::BadInput, &e.to_string()),
    };
    match deliver::deliver(&event, &job_file, paths) {
        Ok(()) => ExitCode::Success,
        Err(e @ deliver::DeliverError::Ended { .. }) => fail(ExitCode::BadInput, &e.to_string()),
        Err(e) => fail(
            ExitCode::CiError,
            &format!("cannot forward the {} status: {e}", event.state),
        ),
    }
}

/// The pipe size asked for on `qci.Export`'s stdout (Linux's default
/// unprivileged maximum).
const PIPE_BYTES: i32 = 1 << 20;

fn export(job: &JobId, paths: &Paths) -> ExitCode {
    let workspace = paths.workspace(job);
    if !workspace.is_dir() {
        return fail(
            ExitCode::BadInput,
            &format!("job {job} has no workspace (was `qci-vm begin {job}` run?)"),
        );
    }
    // Which kind of workspace it is comes from the job file, never from
    // what the workspace holds: a checked-out commit may hold any file.
    let source = match JobFile::load(&paths.job_file(job)) {
        Ok(j) => j.source,
        Err(e) => return fail(ExitCode::BadInput, &e.to_string()),
    };
    let stdout = std::io::stdout().lock();
    // A larger pipe lets this side read ahead while dom0 writes files,
    // instead of the two taking turns 64 KiB at a time. Not a pipe: no matter.
    let _ = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
    let mut out = std::io::BufWriter::with_capacity(64 << 10, stdout);
    // Only `qci-vm run -- COMMAND` writes one, and only for a working tree.
    let generated = paths.generated_pipeline(job);
    let generated = generated.exists().then_some(generated);
    let sent = match (source, generated) {
        (Some(root), generated) => {
            let list = Paths::source_list(&workspace);
            std::fs::read(&list)
                .map_err(|e| export::read_error(&list, e))
                .and_then(|list| {
                    export::export_listed(&root, &list, generated.as_deref(), &mut out)
                })
        }
        (None, None) => export::export(&workspace, &mut out),
        (None, Some(file)) => {
            return fail(
                ExitCode::BadInput,
                &format!(
                    "job {job} is no working tree's, yet {} exists: refusing to guess which pipeline to send",
                    file.display()
                ),
            );
        }
    };
    match sent.and_then(|()| out.flush().map_err(export::ExportError::Finish)) {
        Ok(()) => ExitCode::Success,
        Err(e) => fail(
            ExitCode::CiError,
            &format!("export of job {job} failed: {e}"),
        ),
    }
}
