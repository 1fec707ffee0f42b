//! `qci run --machine|--qubes`, `qci pool` and `qci nightly`: the host's
//! commands over the machines of HOST.toml (the pool's library does the
//! work; this module reads arguments, prints, and picks exit codes).

use crate::out::{self, outln};
use qci_core::job_file::{
    CommitSha, JobFile, JobFileError, Reason, Repository, Sink, status_file_rel,
};
use qci_core::job_id::JobIdError;
use qci_core::{ExitCode, JobId};
use qci_pool::{Phase, Pool, PoolConfig, PoolError, SinkStatus, Target};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where `--config` points when not given.
pub const DEFAULT_CONFIG: &str = "/etc/qci/host.toml";

/// Why a host command failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Config(#[from] qci_pool::config::ConfigError),
    #[error("--commit: {0}")]
    Commit(#[source] JobFileError),
    #[error(transparent)]
    Repo(#[from] BadRepoUrl),
    #[error("--job: {0}")]
    Job(#[source] JobIdError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("job {job} did not run: {source}")]
    NotRun { job: JobId, source: PoolError },
}

impl HostError {
    /// The pool says whose fault its own errors are; the rest is input.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Pool(e) | Self::NotRun { source: e, .. } => e.exit_code(),
            Self::Config(_) | Self::Commit(_) | Self::Repo(_) | Self::Job(_) => ExitCode::BadInput,
        }
    }
}

pub(crate) fn load(config: &Path) -> Result<PoolConfig, HostError> {
    Ok(qci_pool::load_host_file(config)?.pool)
}

pub(crate) fn sink_status(pool: &Pool) -> SinkStatus {
    SinkStatus {
        logs_dir: pool.config().state_dir.join("logs"),
    }
}

/// Cleans up after host processes that died, and says what it did.
pub(crate) fn reconcile(pool: &Pool) -> Result<(), HostError> {
    let done = pool.reconcile(&sink_status(pool))?;
    for r in done {
        match r.result {
            Ok(()) => eprintln!(
                "qci: reconciled job {} on {}: error ({})",
                r.job, r.machine, r.why
            ),
            Err(e) => eprintln!(
                "qci: cannot clean up machine {} after job {}: {e}",
                r.machine, r.job
            ),
        }
    }
    Ok(())
}

pub struct RunArgs {
    pub target: Target,
    pub repo: String,
    pub commit: String,
    pub git_ref: Option<String>,
    pub job: Option<String>,
    pub config: PathBuf,
    pub timeout: Option<Duration>,
}

/// A `--repo` that git could take for something else than a repository.
#[derive(Debug, thiserror::Error)]
#[error("--repo {url:?}: {why}")]
pub struct BadRepoUrl {
    url: String,
    why: &'static str,
}

/// Git URLs qci accepts: a URL with a scheme git knows, `user@host:path`,
/// or an absolute path. Nothing that could pass for an option.
pub fn check_repo_url(url: &str) -> Result<(), BadRepoUrl> {
    let bad = |why: &'static str| {
        Err(BadRepoUrl {
            url: url.to_owned(),
            why,
        })
    };
    if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("not a repository URL (empty, or with spaces or control characters)");
    }
    if url.starts_with('-') {
        return bad("a URL cannot start with `-`");
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" | "file" if !rest.is_empty() => Ok(()),
            "https" | "http" | "ssh" | "git" | "file" => bad("nothing after the scheme"),
            _ => bad("use https://, http://, ssh://, git:// or file://"),
        };
    }
    if url.starts_with('/') {
        return Ok(());
    }
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !path.is_empty() && !host.contains('/') => Ok(()),
        _ => bad("not a URL, an scp-like `user@host:path`, or an absolute path"),
    }
}

/// Set by SIGINT / SIGTERM: the job is canceled, the machine freed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT, SIGTERM or SIGHUP came (after [`cancel_on_signals`]),
/// read at once rather than through the flag's polling thread.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

#[expect(unsafe_code, reason = "see the SAFETY comment at each unsafe block")]
pub(crate) fn cancel_on_signals() -> Arc<AtomicBool> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    std::thread::spawn(move || {
        while !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        flag.store(true, Ordering::Relaxed);
    });
    cancel
}

/// Progress on stderr (at most one "waiting" line every few seconds), the
/// live log on stdout. The GitLab executor's prepare shares it safely:
/// `lease_booted` only boots, so no log reaches its stdout.
#[derive(Default)]
pub(crate) struct Terminal {
    last_wait: std::sync::Mutex<Option<Instant>>,
}

