//! `qci-vm run [-- COMMAND…]` as a CI engine's step runs it in the dev VM
//! of an emulated machine: the checkout in the current directory runs in
//! dom0, the log comes on stdout (grouped by step, with workflow commands
//! stopped, under GitHub Actions), and the exit code is the job's.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::path::Path;
use std::process::Output;
use support::{Scratch, states};

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Runs `qci-vm run ARGS` in `dir` in the dev VM, with `env` set (and
/// GITHUB_ACTIONS and GITLAB_CI unset unless `env` sets them), as a CI
/// engine's step would.
fn run_in(s: &Scratch, dir: &Path, env: &str, args: &str) -> (Option<i32>, String, String) {
    let line = format!(
        "cd {} && env -u GITHUB_ACTIONS -u GITHUB_RUN_ID -u GITLAB_CI -u CI_JOB_ID {env} qci-vm run {args}; exit\n",
        quoted(dir)
    );
    let out: Output = s.qrexec("dom0", "sd-dev", "qubes.VMShell", line.as_bytes());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The workflow commands GitHub's runner would act on in `stdout`: a line
/// is one when, its leading blanks trimmed, it starts with `::`, except
/// while commands are stopped (`::stop-commands::TOKEN` until `::TOKEN::`).
fn workflow_commands(stdout: &str) -> Vec<String> {
    let mut stopped: Option<String> = None;
    let mut acted = Vec::new();
    // The runner splits on \r as well as \n.
    for line in stdout.split(['\n', '\r']) {
        let line = line.trim_start();
        if let Some(token) = &stopped {
            if line == format!("::{token}::") {
                stopped = None;
            }
            continue;
        }
        if let Some(token) = line.strip_prefix("::stop-commands::") {
            stopped = Some(token.to_owned());
        }
        if line.starts_with("::") {
            acted.push(line.to_owned());
        }
    }
    acted
}

/// The job id `qci-vm run` said it ran (on stderr).
fn job_of(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("qci-vm: job "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id on stderr: {stderr}"))
        .to_owned()
}

const TWO_STEPS: &str = "[[steps]]\nname = \"first\"\ncommand = \"echo one-out\"\n\n\
                         [[steps]]\nname = \"second\"\ncommand = \"echo two-out\"\n";

#[test]
fn under_github_actions_each_step_is_a_group_and_the_code_is_the_jobs() {
    let s = Scratch::new();
    s.prepare_machine();
    let project = s.project("two", &[(".qci.toml", TWO_STEPS)]);
    let github = "GITHUB_ACTIONS=true GITHUB_RUN_ID=4242 GITHUB_RUN_ATTEMPT=2 GITHUB_JOB=qubes";

    let (code, stdout, stderr) = run_in(&s, &project, github, "");
    println!("--- stdout of a passing run ---\n{stdout}--- stderr ---\n{stderr}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let job = job_of(&stderr);
    assert!(job.starts_with("gh-4242-2-qubes-"), "{job}");
    let lines: Vec<&str> = stdout.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            // A marker is a line of its own; a log line ends with its text.
            .position(|l| {
                if needle.starts_with("::") {
                    *l == needle
                } else {
                    l.ends_with(needle)
                }
            })
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{stdout}"))
    };
    let (g1, out1, g2, out2) = (
        at("::group::first"),
        at("[first] one-out"),
        at("::group::second"),
        at("[second] two-out"),
    );
    let ends: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i] == "::endgroup::")
        .collect();
    assert_eq!(ends.len(), 2, "{stdout}");
    assert!(
        g1 < out1 && out1 < ends[0] && ends[0] < g2 && g2 < out2 && out2 < ends[1],
        "group, lines, endgroup for each step:\n{stdout}"
    );
    // What the runner acts on is only the markers.
    let acted = workflow_commands(&stdout);
    let only_markers = acted.iter().all(|c| {
        c.starts_with("::group::") || c == "::endgroup::" || c.starts_with("::stop-commands::")
    });
    assert!(only_markers, "{acted:?}");
    assert_eq!(
        acted.iter().filter(|c| c.starts_with("::group::")).count(),
        2
    );
    // The job ran like any: statuses, and dom0's log of it.
    let recorded = states(&s.status_file(&job));
    assert_eq!(recorded.last().map(|s| s.0.as_str()), Some("success"));
    assert!(s.job_log(&job).contains("[second] two-out"));

    // A failing step: exit 1, its output there, and no later step run.
    let failing = s.project(
        "failing",
        &[(
            ".qci.toml",
            "[[steps]]\nname = \"bad\"\ncommand = \"echo about to fail; exit 4\"\n\n\
             [[steps]]\nname = \"never\"\ncommand = \"echo never-run\"\n",
        )],
    );
    let (code, stdout, stderr) = run_in(&s, &failing, "GITHUB_ACTIONS=true", "");
    println!("--- stdout of a failing run ---\n{stdout}");
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("[bad] about to fail"), "{stdout}");
    assert!(stdout.contains("step bad failed in"), "{stdout}");
    assert!(!stdout.contains("never-run"), "{stdout}");
    assert!(job_of(&stderr).starts_with("run-"), "{stderr}");
    let after_fail = stdout
        .lines()
        .skip_while(|l| !l.contains("step bad failed in"));
    assert!(
        after_fail.clone().any(|l| l == "::endgroup::"),
        "the failed step's group is closed:\n{stdout}"
    );
}

