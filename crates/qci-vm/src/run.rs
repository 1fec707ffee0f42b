//! `qci-vm run [--dir DIR] [-- COMMAND…]`: a job from a CI engine's step
//! (GitHub Actions on a self-hosted runner in the dev VM, GitLab's shell
//! executor there). It is `begin JOB --source DIR` with the job id made up,
//! and the log marked for the engine:
//!
//! - the job id is new each time and, where the engine gives its own ids
//!   (GitHub: `GITHUB_RUN_ID`, `GITHUB_RUN_ATTEMPT`, `GITHUB_JOB`; GitLab:
//!   `CI_JOB_ID`), made from them, so a job in dom0's log leads back to the
//!   engine's run; a random suffix keeps a matrix's jobs (which share
//!   `GITHUB_JOB`) and retries apart;
//! - the job file is written by `manual`, and the job run by `begin`: the
//!   same export (`qci.Export`), the same `qci.Run` and the same hardened
//!   unpacking in dom0 as any job;
//! - with `-- COMMAND…`, the job's one step is that command. It reaches dom0
//!   the only way steps ever do: as the exported tree's `.qci.toml`, which
//!   dom0 parses and checks like any other. `run` writes that generated
//!   pipeline beside the job file (`~/.qci/jobs/JOB.pipeline.toml`), and
//!   `qci.Export` sends it in place of the tree's own, so the checkout is
//!   neither changed nor copied, and dom0 gains no new input;
//! - the log goes to stdout line by line as dom0 sends it. Under GitHub
//!   Actions (`GITHUB_ACTIONS=true`) each step's lines are put between
//!   `::group::STEP` and `::endgroup::`, and every line from dom0 is shown
//!   with workflow commands stopped (`::stop-commands::TOKEN` … `::TOKEN::`,
//!   with a random token the job never sees), so that nothing the job
//!   prints, `::error::` or `::set-output` included, can act on the
//!   workflow. Under GitLab CI (`GITLAB_CI=true`) each step is a
//!   collapsible section (`section_start:UNIX:STEP` … `section_end`),
//!   which only changes how the log is shown. Elsewhere (a terminal) the
//!   lines pass as they are;
//! - its exit code is the job's: 0 success, 1 a step failed, 2 bad input,
//!   3 CI error.

use crate::begin;
use crate::manual::{self, ManualArgs, ManualError};
use crate::paths::Paths;
use qci_core::pipeline::{MAX_FILE_BYTES, Pipeline, PipelineError, parse_duration};
use qci_core::{ExitCode, JobId};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

/// The name of the one step `-- COMMAND…` makes.
pub const COMMAND_STEP: &str = "command";
/// How long, once `qci.Run` has ended, the last of its log may take to
/// reach stdout before the output is closed.
const LOG_GRACE: Duration = Duration::from_secs(2);

/// The options of `qci-vm run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The checkout to run [default: the current directory, which is the
    /// checkout in a GitHub Actions or GitLab CI step].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The commit status context recorded with the job's statuses.
    #[arg(long, value_name = "CTX", default_value = "qci/run")]
    pub context: String,
    /// How long the job may take (e.g. 90s, 30m, 6h); with a COMMAND, also
    /// that step's timeout.
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The command dom0 runs as the job's one step, instead of .qci.toml's
    /// steps. One word is taken as a shell command line as it is (like a
    /// .qci.toml command); several are quoted, each staying one word.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot find the current directory: {0}")]
    CurrentDir(std::io::Error),
    #[error("cannot use --dir {}: {source}", .path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--dir {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("cannot read random bytes: {0}")]
    Random(std::io::Error),
    #[error("cannot make a job id from {0:?}: {1}")]
    JobId(String, qci_core::job_id::JobIdError),
    #[error("the command is empty: give one after --, or none to run .qci.toml's steps")]
    EmptyCommand,
    #[error("the command makes no valid step: {0}")]
    Command(PipelineError),
    #[error("the command is too long: its pipeline would be over {MAX_FILE_BYTES} bytes")]
    CommandTooLong,
    #[error("cannot write the generated pipeline {}: {source}", .path.display())]
    WritePipeline {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Manual(#[from] ManualError),
}

impl RunError {
    /// Bad input when the caller's options or command are wrong; a CI error
    /// when this VM cannot do its part.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Command(_)
            | Self::EmptyCommand
            | Self::CommandTooLong
            | Self::Dir { .. }
            | Self::NotADirectory(_) => ExitCode::BadInput,
            Self::Manual(e) => e.exit_code(),
            Self::CurrentDir(_)
            | Self::Random(_)
            | Self::JobId(..)
            | Self::WritePipeline { .. } => ExitCode::CiError,
        }
    }
}

