//! `qci-vm begin JOB`: prepare the job's workspace and hand the job to dom0.
//! (A job started by hand has had its job file written by `manual` first.)
//!
//! The workspace is what `qci.Export` later sends to dom0:
//! - with `source` in the job file, the list of that working tree's files,
//!   which `qci.Export` then sends from where they are (uncommitted changes
//!   included), with no copy made first. In a git work tree the list is what
//!   git would see: tracked and untracked files, minus ignored ones and the
//!   local state directory `.qci/`, without `.git` itself; it is fixed when
//!   `begin` runs. A file that changes while it is being sent stops the
//!   export (see `export`), so what runs is always a version the tree had.
//! - otherwise a clone of the repository checked out at the commit.

use crate::deliver::{self, DeliverError};
use crate::paths::Paths;
use crate::settings::Settings;
use crate::sink;
use nix::fcntl::{Flock, FlockArg};
use qci_core::job_file::{JobFile, JobFileError, RUN_CLOSING, RunRequest};
use qci_core::log::{Line, LineSplitter, SecretMask};
use qci_core::process::wait_or_kill;
use qci_core::tree::remove_tree;
use qci_core::{ExitCode, JobId, State, StatusEvent};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on each git command while preparing the workspace.
const GIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Top-level names never sent from a working tree.
const SKIPPED: [&str; 2] = [".git", ".qci"];
/// How long the end of dom0's output may lag behind its exit, when `begin`
/// needs what dom0 said (a refusal) to explain a job dom0 did not end.
const RELAY_GRACE: Duration = Duration::from_secs(2);

/// Runs the job, and makes sure it ends with a final status: whenever
/// `qci.Run` returns (any exit code, a signal, a timeout) and no final
/// state has reached the sink, `begin` posts `error` saying why. See
/// [`deliver`] for where final states are recorded.
pub fn begin(job: &JobId, paths: &Paths) -> ExitCode {
    begin_to(job, paths, std::io::stdout())
}

/// [`begin`], with dom0's live log passed to `out` instead of stdout, as
/// `qci-vm run` needs to mark its steps. `out` is dropped when the log
/// ends, which may be after this returns (see [`relay`]'s thread).
pub fn begin_to(job: &JobId, paths: &Paths, out: impl Write + Send + 'static) -> ExitCode {
    let path = paths.job_file(job);
    let job_file = match JobFile::load(&path) {
        Ok(j) => j,
        Err(JobFileError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => {
            eprintln!(
                "qci-vm: no job file {}; to start the job by hand, run \
                 `qci-vm begin {job} --source DIR` or `qci-vm begin {job} --repo URL --commit SHA`",
                path.display()
            );
            return ExitCode::BadInput;
        }
        Err(e) => {
            eprintln!("qci-vm: {e}");
            return ExitCode::BadInput;
        }
    };
    if let Some(end) = deliver::ended(paths, job) {
        eprintln!(
            "qci-vm: job {job} has ended already ({}: {}); a job id is used once",
            end.state, end.description
        );
        return ExitCode::BadInput;
    }
    // The sink's credentials are masked in all begin shows or reports: the
    // repository URL, which git's messages quote, may hold the token.
    let mask = SecretMask::new(sink::secrets(&job_file, paths));
    let fail = |why: &str| give_up(job, &job_file, paths, &mask.apply(why));
    let settings = match Settings::load(paths) {
        Ok(s) => s,
        Err(e) => return fail(&format!("Bad dev VM settings: {e}")),
    };
    prune_workspaces(paths, settings.keep_workspaces);
    let workspace = paths.workspace(job);
    // Progress on stderr: stdout carries only dom0's log.
    match (&job_file.source, &job_file.commit) {
        (Some(dir), _) => eprintln!(
            "qci-vm: job {job}: listing the working tree {}",
            dir.display()
        ),
        (None, Some(sha)) => eprintln!(
            "qci-vm: job {job}: cloning {} at {sha}",
            mask.apply(&job_file.repository.url)
        ),
        (None, None) => {}
    }
    // Held while the job runs: the workspace of a running job is never pruned.
    let in_use = match prepare(&job_file, &workspace) {
        Ok(lock) => lock,
        Err(e) => return fail(&format!("Cannot prepare the workspace: {e}")),
    };
    eprintln!("qci-vm: job {job}: calling qci.Run in dom0");
    let mut child = match qci_qrexec::call::from_vm("dom0", "qci.Run", job.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("Cannot call qci.Run: {e}")),
    };
    // The job's timeout goes to dom0, which stops the steps at it (within
    // its own job_timeout); stdin then stays open until the call ends, so
    // that dom0 sees this end of the stream close if `begin` goes away, and
    // cancels the job. A write that fails (dom0 refused the call and is
    // gone) is said by the call's end.
    let request = RunRequest {
        timeout_secs: job_file.timeout_secs,
    };
    let _held_open = child.stdin.take().map(|mut stdin| {
        let _ = stdin.write_all(request.to_line().as_bytes());
        stdin
    });
    let (said, refusal) = mpsc::channel();
    if let Some(log) = child.stdout.take() {
        let mask = mask.clone();
        // Not joined: a process dom0 left behind may hold the stream open.
        std::thread::spawn(move || {
            let _ = said.send(relay(log, out, &mask));
        });
    }
    let timeout = Duration::from_secs(job_file.timeout_secs);
    // dom0 ends the job at its timeout; this bounds dom0.
    let waited = timeout.saturating_add(RUN_CLOSING);
    let status = match wait_or_kill(&mut child, waited) {
        Ok(Some(s)) => s,
        Ok(None) => {
            let why = format!("No result from dom0 within {}s", waited.as_secs());
            return fail(&why);
        }
        Err(e) => return fail(&format!("Lost qci.Run: {e}")),
    };
    let code = status.code();
    let outcome = if deliver::ended(paths, job).is_some() {
        // dom0 ended the job; its exit code says how.
        ExitCode::from_status(code)
    } else {
        let why = match (code, refusal.recv_timeout(RELAY_GRACE).ok().flatten()) {
            (_, Some(refused)) => format!("dom0 refused the job: {refused}"),
            (Some(c @ 0..=3), None) => {
                format!("dom0 runner ended (exit {c}) without a final status")
            }
            (code, None) => qci_qrexec::call::describe_exit(code)
                .map(|w| format!("dom0 runner did not run: {w}"))
                .unwrap_or_else(|| format!("dom0 runner ended abnormally ({status})")),
        };
        fail(&why)
    };
    drop(in_use);
    prune_workspaces(paths, settings.keep_workspaces);
    outcome
}