#[test]
fn a_given_command_runs_in_dom0_instead_of_the_pipeline_and_the_checkout_is_untouched() {
    let s = Scratch::new();
    s.prepare_machine();
    let pipeline = "[[steps]]\nname = \"own\"\ncommand = \"echo own-steps; exit 9\"\n";
    let project = s.project(
        "cmd",
        &[(".qci.toml", pipeline), ("data.txt", "from the checkout\n")],
    );

    let (code, stdout, stderr) = run_in(&s, &project, "GITHUB_ACTIONS=true", "-- cat data.txt");
    println!("--- stdout of run -- cat data.txt ---\n{stdout}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("[command] from the checkout"), "{stdout}");
    assert!(stdout.contains("::group::command"), "{stdout}");
    assert!(!stdout.contains("own-steps"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(project.join(".qci.toml")).unwrap(),
        pipeline,
        "the checkout's .qci.toml is as it was"
    );
    let job = job_of(&stderr);
    assert!(s.job_log(&job).contains("[qci] step command: cat data.txt"));

    // Several words stay words; a failing command fails the job; a tree
    // with no .qci.toml at all can still run a command (--dir this time).
    let bare = s.project("bare", &[("x.txt", "x\n")]);
    let (code, stdout, stderr) = run_in(
        &s,
        &project,
        "",
        &format!(
            "--dir {} -- sh -c 'echo \"$1\"; exit 5' sh 'a  b'",
            quoted(&bare)
        ),
    );
    println!("--- stdout of a failing command ---\n{stdout}");
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("[command] a  b"), "{stdout}");
    assert!(stdout.contains("step command failed in"), "{stdout}");

    // A step that outlives --timeout: a CI error (3), its group closed.
    let (code, stdout, stderr) = run_in(
        &s,
        &project,
        "GITHUB_ACTIONS=true",
        "--timeout 2s -- 'echo started; sleep 60'",
    );
    println!("--- stdout of a command that times out ---\n{stdout}");
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("[command] started"), "{stdout}");
    let ended = stdout
        .lines()
        .position(|l| l.contains("step command timed out in"))
        .unwrap_or_else(|| panic!("no end line:\n{stdout}"));
    assert!(
        stdout.lines().skip(ended).any(|l| l == "::endgroup::"),
        "{stdout}"
    );

    // A blank command is refused before anything runs.
    let (code, stdout, stderr) = run_in(&s, &project, "", "-- ''");
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("the command is empty"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

#[test]
fn what_a_job_prints_never_becomes_a_workflow_command_and_plain_output_has_no_groups() {
    let s = Scratch::new();
    s.prepare_machine();
    let script = "echo '::error::pwned'\n\
                  echo '::set-output name=x::pwned'\n\
                  echo '  ::warning::pwned'\n\
                  echo '::stop-commands::mine'\n\
                  printf 'progress\\r::error::pwned-cr\\n'\n\
                  echo '::endgroup::'\n\
                  echo '::mine::'\n\
                  echo '::add-mask::pwned'\n";
    let project = s.project(
        "hostile",
        &[
            (
                ".qci.toml",
                "[[steps]]\nname = \"hostile\"\ncommand = \"sh hostile.sh\"\n",
            ),
            ("hostile.sh", script),
        ],
    );

    let (code, stdout, stderr) = run_in(&s, &project, "GITHUB_ACTIONS=true", "");
    println!("--- stdout of a hostile job ---\n{stdout}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("[hostile] ::error::pwned"), "{stdout}");
    assert!(
        stdout.contains("[hostile] ::set-output name=x::pwned"),
        "{stdout}"
    );
    let acted = workflow_commands(&stdout);
    println!("workflow commands acted on: {acted:?}");
    assert!(
        acted
            .iter()
            .all(|c| !c.contains("pwned") && !c.contains("mine")),
        "{acted:?}"
    );
    assert_eq!(
        acted
            .iter()
            .filter(|c| c.starts_with("::group::") || *c == "::endgroup::")
            .cloned()
            .collect::<Vec<_>>(),
        ["::group::hostile", "::endgroup::"]
    );
    // No line of stdout starts with `::` but the markers.
    for line in stdout.lines() {
        let line = line.trim_start();
        if line.starts_with("::") {
            assert!(
                !line.contains("pwned") && !line.contains("mine"),
                "{line:?} in:\n{stdout}"
            );
        }
    }

    // Not under GitHub Actions: the log as it is, no markers at all.
    let (code, stdout, stderr) = run_in(&s, &project, "", "");
    println!("--- stdout without GITHUB_ACTIONS ---\n{stdout}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("::group::"), "{stdout}");
    // (The job's own `::stop-commands::mine` is in a log line.)
    assert!(
        stdout.lines().all(|l| !l.trim_start().starts_with("::")),
        "every line is a log line:\n{stdout}"
    );
    assert!(stdout.contains("[hostile] ::error::pwned"), "{stdout}");
    assert!(
        stdout.contains("[qci] step hostile: sh hostile.sh"),
        "{stdout}"
    );

    // Under GitLab CI: the step is a collapsible section, the job id the
    // engine's, and the job's own lines as they are.
    let (code, stdout, stderr) = run_in(&s, &project, "GITLAB_CI=true CI_JOB_ID=77", "");
    println!("--- stdout under GITLAB_CI ---\n{stdout:?}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(job_of(&stderr).starts_with("gl-77-"), "{stderr}");
    let start = stdout
        .find("\x1b[0Ksection_start:")
        .expect("a section starts");
    let end = stdout.find("\x1b[0Ksection_end:").expect("a section ends");
    let step = stdout.find("[qci] step hostile: sh hostile.sh").unwrap();
    assert!(start < step && step < end, "{stdout:?}");
    assert!(stdout[start..].contains(":hostile\r\x1b[0K"), "{stdout:?}");
    assert!(stdout.contains("[hostile] ::error::pwned"), "{stdout}");
    assert!(!stdout.contains("::group::"), "{stdout}");
}