/// Runs the job and returns its exit code; what went wrong before dom0 was
/// called is said on stderr.
pub fn run(args: &RunArgs, paths: &Paths) -> ExitCode {
    let set = |name| std::env::var(name).is_ok_and(|v| v == "true");
    // Made before anything is written: a job is not left unrun for want of it.
    let engine = if set("GITHUB_ACTIONS") {
        match random_hex(16) {
            Ok(token) => Engine::Github { token },
            Err(e) => return fail(&e),
        }
    } else if set("GITLAB_CI") {
        Engine::Gitlab
    } else {
        Engine::Plain
    };
    match prepare(args, paths, |name| std::env::var(name).ok()) {
        Ok(job) => {
            eprintln!("qci-vm: job {job}");
            stream(&job, paths, engine, std::io::stdout())
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &RunError) -> ExitCode {
    eprintln!("qci-vm: {e}");
    e.exit_code()
}

/// Writes the job's files (the generated pipeline first, so that a job
/// file never names a job whose pipeline is missing) and returns its id.
fn prepare(
    args: &RunArgs,
    paths: &Paths,
    env: impl Fn(&str) -> Option<String>,
) -> Result<JobId, RunError> {
    let dir = match &args.dir {
        // Checked here, so that errors name --dir (`manual` would say --source).
        Some(d) => std::fs::canonicalize(d).map_err(|source| RunError::Dir {
            path: d.clone(),
            source,
        })?,
        None => std::env::current_dir().map_err(RunError::CurrentDir)?,
    };
    if !dir.is_dir() {
        return Err(RunError::NotADirectory(dir));
    }
    let job = job_id(&env, &random_hex(4)?)?;
    let generated = if args.command.is_empty() {
        None
    } else {
        let text = generated_pipeline(&args.command, args.timeout)?;
        let path = paths.generated_pipeline(&job);
        write_new(&path, text.as_bytes()).map_err(|source| RunError::WritePipeline {
            path: path.clone(),
            source,
        })?;
        Some(path)
    };
    let manual = ManualArgs {
        source: Some(dir),
        repo: None,
        commit: None,
        git_ref: None,
        github: None,
        token_file: None,
        api_url: None,
        target_url: None,
        context: args.context.clone(),
        timeout: args.timeout,
    };
    if let Err(e) = manual::write_job_file(&job, &manual, paths) {
        // No job will send it: it goes too.
        if let Some(path) = generated
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the generated pipeline");
        }
        return Err(e.into());
    }
    Ok(job)
}

/// Creates `path` (and its directory) with `bytes`; an existing file is
/// an error, never overwritten.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(bytes)
}