/// Passes dom0's live log to stdout line by line, masking the sink's
/// credentials (dom0 never has them, but the code under test runs there and
/// could print what it found in the exported tree). Each read goes out as
/// one write: lines are not copied one by one, and memory stays one read's
/// worth whatever the line length. Each write holds whole lines only (an
/// unended last line is given its `\n`), which `qci-vm run`'s step markers
/// rely on. Returns the reason if dom0 refused the job: then its first line
/// is `[qci] refused: WHY` (a step's lines cannot come first).
fn relay(mut log: impl Read, mut out: impl Write, mask: &SecretMask) -> Option<String> {
    let mut splitter = LineSplitter::masking(mask.clone());
    let mut buf = vec![0; 256 * 1024];
    let mut text = Vec::with_capacity(2 * buf.len());
    let mut first = None;
    loop {
        let chunk = match log.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => &buf[..n],
        };
        // Whole printable lines and nothing to mask (the usual case): they
        // go out as they came.
        if mask.is_empty() && first.is_some() && splitter.passes_whole(chunk) {
            let _ = out.write_all(chunk).and_then(|()| out.flush());
            continue;
        }
        splitter.push(chunk, |line| relay_line(&mut text, line, mask, &mut first));
        // A reader that went away is not a reason to stop reading: dom0
        // would block on a full pipe.
        let _ = out.write_all(&text).and_then(|()| out.flush());
        text.clear();
    }
    if let Some(rest) = splitter.finish() {
        relay_line(&mut text, Line::new(&rest), mask, &mut first);
        let _ = out.write_all(&text).and_then(|()| out.flush());
    }
    let first = first?;
    let (_stamp, rest) = first.split_once(' ')?;
    rest.strip_prefix("[qci] refused: ").map(str::to_owned)
}

/// One line of the relay, masked, onto `text`; the first is kept in `first`.
fn relay_line(text: &mut Vec<u8>, line: Line<'_>, mask: &SecretMask, first: &mut Option<String>) {
    // Checking for UTF-8 first is much faster than `from_utf8_lossy` on the
    // valid text dom0's log always is.
    let line = match line
        .as_printable()
        .map(Ok)
        .unwrap_or_else(|| std::str::from_utf8(line.bytes))
    {
        Ok(valid) => std::borrow::Cow::Borrowed(valid),
        Err(_) => String::from_utf8_lossy(line.bytes),
    };
    let line = mask.apply(&line);
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    first.get_or_insert_with(|| line.into_owned());
}

/// Ends a job that dom0 did not end: says why (`why` is masked already),
/// and makes sure the commit does not stay pending.
fn give_up(job: &JobId, job_file: &JobFile, paths: &Paths, why: &str) -> ExitCode {
    let event = StatusEvent::new(job, State::Error, why);
    eprintln!("qci-vm: {}", event.description);
    match deliver::deliver(&event, job_file, paths) {
        Ok(()) | Err(DeliverError::Ended { .. }) => {}
        Err(e) => eprintln!("qci-vm: cannot report the error status: {e}"),
    }
    ExitCode::CiError
}

