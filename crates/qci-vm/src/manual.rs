//! `qci-vm begin JOB --source DIR | --repo URL --commit SHA`: a job started
//! by hand inside Qubes. The options describe the job; `begin` writes its job
//! file (as the host would) and then runs it like any other.

use crate::paths::Paths;
use qci_core::job_file::valid_slug;
use qci_core::job_file::{
    CommitSha, JobFile, JobFileError, Reason, Repository, Sink, status_file_rel,
};
use qci_core::{ExitCode, JobId};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The options of `begin` that write the job file. Clap enforces which go
/// together; [`ManualArgs::job_file`] checks the same again.
#[derive(Debug, Clone, clap::Args)]
pub struct ManualArgs {
    /// Write the job file for the working tree in DIR, run as it is
    /// (uncommitted changes included; in a git work tree, ignored files and
    /// .git left out).
    #[arg(long, value_name = "DIR", group = "start", conflicts_with = "repo")]
    pub source: Option<PathBuf>,
    /// Write the job file for a clean checkout of --commit, cloned from URL
    /// (anything `git clone` accepts).
    #[arg(long, value_name = "URL", group = "start", requires = "commit")]
    pub repo: Option<String>,
    /// The commit to check out, as 40 hex digits.
    #[arg(long, value_name = "SHA", requires = "repo", value_parser = CommitSha::parse)]
    pub commit: Option<CommitSha>,
    /// The ref the commit was pushed to, recorded in the job file.
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    pub git_ref: Option<String>,
    /// Post commit statuses straight to GitHub for OWNER/REPO (needs
    /// --repo, --commit and --token-file). Without it statuses are appended
    /// to ~/.qci/status/JOB.jsonl.
    #[arg(
        long,
        value_name = "OWNER/REPO",
        conflicts_with = "source",
        requires_all = ["repo", "token_file"],
        value_parser = parse_slug,
    )]
    pub github: Option<String>,
    /// A file holding the GitHub token (relative to the current directory).
    #[arg(long, value_name = "FILE", requires = "github")]
    pub token_file: Option<PathBuf>,
    /// The GitHub API base [default: https://api.github.com].
    #[arg(long, value_name = "URL", requires = "github")]
    pub api_url: Option<String>,
    /// The link shown with each commit status.
    #[arg(long, value_name = "URL", requires = "github")]
    pub target_url: Option<String>,
    /// The commit status context.
    #[arg(
        long,
        value_name = "CTX",
        requires = "start",
        default_value = "qci/manual"
    )]
    pub context: String,
    /// How long to wait for dom0's runner before giving up (e.g. 90s, 30m, 6h).
    #[arg(
        long,
        value_name = "DURATION",
        requires = "start",
        default_value = "6h",
        value_parser = qci_core::pipeline::parse_duration
    )]
    pub timeout: Duration,
}

/// What clap says of a `--github` value that is no repository slug.
#[derive(Debug, thiserror::Error)]
#[error("must be OWNER/REPO")]
pub struct NotASlug;

fn parse_slug(s: &str) -> Result<String, NotASlug> {
    if valid_slug(s) {
        Ok(s.to_owned())
    } else {
        Err(NotASlug)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("give either --source DIR, or --repo URL with --commit SHA")]
    NothingToRun,
    #[error("--github needs --repo, --commit and --token-file")]
    GithubIncomplete,
    #[error("cannot use {option} {}: {source}", .path.display())]
    Path {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--source {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "statuses of an earlier job with this id are in {}: a job id is used once; pick another",
        .0.display()
    )]
    StatusesExist(PathBuf),
    #[error(transparent)]
    JobFile(#[from] JobFileError),
}

impl ManualError {
    /// Bad input, except when the job file could not be written.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::JobFile(JobFileError::Write { .. }) => ExitCode::CiError,
            _ => ExitCode::BadInput,
        }
    }
}

impl ManualArgs {
    /// Whether the job is started by hand (begin writes the job file).
    pub fn given(&self) -> bool {
        self.source.is_some() || self.repo.is_some()
    }