/// A new job id: `gh-RUN-ATTEMPT-JOB-RAND` under GitHub Actions,
/// `gl-JOB-RAND` under GitLab CI, `run-RAND` otherwise; characters outside
/// the job id grammar become `-`, and the engine's part is shortened so the
/// whole stays within [`JobId::MAX_LEN`] with the random part kept.
fn job_id(env: impl Fn(&str) -> Option<String>, random: &str) -> Result<JobId, RunError> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let engine = if let Some(run) = get("GITHUB_RUN_ID") {
        let attempt = get("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
        let mut id = format!("gh-{run}-{attempt}");
        if let Some(job) = get("GITHUB_JOB") {
            id = format!("{id}-{job}");
        }
        id
    } else if let Some(job) = get("CI_JOB_ID") {
        format!("gl-{job}")
    } else {
        "run".to_owned()
    };
    let mut engine: String = engine
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    engine.truncate(JobId::MAX_LEN.saturating_sub(random.len() + 1));
    let id = format!("{engine}-{random}");
    JobId::parse(&id).map_err(|e| RunError::JobId(id, e))
}

/// `n` random bytes from the kernel, in hex.
fn random_hex(n: usize) -> Result<String, RunError> {
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(RunError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `.qci.toml` whose one step is `command`, checked as dom0 will check
/// it, so that a command dom0 would refuse is refused here first.
fn generated_pipeline(command: &[String], timeout: Duration) -> Result<String, RunError> {
    #[derive(serde::Serialize)]
    struct Generated<'a> {
        steps: [GeneratedStep<'a>; 1],
    }
    #[derive(serde::Serialize)]
    struct GeneratedStep<'a> {
        name: &'a str,
        command: &'a str,
        timeout: String,
    }
    let line = command_line(command);
    // dom0 would run a blank step and pass: surely not what was meant.
    if line.trim().is_empty() {
        return Err(RunError::EmptyCommand);
    }
    let text = toml::to_string(&Generated {
        steps: [GeneratedStep {
            name: COMMAND_STEP,
            command: &line,
            timeout: format!("{}s", timeout.as_secs()),
        }],
    })
    .map_err(|e| RunError::Command(PipelineError::Invalid(e.to_string())))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(RunError::CommandTooLong);
    }
    Pipeline::parse(&text).map_err(RunError::Command)?;
    Ok(text)
}

/// One word: a shell command line as it is. Several: each quoted for the
/// shell where it needs it, so `run -- grep 'a b' f` greps for `a b`.
fn command_line(words: &[String]) -> String {
    match words {
        [line] => line.clone(),
        words => words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The CI engine whose log `qci-vm run` writes to: how steps are marked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Engine {
    /// A terminal: the log as it is.
    Plain,
    /// GitHub Actions: groups, and workflow commands stopped with `token`,
    /// a random one the job never sees.
    Github { token: String },
    /// GitLab CI: collapsible sections.
    Gitlab,
}

/// Runs the job through `begin`, with its log marked for `engine`, and
/// closes the output once the log has ended (or [`LOG_GRACE`] after
/// `qci.Run` did).
fn stream(
    job: &JobId,
    paths: &Paths,
    engine: Engine,
    out: impl Write + Send + 'static,
) -> ExitCode {
    let marked = Arc::new(Mutex::new(Marked::new(out, engine)));
    let (ended, log_ended) = mpsc::channel::<()>();
    let feed = Feed {
        marked: Arc::clone(&marked),
        _ended: ended,
    };
    let code = begin::begin_to(job, paths, feed);
    // The feed is dropped when the log ends; a log that is still open is
    // held by something dom0 left behind, and is not waited for.
    let _ = log_ended.recv_timeout(LOG_GRACE);
    marked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .finish();
    code
}

/// The writer `begin` relays dom0's log to; dropping it says the log ended.
struct Feed<W: Write> {
    marked: Arc<Mutex<Marked<W>>>,
    _ended: mpsc::Sender<()>,
}

impl<W: Write> Write for Feed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.marked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.marked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .out
            .flush()
    }
}

/// dom0's log, line by line, with the engine's markers around steps. It
/// keeps no unended line between writes: `begin`'s relay, its one writer,
/// writes whole lines only (the last given its `\n`), so a line never
/// spans two.
struct Marked<W: Write> {
    out: W,
    engine: Engine,
    /// Whether workflow commands are stopped now (GitHub Actions).
    stopped: bool,
    /// The step whose group or section is open.
    grouped: Option<String>,
    /// Once finished, lines that still come are dropped: commands are no
    /// longer stopped, so they could act on the workflow.
    finished: bool,
}