/// Removes the workspaces of finished jobs (those no running `begin`
/// holds), keeping the newest `keep`, so they never pile up. A failure here
/// is only reported: it must not stop the job.
fn prune_workspaces(paths: &Paths, keep: usize) {
    let Ok(entries) = std::fs::read_dir(paths.workspaces()) else {
        return;
    };
    let mut finished: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(|m| m.is_dir())?;
            Some((meta.modified().ok()?, e.path()))
        })
        .collect();
    finished.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    let mut kept = 0;
    for (_, ws) in finished {
        let Ok(dir) = std::fs::File::open(&ws) else {
            continue;
        };
        // Held by a running begin: not finished.
        let Ok(_lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if kept < keep {
            kept += 1;
        } else if let Err(e) = remove_tree(&ws) {
            eprintln!(
                "qci-vm: cannot remove the old workspace {}: {e}",
                ws.display()
            );
        }
    }
}

/// Fills `workspace` with the job's code, and returns a shared lock on it
/// that marks it in use until dropped.
fn prepare(job: &JobFile, workspace: &Path) -> std::io::Result<Flock<std::fs::File>> {
    remove_tree(workspace)?;
    std::fs::create_dir_all(workspace)?;
    let lock = Flock::lock(std::fs::File::open(workspace)?, FlockArg::LockShared)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    if let Some(source) = &job.source {
        std::fs::write(Paths::source_list(workspace), list_working_tree(source)?)?;
    } else if let Some(commit) = &job.commit {
        let ws = workspace.as_os_str();
        git(
            None,
            &[
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--no-checkout".as_ref(),
                "--".as_ref(),
                job.repository.url.as_ref(),
                ws,
            ],
        )?;
        git(
            Some(workspace),
            &[
                "checkout".as_ref(),
                "--quiet".as_ref(),
                "--detach".as_ref(),
                commit.as_str().as_ref(),
            ],
        )?;
    } else {
        return Err(std::io::Error::other(
            "the job names neither a source tree nor a commit",
        ));
    }
    Ok(lock)
}

fn git(dir: Option<&Path>, args: &[&std::ffi::OsStr]) -> std::io::Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read both pipes on threads so a chatty git cannot block on a full pipe.
    let out = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut o, &mut v);
            v
        })
    });
    let err = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
    });
    let status = wait_or_kill(&mut child, GIT_TIMEOUT)?;
    let out = out.and_then(|t| t.join().ok()).unwrap_or_default();
    let err = err.and_then(|t| t.join().ok()).unwrap_or_default();
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    match status {
        None => Err(std::io::Error::other(format!(
            "git {} timed out",
            shown.join(" ")
        ))),
        Some(s) if !s.success() => Err(std::io::Error::other(format!(
            "git {} failed: {}",
            shown.join(" "),
            err.trim()
        ))),
        Some(_) => Ok(out),
    }
}

/// The files of the working tree at `source` to send, as `git ls-files -z`
/// prints them. Not a git work tree: everything at its top but `.git` and
/// `.qci` (a directory listed is sent whole).
fn list_working_tree(source: &Path) -> std::io::Result<Vec<u8>> {
    let listed = git(
        Some(source),
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            ".",
            ":(exclude).qci",
            ":(exclude).git",
        ]
        .map(std::ffi::OsStr::new),
    );
    match listed {
        Ok(list) => Ok(list),
        // In a work tree git must answer: sending everything instead would
        // run ignored files (build output, local secrets) as if committed.
        Err(e) if in_git_work_tree(source) => Err(e),
        // Not a git work tree: take everything.
        Err(_) => {
            let mut list = Vec::new();
            for entry in std::fs::read_dir(source)? {
                let name = entry?.file_name();
                if !SKIPPED.iter().any(|s| name == *s) {
                    list.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(
                        name.as_os_str(),
                    ));
                    list.push(0);
                }
            }
            Ok(list)
        }
    }
}