    /// The job file these options describe, with `author` as its author.
    /// Paths given on the command line are made absolute (relative paths in
    /// a job file would be taken as under `$HOME`).
    pub fn job_file(&self, job: &JobId, author: String) -> Result<JobFile, ManualError> {
        let (url, source, commit) = match (&self.source, &self.repo, &self.commit) {
            (Some(dir), None, None) => {
                let dir = absolute("--source", dir)?;
                if !dir.is_dir() {
                    return Err(ManualError::NotADirectory(dir));
                }
                (dir.to_string_lossy().into_owned(), Some(dir), None)
            }
            (None, Some(url), Some(sha)) => (url.clone(), None, Some(sha.clone())),
            _ => return Err(ManualError::NothingToRun),
        };
        let (slug, sink) = match (&self.github, &self.token_file, &commit) {
            (None, None, _) => (
                None,
                Sink::File {
                    path: status_file_rel(job),
                },
            ),
            (Some(slug), Some(token), Some(_)) if valid_slug(slug) => (
                Some(slug.clone()),
                Sink::github(
                    absolute("--token-file", token)?,
                    self.api_url.clone(),
                    self.target_url.clone(),
                ),
            ),
            _ => return Err(ManualError::GithubIncomplete),
        };
        Ok(JobFile {
            repository: Repository { url, slug },
            commit,
            source,
            git_ref: self.git_ref.clone(),
            reason: Reason::Manual,
            author,
            message: String::new(),
            sink,
            context: self.context.clone(),
            timeout_secs: self.timeout.as_secs(),
        })
    }
}

/// The path made absolute and resolved; it must exist.
fn absolute(option: &'static str, path: &Path) -> Result<PathBuf, ManualError> {
    std::fs::canonicalize(path).map_err(|source| ManualError::Path {
        option,
        path: path.to_owned(),
        source,
    })
}