/// What a log line says of steps.
#[derive(Debug, PartialEq, Eq)]
enum Marker<'a> {
    Start(&'a str),
    End,
}

impl<W: Write> Marked<W> {
    fn new(out: W, engine: Engine) -> Self {
        Self {
            out,
            engine,
            stopped: false,
            grouped: None,
            finished: false,
        }
    }

    fn push(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.finished {
            tracing::warn!(bytes = buf.len(), "log output after the job ended: dropped");
            return Ok(());
        }
        if self.engine == Engine::Plain {
            return self.out.write_all(buf);
        }
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if line.ends_with(b"\n") {
                self.line(line)?;
            } else {
                // Ended here all the same, so that no marker joins it.
                self.line(&[line, b"\n"].concat())?;
            }
        }
        Ok(())
    }

    /// One whole line, its newline included (GitHub or GitLab).
    fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(line);
        match marker(text.trim_end_matches('\n')) {
            Some(Marker::Start(name)) => {
                let name = name.to_owned();
                self.close_group()?;
                self.resume()?;
                match self.engine {
                    Engine::Gitlab => write!(
                        self.out,
                        "\x1b[0Ksection_start:{}:{name}\r\x1b[0K",
                        unix_now()
                    )?,
                    _ => writeln!(self.out, "::group::{name}")?,
                }
                self.grouped = Some(name);
                self.stop()?;
                self.out.write_all(line)
            }
            Some(Marker::End) => {
                self.stop()?;
                self.out.write_all(line)?;
                self.close_group()
            }
            None => {
                self.stop()?;
                self.out.write_all(line)
            }
        }
    }

    fn stop(&mut self) -> std::io::Result<()> {
        if let Engine::Github { token } = &self.engine
            && !self.stopped
        {
            writeln!(self.out, "::stop-commands::{token}")?;
            self.stopped = true;
        }
        Ok(())
    }

    fn resume(&mut self) -> std::io::Result<()> {
        if let Engine::Github { token } = &self.engine
            && self.stopped
        {
            writeln!(self.out, "::{token}::")?;
            self.stopped = false;
        }
        Ok(())
    }

    fn close_group(&mut self) -> std::io::Result<()> {
        let Some(name) = self.grouped.take() else {
            return Ok(());
        };
        self.resume()?;
        match self.engine {
            Engine::Gitlab => write!(
                self.out,
                "\x1b[0Ksection_end:{}:{name}\r\x1b[0K",
                unix_now()
            ),
            _ => writeln!(self.out, "::endgroup::"),
        }
    }

    /// Ends the output: the open group, commands resumed.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        let result = (|| {
            self.close_group()?;
            self.resume()?;
            self.out.flush()
        })();
        self.finished = true;
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot finish the log on stdout");
        }
    }
}