/// Whether `dir` is in a git work tree, found as git finds one: a `.git` in
/// it or in a directory above it.
fn in_git_work_tree(dir: &Path) -> bool {
    dir.canonicalize()
        .is_ok_and(|d| d.ancestors().any(|a| a.join(".git").exists()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::{FakeGithub, TOKEN, assert_no_token, github_setup};

    /// Hands out its data a few bytes at a time, as a pipe may.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    /// Hands out its data in the pieces given, one per read.
    struct Reads(std::collections::VecDeque<Vec<u8>>);

    impl Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(piece) = self.0.pop_front() else {
                return Ok(0);
            };
            buf[..piece.len()].copy_from_slice(&piece);
            Ok(piece.len())
        }
    }

    #[test]
    fn relay_passes_whole_lines_through_and_still_cuts_and_cleans_the_rest() {
        let long = "y".repeat(qci_core::log::MAX_LINE + 10);
        let pieces: Vec<Vec<u8>> = vec![
            b"T [qci] job J called from sd-dev\n".to_vec(),
            b"T [a] plain\nT [a] more\n".to_vec(),
            b"T [a] half".to_vec(),
            b" done\nT [a] bad \xff byte\n".to_vec(),
            format!("{long}\n").into_bytes(),
            b"T [a] last".to_vec(),
        ];
        let mut out = Vec::new();
        let refused = relay(Reads(pieces.into()), &mut out, &SecretMask::default());
        assert_eq!(refused, None);
        let max = qci_core::log::MAX_LINE;
        let want = format!(
            "T [qci] job J called from sd-dev\nT [a] plain\nT [a] more\nT [a] half done\n\
             T [a] bad \u{FFFD} byte\n{}\n{}\nT [a] last\n",
            &long[..max],
            &long[max..]
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    /// Keeps each write it is given, apart.
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn relay_writes_whole_lines_only_however_the_reads_cut_them() {
        let long = "y".repeat(qci_core::log::MAX_LINE + 10);
        let pieces = || -> Vec<Vec<u8>> {
            vec![
                b"T [qci] job J called from sd-dev\n".to_vec(),
                b"T [a] plain\nT [a] more\nT [a] ha".to_vec(),
                b"lf done\nT [a] bad \xff byte\n".to_vec(),
                format!("{long}\nT [a] after").into_bytes(),
                b" long\nT [a] last".to_vec(),
            ]
        };
        let all = pieces().concat();
        for mask in [SecretMask::default(), SecretMask::new(["more".to_owned()])] {
            for writes in [
                {
                    let mut w = Writes(Vec::new());
                    relay(Reads(pieces().into()), &mut w, &mask);
                    w.0
                },
                {
                    let mut w = Writes(Vec::new());
                    relay(Trickle(all.clone(), 0), &mut w, &mask);
                    w.0
                },
            ] {
                assert!(!writes.is_empty());
                for w in &writes {
                    assert!(w.ends_with(b"\n"), "{:?}", String::from_utf8_lossy(w));
                }
                assert!(writes.concat().ends_with(b"T [a] last\n"));
            }
        }
    }

    #[test]
    fn relay_masks_a_token_split_across_reads_and_keeps_every_line() {
        let input =
            b"2026-11-22T10:15:00.123Z [test] token ghp_secretvalue here\nsecond line\nno newline"
                .to_vec();
        let mut out = Vec::new();
        let refused = relay(
            Trickle(input, 0),
            &mut out,
            &SecretMask::new(["ghp_secretvalue".to_owned()]),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-22T10:15:00.123Z [test] token *** here\nsecond line\nno newline\n"
        );
        assert_eq!(refused, None);
    }

    #[test]
    fn relay_reads_a_refusal_only_on_the_first_line() {
        let relayed = |text: &str| relay(text.as_bytes(), Vec::new(), &SecretMask::default());
        assert_eq!(
            relayed("2026-11-22T10:15:00.123Z [qci] refused: busy, try later\n").as_deref(),
            Some("busy, try later")
        );
        assert_eq!(
            relayed("T [qci] job J called from sd-dev\nT [qci] refused: a step said so\n"),
            None
        );
    }

    #[test]
    fn a_work_tree_git_cannot_read_is_an_error_and_a_plain_directory_is_listed_whole() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.txt"), "a").unwrap();
        std::fs::create_dir_all(src.path().join(".qci/machine")).unwrap();
        assert_eq!(list_working_tree(src.path()).unwrap(), b"a.txt\0");

        // A `.git` that points nowhere: git fails, and nothing is listed.
        std::fs::write(src.path().join(".git"), "gitdir: /nonexistent/qci\n").unwrap();
        let err = list_working_tree(src.path()).unwrap_err();
        assert!(err.to_string().contains("git ls-files"), "{err}");
    }

    #[test]
    fn a_failed_clone_reports_its_error_without_the_sink_token() {
        let gh = FakeGithub::start(Some(201), "{}");
        let (_home, paths, mut job_file) = github_setup(&gh.base, 10);
        // A private repository's URL may well carry the token the sink posts with.
        job_file.repository.url = format!("https://x-access-token:{TOKEN}@127.0.0.1:9/o/r");
        let job = JobId::parse("J1").unwrap();
        job_file.save(&paths.job_file(&job)).unwrap();

        assert_eq!(begin(&job, &paths), ExitCode::CiError);

        let seen = gh.seen();
        assert_eq!(seen.len(), 1);
        let description = seen[0].body["description"].as_str().unwrap();
        assert!(
            description.starts_with("Cannot prepare the workspace: git clone")
                && description.contains("x-access-token:***@"),
            "{description}"
        );
        assert_no_token(description);
    }
}