impl qci_pool::JobEvents for Terminal {
    fn phase(&self, job: &JobId, phase: &Phase) {
        if matches!(phase, Phase::WaitingForDom0 { .. }) {
            let mut last = self.last_wait.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                return;
            }
            *last = Some(Instant::now());
        }
        eprintln!("qci: job {job}: {phase}");
    }

    fn log(&self, _job: &JobId, chunk: &[u8]) {
        out::write(chunk);
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode, HostError> {
    // Everything about the input is checked before any machine is touched.
    let config = load(&args.config)?;
    let commit = CommitSha::parse(&args.commit).map_err(HostError::Commit)?;
    check_repo_url(&args.repo)?;
    let job = match &args.job {
        Some(j) => JobId::parse(j).map_err(HostError::Job)?,
        None => JobId::generate("run"),
    };
    let qubes = match &args.target {
        Target::Qubes(q) => q.clone(),
        Target::Machine(m) => config
            .machine(m)
            .map(|c| c.qubes.clone())
            .unwrap_or_default(),
    };
    let timeout = args.timeout.unwrap_or(config.job_timeout);
    let pool = Pool::open(config)?;
    pool.check_target(&args.target)?;
    reconcile(&pool)?;

    let job_file = JobFile {
        repository: Repository {
            url: args.repo.clone(),
            slug: None,
        },
        commit: Some(commit),
        source: None,
        git_ref: args.git_ref.clone(),
        reason: Reason::Manual,
        author: std::env::var("USER").unwrap_or_default(),
        message: String::new(),
        sink: Sink::File {
            path: status_file_rel(&job),
        },
        context: format!("qci/qubes-{qubes}"),
        timeout_secs: timeout.as_secs(),
    };
    let request = qci_pool::JobRequest {
        job: job.clone(),
        target: args.target,
        job_file,
        timeout: Some(timeout),
        cancel: cancel_on_signals(),
    };
    eprintln!("qci: job {job}: {} at {}", args.repo, args.commit);
    let terminal = Terminal::default();
    let outcome = pool
        .run_job(&request, &terminal, &sink_status(&pool))
        .map_err(|source| HostError::NotRun {
            job: job.clone(),
            source,
        })?;
    outln!(
        "qci: job {job}: {} ({}) on {}",
        outcome.state,
        out::remote(&outcome.description),
        outcome.machine
    );
    outln!("qci: log: {}", outcome.log.display());
    if let Some(a) = &outcome.artifacts {
        crate::results::print(a);
    }
    Ok(outcome.exit)
}

/// `qci pool`: one line per machine.
pub fn show(config: &Path) -> Result<ExitCode, HostError> {
    let pool = Pool::open(load(config)?)?;
    let report = pool.report()?;
    let now = qci_pool::lease::now();
    outln!(
        "{:<16} {:<6} {:<8} {:<8} {:<44} {:<16} LAST JOB",
        "MACHINE",
        "QUBES",
        "BACKEND",
        "POWER",
        "LEASE",
        "SNAPSHOT"
    );
    let mut notes = Vec::new();
    for m in report {
        let power = match &m.power {
            Ok(p) => p.to_string(),
            Err(_) => "unknown".into(),
        };
        let lease = match m.occupancy(now) {
            qci_pool::Occupancy::Stale { job, pid, host } => {
                notes.push(format!(
                    "{}: the lease of job {job} is stale: its holder (pid {pid}) is gone. The next \
                     `qci run`, `qci nightly` or `qci serve` start with this config (host {host}) \
                     powers the machine off, reverts it, ends the job as error and frees it.",
                    m.name
                ));
                format!("{job} (stale, pid {pid} gone)")
            }
            qci_pool::Occupancy::Busy { job, pid, for_secs } => {
                format!("{job} ({for_secs}s, pid {pid})")
            }
            qci_pool::Occupancy::Foreign { job, host } => format!("{job} (host {host})"),
            qci_pool::Occupancy::Free => "free".into(),
        };
        let last = m
            .last_run
            .map(|(job, state, _)| format!("{job} {state}"))
            .unwrap_or_else(|| "-".into());
        outln!(
            "{:<16} {:<6} {:<8} {:<8} {:<44} {:<16} {}",
            m.name,
            m.qubes,
            m.backend,
            power,
            out::remote(&lease),
            out::remote(m.snapshot.as_deref().unwrap_or("(none)")),
            out::remote(&last),
        );
        if let Err(e) = m.power {
            outln!("  {}: {}", m.name, out::remote(&e.to_string()));
        }
    }
    for note in notes {
        outln!("{}", out::remote(&note));
    }
    Ok(ExitCode::Success)
}

/// `qci nightly`: 0 when every machine got its snapshot, 3 otherwise.
pub fn nightly(config: &Path, machines: &[String]) -> Result<ExitCode, HostError> {
    let pool = Pool::open(load(config)?)?;
    for name in machines {
        pool.check_target(&Target::Machine(name.clone()))?;
    }
    reconcile(&pool)?;
    let terminal = Terminal::default();
    let outcomes = pool.nightly(machines, &terminal)?;
    let mut code = ExitCode::Success;
    for o in outcomes {
        match o.result {
            Ok(snapshot) => outln!(
                "qci: nightly {}: snapshot {}",
                o.machine,
                out::remote(&snapshot)
            ),
            Err(why) => {
                code = ExitCode::CiError;
                outln!(
                    "qci: nightly {}: no snapshot: {}",
                    o.machine,
                    out::remote(&why.to_string())
                );
            }
        }
        outln!("qci: log: {}", o.log.display());
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_urls_git_accepts_pass_and_the_rest_is_refused() {
        for ok in [
            "https://github.com/freedomofpress/securedrop-workstation",
            "git@github.com:freedomofpress/securedrop-workstation.git",
            "file:///srv/git/project",
            "/srv/git/project",
        ] {
            assert!(check_repo_url(ok).is_ok(), "{ok}");
        }
        let spaces = "not a repository URL (empty, or with spaces or control characters)";
        for (bad, why) in [
            ("", spaces),
            ("--upload-pack=evil", "a URL cannot start with `-`"),
            (
                "ftp://host/x",
                "use https://, http://, ssh://, git:// or file://",
            ),
            ("https://", "nothing after the scheme"),
            (
                "relative/path",
                "not a URL, an scp-like `user@host:path`, or an absolute path",
            ),
            ("https://host/a b", spaces),
        ] {
            match check_repo_url(bad) {
                Ok(()) => panic!("accepted {bad:?}"),
                Err(e) => assert_eq!((e.url.as_str(), e.why), (bad, why)),
            }
        }
    }
}