/// Seconds since the epoch, as GitLab's section markers carry them.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `line` (`TIMESTAMP [qci] step …`, see docs/architecture.md "The
/// job log") starts or ends a step. The stop notices (`timed out after`,
/// a bare `canceled`) are neither: the end line follows them.
fn marker(line: &str) -> Option<Marker<'_>> {
    let (_stamp, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix("[qci] step ")?;
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(rest.len());
    let (name, after) = rest.split_at(len);
    if name.is_empty() {
        return None;
    }
    if after.starts_with(": ") {
        return Some(Marker::Start(name));
    }
    let ended = [
        " passed in ",
        " failed in ",
        " timed out in ",
        " canceled in ",
    ];
    ended
        .iter()
        .any(|e| after.starts_with(e))
        .then_some(Marker::End)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn job_ids_come_from_the_engines_ids_and_keep_within_the_grammar() {
        let gh = env(&[
            ("GITHUB_RUN_ID", "123456"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "build on/qubes"),
        ]);
        assert_eq!(
            job_id(gh, "ab12cd34").unwrap().as_str(),
            "gh-123456-2-build-on-qubes-ab12cd34"
        );
        let gl = env(&[("CI_JOB_ID", "987")]);
        assert_eq!(job_id(gl, "ab12cd34").unwrap().as_str(), "gl-987-ab12cd34");
        assert_eq!(
            job_id(env(&[]), "ab12cd34").unwrap().as_str(),
            "run-ab12cd34"
        );
        let long = "x".repeat(200);
        let id = job_id(
            env(&[("GITHUB_RUN_ID", "1"), ("GITHUB_JOB", &long)]),
            "ab12cd34",
        )
        .unwrap();
        assert_eq!(id.as_str().len(), JobId::MAX_LEN);
        assert!(id.as_str().ends_with("x-ab12cd34"), "{id}");
    }

    #[test]
    fn commands_make_one_checked_step() {
        let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(command_line(&words(&["make test"])), "make test");
        assert_eq!(
            command_line(&words(&["grep", "a b", "it's", "f.txt"])),
            r"grep 'a b' 'it'\''s' f.txt"
        );
        let text =
            generated_pipeline(&words(&["echo \"hi\"\nls"]), Duration::from_secs(90)).unwrap();
        let pipeline = Pipeline::parse(&text).unwrap();
        assert_eq!(pipeline.steps.len(), 1);
        assert_eq!(pipeline.steps[0].name, COMMAND_STEP);
        assert_eq!(pipeline.steps[0].command, "echo \"hi\"\nls");
        assert!(matches!(
            generated_pipeline(&words(&[" "]), Duration::from_secs(1)),
            Err(RunError::EmptyCommand)
        ));
        let huge = vec!["x".repeat(MAX_FILE_BYTES as usize)];
        assert!(matches!(
            generated_pipeline(&huge, Duration::from_secs(1)),
            Err(RunError::CommandTooLong)
        ));
    }

    #[test]
    fn prepare_writes_the_job_file_and_the_generated_pipeline_or_nothing() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: home.path().to_owned(),
        };
        let checkout = tempfile::tempdir().unwrap();
        let mut args = RunArgs {
            dir: Some(checkout.path().to_owned()),
            context: "qci/run".into(),
            timeout: Duration::from_secs(60),
            command: vec!["make".into(), "test".into()],
        };
        let job = prepare(&args, &paths, env(&[("CI_JOB_ID", "77")])).unwrap();
        assert!(job.as_str().starts_with("gl-77-"), "{job}");
        let job_file = qci_core::job_file::JobFile::load(&paths.job_file(&job)).unwrap();
        let canonical = std::fs::canonicalize(checkout.path()).unwrap();
        assert_eq!(job_file.source.as_deref(), Some(canonical.as_path()));
        assert_eq!(job_file.context, "qci/run");
        assert_eq!(job_file.timeout_secs, 60);
        let text = std::fs::read_to_string(paths.generated_pipeline(&job)).unwrap();
        let steps = Pipeline::parse(&text).unwrap().steps;
        assert_eq!(steps[0].command, "make test");
        assert_eq!(steps[0].timeout, Duration::from_secs(60));

        // No command: no generated pipeline.
        args.command.clear();
        let job = prepare(&args, &paths, env(&[])).unwrap();
        assert!(!paths.generated_pipeline(&job).exists());

        // A bad --dir: refused by its name, nothing written.
        let before = std::fs::read_dir(home.path().join(".qci/jobs"))
            .unwrap()
            .count();
        args.dir = Some(checkout.path().join("missing"));
        args.command = vec!["true".into()];
        let err = prepare(&args, &paths, env(&[])).unwrap_err();
        assert!(err.to_string().starts_with("cannot use --dir"), "{err}");
        assert_eq!(err.exit_code(), ExitCode::BadInput);
        let after = std::fs::read_dir(home.path().join(".qci/jobs"))
            .unwrap()
            .count();
        assert_eq!(before, after);
    }

    #[test]
    fn markers_are_dom0s_step_lines_only() {
        let at = "2026-11-22T10:15:00.123Z";
        let m = |s: &str| marker(&format!("{at} {s}")).map(|m| format!("{m:?}"));
        assert_eq!(
            m("[qci] step unit: make test").as_deref(),
            Some("Start(\"unit\")")
        );
        for end in [
            "passed in 1.2s",
            "failed in 1.2s (exit 2)",
            "timed out in 3s",
            "canceled in 1s",
        ] {
            assert_eq!(
                m(&format!("[qci] step unit {end}")).as_deref(),
                Some("End"),
                "{end}"
            );
        }
        assert_eq!(m("[qci] step unit timed out after 2s"), None);
        assert_eq!(m("[qci] step unit canceled"), None);
        assert_eq!(m("[unit] step unit: x"), None);
        assert_eq!(m("[qci] job started"), None);
    }

    fn marked(engine: Engine, chunks: &[&str]) -> String {
        let mut m = Marked::new(Vec::new(), engine);
        for c in chunks {
            m.push(c.as_bytes()).unwrap();
        }
        m.finish();
        m.push(b"late ::error::x\n").unwrap();
        String::from_utf8(m.out).unwrap()
    }

    #[test]
    fn github_output_groups_steps_and_keeps_commands_stopped_around_all_dom0_says() {
        let at = "2026-11-22T10:15:00.123Z";
        let log = format!(
            "{at} [qci] job j on dom0\n{at} [qci] step a: echo\n{at} [a] ::error::x\n\
             {at} [qci] step a passed in 1s\n{at} [qci] step b: b\n{at} [b] partial\n"
        );
        // Split between lines, as begin's relay writes them (its tests keep
        // it to that).
        let (one, two) = log.split_at(log.find(&format!("{at} [qci] step a passed")).unwrap());
        let token = "T0K".to_owned();
        let out = marked(Engine::Github { token }, &[one, two]);
        let expected = format!(
            "::stop-commands::T0K\n{at} [qci] job j on dom0\n::T0K::\n::group::a\n\
             ::stop-commands::T0K\n{at} [qci] step a: echo\n{at} [a] ::error::x\n\
             {at} [qci] step a passed in 1s\n::T0K::\n::endgroup::\n::group::b\n\
             ::stop-commands::T0K\n{at} [qci] step b: b\n{at} [b] partial\n::T0K::\n::endgroup::\n"
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn plain_output_is_the_log_as_it_is() {
        let log = "t [qci] step a: echo\nt [a] ::error::x\nt [qci] step a passed in 1s\n";
        assert_eq!(marked(Engine::Plain, &[log]), log);
    }

    #[test]
    fn gitlab_output_makes_each_step_a_collapsible_section() {
        let log = "t [qci] job j\nt [qci] step a: echo\nt [a] x\nt [qci] step a passed in 1s\n\
                   t [qci] step b: b\nt [b] y";
        let out = marked(Engine::Gitlab, &[log]);
        // The time in each marker is now's: masked to compare the rest.
        let masked: String = out
            .split("section_")
            .map(|part| match part.split_once(':') {
                Some((kind, rest)) => {
                    let (_, rest) = rest.split_once(':').unwrap();
                    format!("{kind}:T:{rest}")
                }
                None => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("section_");
        assert_eq!(
            masked,
            "t [qci] job j\n\x1b[0Ksection_start:T:a\r\x1b[0Kt [qci] step a: echo\nt [a] x\n\
             t [qci] step a passed in 1s\n\x1b[0Ksection_end:T:a\r\x1b[0K\
             \x1b[0Ksection_start:T:b\r\x1b[0Kt [qci] step b: b\nt [b] y\n\
             \x1b[0Ksection_end:T:b\r\x1b[0K"
        );
    }
}
