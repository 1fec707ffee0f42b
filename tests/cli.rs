//! The `qci` CLI's own behaviour (issue 14): remote text on a terminal, a
//! reader that closes early, stale leases in `qci pool`, what is not a
//! project, `--commit` outside a repository's top, and the help text.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

#[path = "../crates/qci-server/tests/support/fake_github.rs"]
mod fake_github;
mod pool_support;
mod support;

use fake_github::FakeGithub;
use pool_support::{Host, stderr, stdout};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::{git, qci, signal, wait_for};

const SECRET: &str = "cli test secret";
const TOKEN: &str = "ghp_cliTestToken0123456789abcdef";
const REPO: &str = "freedomofpress/securedrop-workstation";
/// Retitles the terminal and clears it.
const HOSTILE: &str = "evil\x1b]0;PWNED\x07\x1b[2J";

/// Runs `cmd` with its stdout a pipe whose reader is already gone: every
/// write to it fails with EPIPE.
fn with_closed_stdout(cmd: &mut Command) -> Output {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let child = cmd
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `args` of qci on a terminal (util-linux `script` gives it a pty)
/// and returns what the terminal got.
fn on_a_terminal(args: &[&str]) -> String {
    let qci = support::bin_dir().join("qci");
    let mut line = shell_quote(&qci.to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux script");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn jobs_list_strips_a_hostile_ref_on_a_terminal_and_a_closed_pipe_ends_it_quietly() {
    let area = support::Scratch::new();
    let dir = area.dir.path();
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("Makefile"), "test:\n\ttrue\n").unwrap();
    git(&project, &["init", "-q", "-b", "main"]);
    git(&project, &["add", "."]);
    git(&project, &["commit", "-q", "-m", "c"]);
    let sha = git(&project, &["rev-parse", "HEAD"]);
    let github = FakeGithub::start(TOKEN);
    // A version no machine runs: the job ends at once, no machine involved.
    github.pipeline(
        REPO,
        &sha,
        "qubes = [\"9.9\"]\n[[steps]]\nname = \"t\"\ncommand = \"true\"\n",
    );
    let listener = support::listener();
    let port = listener.local_addr().unwrap().port();
    write_secret(&dir.join("webhook-secret"), SECRET);
    write_secret(&dir.join("github-token"), TOKEN);
    let d = dir.display();
    let config = dir.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[pool]\nstate_dir = \"{d}/state\"\nhost_id = \"cli\"\n\
             [[pool.machines]]\nname = \"emu-1\"\nqubes = \"4.2\"\nbackend = \"local\"\npath = \"{d}/emu-1\"\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
             github_api_url = \"{}\"\n\
             webhook_secret = {{ file = \"{d}/webhook-secret\" }}\n\
             github_token = {{ file = \"{d}/github-token\" }}\n\
             [[server.repos]]\nslug = \"{REPO}\"\nclone_url = \"{}\"\n",
            github.base,
            project.display()
        ),
    )
    .unwrap();
    let mut serve = qci();
    serve.args(["serve", "--config"]).arg(&config);
    let mut served = support::socket_activated(&serve, &listener)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(served.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("qci serve: listening on"), "{first:?}");

    let body = serde_json::json!({
        "ref": format!("refs/heads/{HOSTILE}"),
        "after": sha,
        "before": "0000000000000000000000000000000000000000",
        "deleted": false,
        "repository": {"full_name": REPO, "clone_url": project.display().to_string()},
        "head_commit": {"id": sha, "message": "hostile", "author": {"name": "x"}},
        "pusher": {"name": "x"},
        "sender": {"login": "x"},
    });
    let body = serde_json::to_vec(&body).unwrap();
    let reply = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "cli-1")
        .header(
            "X-Hub-Signature-256",
            qci_server::webhook::sign(SECRET.as_bytes(), &body),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    let list = || {
        qci()
            .args(["jobs", "--config"])
            .arg(&config)
            .arg("list")
            .output()
            .unwrap()
    };
    wait_for("the job in the list", Duration::from_secs(60), || {
        stdout(&list()).contains("evil")
    });

    // Through a pipe, the data as it is; on a terminal, no escape left.
    let piped = list();
    assert!(stdout(&piped).contains(HOSTILE), "{}", stdout(&piped));
    let shown = on_a_terminal(&["jobs", "--config", &config.to_string_lossy(), "list"]);
    assert!(shown.contains("evil"), "{shown:?}");
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains("PWNED"),
        "{shown:?}"
    );

    // A reader that closed early: exit 0, nothing on stderr.
    let closed = with_closed_stdout(qci().args(["jobs", "--config"]).arg(&config).arg("list"));
    assert_eq!(closed.status.code(), Some(0), "{}", stderr(&closed));
    assert_eq!(stderr(&closed), "");
    let head = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' jobs --config '{}' list | head -n1 >/dev/null",
            support::bin_dir().join("qci").display(),
            config.display()
        ))
        .output()
        .unwrap();
    assert!(!stderr(&head).contains("panicked"), "{}", stderr(&head));

    signal(served.id() as i32, "TERM");
    let _ = served.wait();
}