/// Writes the job file for a job started by hand, refusing a job id that
/// was used before (its job file or its statuses are still there).
pub fn write_job_file(job: &JobId, args: &ManualArgs, paths: &Paths) -> Result<(), ManualError> {
    let author = std::env::var("USER").unwrap_or_default();
    let job_file = args.job_file(job, author)?;
    let path = paths.job_file(job);
    if path.exists() {
        // Before looking at statuses: the job file is the clearer reason.
        return Err(JobFileError::Exists(path).into());
    }
    let statuses = paths.status_file(job);
    if matches!(job_file.sink, Sink::File { .. }) && statuses.exists() {
        return Err(ManualError::StatusesExist(statuses));
    }
    job_file.save(&path)?;
    tracing::info!(job = %job, path = %path.display(), "wrote the job file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;
    use clap::error::ErrorKind;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn parse(args: &[&str]) -> Result<(String, ManualArgs), clap::Error> {
        let argv = ["qci-vm", "begin"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Begin { job, manual } => Ok((job, *manual)),
            _ => unreachable!("parsed begin"),
        }
    }

    fn job_file(args: &[&str]) -> Result<JobFile, ManualError> {
        let (job, manual) = parse(args).expect("valid arguments");
        manual.job_file(&JobId::parse(&job).unwrap(), "alice".into())
    }

    fn refused(args: &[&str]) -> String {
        let err = parse(args).expect_err("refused");
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ArgumentConflict
                    | ErrorKind::MissingRequiredArgument
                    | ErrorKind::ValueValidation
            ),
            "{:?}: {err}",
            err.kind()
        );
        err.to_string()
    }

    #[test]
    fn a_bare_begin_writes_nothing() {
        let (job, manual) = parse(&["j"]).unwrap();
        assert_eq!(job, "j");
        assert!(!manual.given());
    }

    #[test]
    fn source_makes_a_manual_job_of_the_absolute_tree_with_a_file_sink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("proj")).unwrap();
        let relative = dir.path().join("proj/../proj");
        let job = job_file(&["j1", "--source", relative.to_str().unwrap()]).unwrap();
        let canonical = std::fs::canonicalize(dir.path().join("proj")).unwrap();
        assert_eq!(job.source.as_deref(), Some(canonical.as_path()));
        assert_eq!(job.repository.url, canonical.to_string_lossy());
        assert_eq!(job.repository.slug, None);
        assert_eq!(job.commit, None);
        assert_eq!(job.reason, Reason::Manual);
        assert_eq!(job.author, "alice");
        assert_eq!(job.context, "qci/manual");
        assert_eq!(job.timeout_secs, 6 * 60 * 60);
        assert_eq!(
            job.sink,
            Sink::File {
                path: ".qci/status/j1.jsonl".into()
            }
        );
    }

    #[test]
    fn repo_and_commit_make_a_checkout_job_posting_to_github() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let job = job_file(&[
            "j2",
            "--repo",
            "https://github.com/o/r",
            "--commit",
            &SHA.to_uppercase(),
            "--ref",
            "refs/heads/main",
            "--github",
            "o/r",
            "--token-file",
            token.to_str().unwrap(),
            "--target-url",
            "https://ci.example/j2",
            "--context",
            "qci/qubes-4.2",
            "--timeout",
            "90m",
        ])
        .unwrap();
        assert_eq!(job.repository.url, "https://github.com/o/r");
        assert_eq!(job.repository.slug.as_deref(), Some("o/r"));
        assert_eq!(job.commit.unwrap().as_str(), SHA);
        assert_eq!(job.source, None);
        assert_eq!(job.git_ref.as_deref(), Some("refs/heads/main"));
        assert_eq!(job.context, "qci/qubes-4.2");
        assert_eq!(job.timeout_secs, 90 * 60);
        assert_eq!(
            job.sink,
            Sink::github(
                std::fs::canonicalize(&token).unwrap(),
                None,
                Some("https://ci.example/j2".into())
            )
        );
    }

    #[test]
    fn options_that_do_not_go_together_are_refused_with_a_clear_message() {
        let sha = SHA;
        let msg = refused(&["j", "--source", ".", "--repo", "u", "--commit", sha]);
        assert!(msg.contains("cannot be used with"), "{msg}");
        let msg = refused(&["j", "--repo", "u"]);
        assert!(msg.contains("--commit"), "{msg}");
        let msg = refused(&["j", "--repo", "u", "--commit", "abc123"]);
        assert!(msg.contains("40 hex digits"), "{msg}");
        let msg = refused(&["j", "--commit", sha]);
        assert!(msg.contains("--repo"), "{msg}");
        let msg = refused(&["j", "--repo", "u", "--commit", sha, "--github", "o"]);
        assert!(msg.contains("OWNER/REPO"), "{msg}");
        let msg = refused(&["j", "--repo", "u", "--commit", sha, "--github", "o/r"]);
        assert!(msg.contains("--token-file"), "{msg}");
        let msg = refused(&["j", "--source", ".", "--github", "o/r", "--token-file", "t"]);
        assert!(msg.contains("cannot be used with"), "{msg}");
        let msg = refused(&["j", "--context", "c"]);
        assert!(msg.contains("--source") || msg.contains("--repo"), "{msg}");
        let msg = refused(&["j", "--source", ".", "--timeout", "soon"]);
        assert!(msg.contains("--timeout"), "{msg}");
    }

    #[test]
    fn missing_source_and_token_files_are_refused() {
        let err = job_file(&["j", "--source", "/no/such/dir"]).unwrap_err();
        assert!(err.to_string().contains("--source /no/such/dir"), "{err}");
        assert_eq!(err.exit_code(), ExitCode::BadInput);
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = job_file(&["j", "--source", file.path().to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, ManualError::NotADirectory(_)), "{err:?}");
        let args = ["j", "--repo", "u", "--commit", SHA, "--github", "o/r"];
        let err = job_file(&[&args[..], &["--token-file", "/no/such/token"]].concat()).unwrap_err();
        assert!(err.to_string().contains("--token-file"), "{err}");
    }

    #[test]
    fn a_used_job_id_is_refused_and_the_old_job_file_kept() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: home.path().to_owned(),
        };
        let (job, manual) = parse(&["j", "--source", home.path().to_str().unwrap()]).unwrap();
        let job = JobId::parse(&job).unwrap();
        write_job_file(&job, &manual, &paths).unwrap();
        let first = std::fs::read(paths.job_file(&job)).unwrap();
        assert_eq!(
            JobFile::load(&paths.job_file(&job)).unwrap().reason,
            Reason::Manual
        );

        let err = write_job_file(&job, &manual, &paths).unwrap_err();
        assert_eq!(err.exit_code(), ExitCode::BadInput);
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(paths.job_file(&job)).unwrap(), first);

        // Its job file gone, the old job's statuses still say the id was used.
        std::fs::remove_file(paths.job_file(&job)).unwrap();
        std::fs::create_dir_all(paths.status_file(&job).parent().unwrap()).unwrap();
        std::fs::write(paths.status_file(&job), "").unwrap();
        let err = write_job_file(&job, &manual, &paths).unwrap_err();
        assert!(matches!(err, ManualError::StatusesExist(_)), "{err:?}");
        assert!(!paths.job_file(&job).exists());
    }
}