#[test]
fn pool_output_to_a_closed_pipe_ends_quietly_with_exit_0() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let out = with_closed_stdout(&mut host.qci(&["pool"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn pool_marks_a_lease_whose_holder_died_as_stale_and_says_what_frees_it() {
    let mut host = Host::new();
    host.local("emu-1", "4.2");
    let release = host.path("release");
    let repo = host.held_repo(&release);
    let mut child = host.start_held(&["--machine", "emu-1"], &repo, "orphan");
    let live = stdout(&host.run(&["pool"]));
    assert!(live.contains("orphan") && !live.contains("stale"), "{live}");
    signal(child.id() as i32, "KILL");
    let _ = child.wait();
    let shown = stdout(&host.run(&["pool"]));
    assert!(shown.contains("orphan (stale, pid"), "{shown}");
    assert!(
        shown.contains("its holder (pid")
            && shown.contains("`qci run`, `qci nightly` or `qci serve`"),
        "{shown}"
    );
    // What it says frees it does.
    let quick = pool_support::Repo::new(&host, "quick", "true");
    let out = host.run_job(&["--machine", "emu-1"], &quick);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = stdout(&host.run(&["pool"]));
    assert!(!after.contains("stale"), "{after}");
    let _ = std::fs::write(&release, "");
}

/// `qci ARGS` in `dir`, its exit code and stderr.
fn qci_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = qci().current_dir(dir).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_directory_that_is_not_a_project_is_refused_before_anything_is_exported() {
    let scratch = support::Scratch::new();
    let dir = scratch.dir.path().join("not-a-project");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    let state = scratch.dir.path().join("state");
    let (code, _, err) = qci_in(
        scratch.dir.path(),
        &[
            "run",
            "--local",
            dir.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is not a project: it has neither a .qci.toml nor a Makefile"),
        "{err}"
    );
    assert!(!state.exists(), "a machine was installed for a non-project");
}

#[test]
fn commit_outside_a_repository_or_below_its_top_says_which() {
    let scratch = support::Scratch::new();
    let plain = scratch.dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("Makefile"), "test:\n\ttrue\n").unwrap();
    let (code, _, err) = qci_in(
        scratch.dir.path(),
        &[
            "run",
            "--local",
            plain.to_str().unwrap(),
            "--commit",
            "HEAD",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--commit needs a git repository"), "{err}");

    let repo = scratch.dir.path().join("repo");
    let sub = repo.join("examples/sample");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("Makefile"), "test:\n\ttrue\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    let (code, _, err) = qci_in(
        scratch.dir.path(),
        &["run", "--local", sub.to_str().unwrap(), "--commit", "HEAD"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is a subdirectory of the repository at"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pass --local {}", repo.display())),
        "{err}"
    );
}

#[test]
fn run_alone_shows_its_three_forms_and_every_flag_is_described() {
    let scratch = support::Scratch::new();
    let (code, out, err) = qci_in(scratch.dir.path(), &["run"]);
    let text = format!("{out}{err}");
    assert_eq!(code, Some(2), "{text}");
    for form in ["--local DIR", "--machine", "--qubes"] {
        assert!(text.contains(form), "{form} missing from:\n{text}");
    }
    assert!(
        !text.contains("required arguments were not provided"),
        "{text}"
    );
    for sub in [
        "run",
        "pool",
        "nightly",
        "serve",
        "jobs",
        "gitlab-executor",
        "qrexec",
    ] {
        // -h: one line per flag, its description beside it.
        let (code, out, err) = qci_in(scratch.dir.path(), &[sub, "-h"]);
        assert_eq!(code, Some(0), "{sub} --help: {err}");
        // A flag line without a description ends right after the flag.
        for line in out.lines().filter(|l| l.trim_start().starts_with("--")) {
            let flag = line.trim_start();
            let described = flag
                .split_once("  ")
                .is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "{sub} --help: {flag:?} has no description");
        }
    }
    let (_, out, _) = qci_in(scratch.dir.path(), &["run", "--help"]);
    assert!(
        out.contains("local-"),
        "run --help does not name local jobs:\n{out}"
    );
}

#[test]
fn an_unreadable_file_in_a_project_names_the_user_who_could_not_read_it() {
    if !support::root_or_skip("as anyone else the qubes run as you, who can read your files") {
        return;
    }
    let scratch = support::Scratch::new();
    let project = scratch.dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("Makefile"), "clone dev test:\n\ttrue\n").unwrap();
    let secret = project.join("private.key");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let state = scratch.dir.path().join("state");
    let (code, out, err) = qci_in(
        scratch.dir.path(),
        &[
            "run",
            "--local",
            project.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let text = format!("{out}{err}");
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("private.key"), "{text}");
    let user = std::env::var("SUDO_USER").unwrap_or_else(|_| "nobody".into());
    assert!(
        text.contains(&user),
        "the user {user} is not named:\n{text}"
    );
}

#[test]
fn a_secret_file_others_may_read_is_refused_at_start_with_the_chmod_that_fixes_it() {
    let scratch = support::Scratch::new();
    let d = scratch.dir.path();
    std::fs::write(d.join("webhook-secret"), SECRET).unwrap();
    std::fs::set_permissions(
        d.join("webhook-secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    write_secret(&d.join("github-token"), TOKEN);
    let config = d.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "[pool]\nstate_dir = \"{0}/state\"\nhost_id = \"t\"\n\
             [[pool.machines]]\nname = \"emu-1\"\nqubes = \"4.2\"\nbackend = \"local\"\npath = \"{0}/emu\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1\"\n\
             webhook_secret = {{ file = \"{0}/webhook-secret\" }}\n\
             github_token = {{ file = \"{0}/github-token\" }}\n\
             [[server.repos]]\nslug = \"{REPO}\"\n",
            d.display()
        ),
    )
    .unwrap();
    let (code, out, err) = qci_in(d, &["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}{err}");
    let file = d.join("webhook-secret");
    assert!(
        err.contains(&format!(
            "secret file {} is readable by others (mode 0644)",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("chmod 600 {}", file.display())),
        "{err}"
    );
    assert!(!out.contains("listening"), "{out}");
}
