//! End-to-end checks that the emulated Qubes machine follows qrexec's rules
//! (`qrexec-reference.md` §3 to §9): how services are found, what they get,
//! what comes back, what policy refuses, and how the emulated tools behave.
//!
//! Each test sets up its own machine with `qci run --local` (dom0, sd-dev and
//! an extra qube sys-net tagged `net`), then drops its own services and
//! policy files into it.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{Scratch, qci};

/// Prints what a service gets, one `key=value` line each; `<unset>` marks a
/// variable that is not set at all.
const ENV_SERVICE: &str = r#"#!/bin/sh
echo "argc=$#"
echo "arg1=${1-<unset>}"
echo "remote=${QREXEC_REMOTE_DOMAIN-<unset>}"
echo "full=${QREXEC_SERVICE_FULL_NAME-<unset>}"
echo "argument=${QREXEC_SERVICE_ARGUMENT-<unset>}"
echo "type=${QREXEC_REQUESTED_TARGET_TYPE-<unset>}"
echo "target=${QREXEC_REQUESTED_TARGET-<unset>}"
echo "keyword=${QREXEC_REQUESTED_TARGET_KEYWORD-<unset>}"
echo "pwd=$(pwd -P)"
echo "home=${HOME-<unset>}"
echo "leak=${QCI_TEST_LEAK-<unset>}"
echo "uid=$(id -u)"
echo "umask=$(umask)"
echo "path=$PATH"
"#;

/// A machine with dom0, sd-dev and sys-net, after one successful local run.
fn machine() -> Scratch {
    let s = Scratch::new();
    std::fs::create_dir_all(s.machine()).unwrap();
    std::fs::write(
        s.machine().join("machine.toml"),
        "[qubes.sys-net]\ntype = \"AppVM\"\ntags = [\"net\"]\n",
    )
    .unwrap();
    s.prepare_machine();
    for domain in ["dom0", "sd-dev", "sys-net"] {
        assert!(s.machine().join(domain).is_dir(), "no {domain} directory");
    }
    s
}

/// `M/DOMAIN/REL`, which must exist; canonical, as `pwd -P` prints it.
fn real(s: &Scratch, domain: &str, rel: &str) -> String {
    let path = s.machine().join(domain).join(rel);
    std::fs::canonicalize(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_string_lossy()
        .into_owned()
}

/// Writes an executable service file `M/DOMAIN/etc/qubes-rpc/NAME`.
fn service(s: &Scratch, domain: &str, name: &str, script: &str) -> PathBuf {
    service_in(s, domain, "etc/qubes-rpc", name, script, 0o755)
}

fn service_in(
    s: &Scratch,
    domain: &str,
    dir: &str,
    name: &str,
    script: &str,
    mode: u32,
) -> PathBuf {
    let dir = s.machine().join(domain).join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn policy_dir(s: &Scratch) -> PathBuf {
    s.machine().join("dom0/etc/qubes/policy.d")
}

fn policy(s: &Scratch, name: &str, rules: &str) {
    std::fs::write(policy_dir(s).join(name), rules).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` with `stdin` fed from a thread (so large inputs cannot
/// deadlock against the output) and collects everything.
fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The service may exit without reading everything.
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// `qci qrexec --machine M --from FROM TARGET SERVICE`, with a caller
/// environment that must not reach the service.
fn qrexec(s: &Scratch, from: &str, target: &str, svc: &str, stdin: &[u8]) -> Output {
    let mut cmd = qci();
    cmd.args(["qrexec", "--machine"])
        .arg(s.machine())
        .args(["--from", from, target, svc])
        .env("QCI_TEST_LEAK", "caller")
        .env("QREXEC_REQUESTED_TARGET", "caller");
    run_with_input(cmd, stdin)
}

/// An emulated tool of the machine, started with the environment a process
/// of `domain` has: only the machine, the domain and PATH.
fn tool(s: &Scratch, path: &Path, domain: &str, args: &[&str]) -> Command {
    let mut search = OsString::from(s.machine().join(domain).join("usr/bin"));
    search.push(":");
    search.push(std::env::var_os("PATH").unwrap_or_default());
    let mut cmd = Command::new(path);
    cmd.env_clear()
        .env("QCI_EMU_MACHINE", s.machine())
        .env("QCI_EMU_DOMAIN", domain)
        .env("PATH", search)
        .env("QCI_TEST_LEAK", "caller")
        .args(args);
    cmd
}

/// The `key=value` lines of [`ENV_SERVICE`]'s output.
fn report(out: &Output) -> BTreeMap<String, String> {
    text(&out.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts that qrexec refused the call the way a real caller sees it: 126,
/// no output, and the client's `Request refused`.
fn assert_refused(out: &Output) {
    assert_code(out, 126);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "Request refused\n");
}

/// dom0's record of refused calls, where the refusal's reason shows.
fn policy_log(s: &Scratch) -> String {
    std::fs::read_to_string(s.machine().join("dom0/var/log/qubes/policy.log")).unwrap()
}

/// The machine's user, as a `uid` line of [`ENV_SERVICE`] shows it: never
/// root, whoever runs the tests.
fn uid(s: &Scratch) -> String {
    let (_, uid, _) = s.machine_user();
    assert_ne!(uid, 0, "the machine's qubes must not run as root");
    uid.to_string()
}

/// What a VM service called from dom0 sees (reference §5, "In a VM"): a
/// login shell's umask and PATH, with the VM's own programs first.
fn vm_env_from_dom0(
    s: &Scratch,
    argc: &str,
    arg1: &str,
    full: &str,
    argument: &str,
) -> BTreeMap<String, String> {
    let home = real(s, "sd-dev", "home/user");
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games",
        s.machine().join("sd-dev/usr/bin").display()
    );
    expect(&[
        ("uid", &uid(s)),
        ("umask", "0022"),
        ("path", &path),
        ("argc", argc),
        ("arg1", arg1),
        ("remote", "dom0"),
        ("full", full),
        ("argument", argument),
        ("type", ""),
        ("target", "<unset>"),
        ("keyword", "<unset>"),
        ("pwd", &home),
        ("home", &home),
        ("leak", "<unset>"),
    ])
}

/// What a dom0 service called by sd-dev sees (reference §5, "In dom0"):
/// dom0's user, umask 0077, cwd /run/qubes, and the PATH the installer
/// gave dom0 (its own programs, then those of whoever ran `qci`).
fn dom0_env_from_vm(
    s: &Scratch,
    full: &str,
    arg: &str,
    requested: (&str, &str, &str),
) -> BTreeMap<String, String> {
    let (ty, target, keyword) = requested;
    let path = format!(
        "{}:{}",
        s.machine().join("dom0/usr/bin").display(),
        std::env::var("PATH").unwrap()
    );
    expect(&[
        ("uid", &uid(s)),
        ("umask", "0077"),
        ("path", &path),
        ("argc", "1"),
        ("arg1", arg),
        ("remote", "sd-dev"),
        ("full", full),
        ("argument", arg),
        ("type", ty),
        ("target", target),
        ("keyword", keyword),
        ("pwd", &real(s, "dom0", "run/qubes")),
        ("home", &real(s, "dom0", "home/user")),
        ("leak", "<unset>"),
    ])
}

#[test]
fn vm_service_gets_qubes_arguments_and_environment() {
    let s = machine();
    service(&s, "sd-dev", "test.Env", ENV_SERVICE);

    let out = qrexec(&s, "dom0", "sd-dev", "test.Env+abc", b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        vm_env_from_dom0(&s, "1", "abc", "test.Env+abc", "abc")
    );

    // No argument: looked up and passed on as `test.Env+`, no $1, and the
    // argument variable set but empty.
    let out = qrexec(&s, "dom0", "sd-dev", "test.Env", b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        vm_env_from_dom0(&s, "0", "<unset>", "test.Env+", "")
    );

    // An explicit empty argument is the same call.
    let out = qrexec(&s, "dom0", "sd-dev", "test.Env+", b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        vm_env_from_dom0(&s, "0", "<unset>", "test.Env+", "")
    );
}

#[test]
fn specific_service_file_wins_over_generic_one() {
    let s = machine();
    // SERVICE+ARG is looked for in every directory before SERVICE, so the
    // specific file in the last directory beats the generic one in the first.
    service_in(
        &s,
        "sd-dev",
        "run/qubes-rpc",
        "test.Pick",
        "#!/bin/sh\necho \"generic $#:${1-}\"\n",
        0o755,
    );
    service(
        &s,
        "sd-dev",
        "test.Pick+main",
        "#!/bin/sh\necho \"specific $#:${1-} $QREXEC_SERVICE_FULL_NAME\"\n",
    );

    let out = qrexec(&s, "dom0", "sd-dev", "test.Pick+main", b"");
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "specific 1:main test.Pick+main\n");

    let out = qrexec(&s, "dom0", "sd-dev", "test.Pick+other", b"");
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "generic 1:other\n");

    let out = qrexec(&s, "dom0", "sd-dev", "test.Pick", b"");
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "generic 0:\n");

    // Among directories for the same name, the first one wins.
    service(&s, "sd-dev", "test.Dir", "#!/bin/sh\necho etc\n");
    service_in(
        &s,
        "sd-dev",
        "usr/local/etc/qubes-rpc",
        "test.Dir",
        "#!/bin/sh\necho local\n",
        0o755,
    );
    let out = qrexec(&s, "dom0", "sd-dev", "test.Dir+x", b"");
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "local\n");
}

#[test]
fn exit_codes_follow_qrexec() {
    let s = machine();
    let vm = |svc: &str| qrexec(&s, "dom0", "sd-dev", svc, b"");

    assert_code(&vm("test.Missing+x"), 127);

    service_in(
        &s,
        "sd-dev",
        "etc/qubes-rpc",
        "test.NoExec",
        "#!/bin/sh\necho ran\n",
        0o644,
    );
    let out = vm("test.NoExec+x");
    assert_code(&out, 125);
    assert_eq!(text(&out.stdout), "");

    std::os::unix::fs::symlink(
        s.machine().join("sd-dev/nowhere"),
        s.machine().join("sd-dev/etc/qubes-rpc/test.Broken"),
    )
    .unwrap();
    assert_code(&vm("test.Broken+x"), 125);

    // The first name found decides: a non-executable SERVICE+ARG is not
    // skipped for an executable SERVICE.
    service(&s, "sd-dev", "test.Shadow", "#!/bin/sh\necho generic\n");
    service_in(
        &s,
        "sd-dev",
        "etc/qubes-rpc",
        "test.Shadow+x",
        "#!/bin/sh\necho specific\n",
        0o644,
    );
    let out = vm("test.Shadow+x");
    assert_code(&out, 125);
    assert_eq!(text(&out.stdout), "");
    let out = vm("test.Shadow+y");
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "generic\n");

    service(
        &s,
        "sd-dev",
        "test.Exit",
        "#!/bin/sh\necho before\nexit 5\n",
    );
    let out = vm("test.Exit");
    assert_code(&out, 5);
    assert_eq!(text(&out.stdout), "before\n");

    service(
        &s,
        "sd-dev",
        "test.Kill",
        "#!/bin/sh\nkill -TERM $$\nsleep 5\necho survived\n",
    );
    let out = vm("test.Kill");
    assert_code(&out, 128 + 15);
    assert_eq!(text(&out.stdout), "");

    // The same rules for a dom0 service called by a VM.
    policy(
        &s,
        "20-test.policy",
        "test.Exit * sd-dev @adminvm allow\ntest.Gone * sd-dev @adminvm allow\n",
    );
    service(&s, "dom0", "test.Exit", "#!/bin/sh\nexit 7\n");
    assert_code(&qrexec(&s, "sd-dev", "dom0", "test.Exit+x", b""), 7);
    assert_code(&qrexec(&s, "sd-dev", "dom0", "test.Gone+x", b""), 127);
}

#[test]
fn stdin_and_stdout_are_binary_safe() {
    let s = machine();
    service(&s, "sd-dev", "test.Cat", "#!/bin/sh\nexec cat\n");
    // Every byte value, and more than a pipe buffer holds.
    let input: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
    let out = qrexec(&s, "dom0", "sd-dev", "test.Cat", &input);
    assert_code(&out, 0);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "the bytes came back changed");
    assert_eq!(text(&out.stderr), "");

    // The same through dom0 from a VM.
    service(&s, "dom0", "test.Cat", "#!/bin/sh\nexec cat\n");
    policy(&s, "20-test.policy", "test.Cat * sd-dev @adminvm allow\n");
    let out = qrexec(&s, "sd-dev", "@adminvm", "test.Cat", &input);
    assert_code(&out, 0);
    assert!(out.stdout == input, "the bytes came back changed");
}

#[test]
fn vm_service_stderr_reaches_caller_and_vm_log() {
    let s = machine();
    service(
        &s,
        "sd-dev",
        "test.Err",
        "#!/bin/sh\necho out\necho 'first problem' >&2\nprintf 'second' >&2\nexit 3\n",
    );
    let out = qrexec(&s, "dom0", "sd-dev", "test.Err+a", b"");
    assert_code(&out, 3);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "first problem\nsecond");
    let log = std::fs::read_to_string(s.machine().join("sd-dev/var/log/qrexec.log")).unwrap();
    // Tagged as `logger -t SERVICE+ARG-SOURCE` would tag it; the lines of
    // the call that prepared the machine come before.
    let ours: Vec<&str> = log.lines().filter(|l| l.starts_with("test.Err")).collect();
    assert_eq!(
        ours,
        ["test.Err+a-dom0: first problem", "test.Err+a-dom0: second"]
    );
    assert!(
        !s.machine()
            .join("dom0/var/log/qubes/qrexec.dom0.log")
            .exists()
    );
}

#[test]
fn vm_calling_dom0_gets_dom0_service_environment() {
    let s = machine();
    service(&s, "dom0", "test.Env", ENV_SERVICE);
    service(
        &s,
        "dom0",
        "test.Err",
        "#!/bin/sh\necho out\necho 'dom0 secret' >&2\n",
    );
    policy(
        &s,
        "20-test.policy",
        "test.Env * sd-dev @adminvm allow\ntest.Err * sd-dev @adminvm allow\n",
    );

    let out = qrexec(&s, "sd-dev", "@adminvm", "test.Env+x", b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+x", "x", ("keyword", "<unset>", "adminvm"))
    );

    let out = qrexec(&s, "sd-dev", "dom0", "test.Env+x", b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+x", "x", ("name", "dom0", "<unset>"))
    );

    // The daemon replaces each byte outside the RPC charset with `_`, so
    // the two bytes of `é` become two.
    let out = qrexec(&s, "sd-dev", "dom0", "test.Env+é", b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+__", "__", ("name", "dom0", "<unset>"))
    );

    // A dom0 service's stderr goes to the daemon's log, not to the caller.
    let out = qrexec(&s, "sd-dev", "@adminvm", "test.Err+x", b"");
    assert_code(&out, 0);
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "");
    let log =
        std::fs::read_to_string(s.machine().join("dom0/var/log/qubes/qrexec.sd-dev.log")).unwrap();
    assert_eq!(log, "dom0 secret\n");

    // Without a rule, the same call is refused and the service never runs.
    let out = qrexec(&s, "sys-net", "@adminvm", "test.Err+x", b"");
    assert_refused(&out);
    assert!(
        !s.machine()
            .join("dom0/var/log/qubes/qrexec.sys-net.log")
            .exists()
    );
}

#[test]
fn policy_keeps_other_vms_away_from_qci_services() {
    let s = machine();
    let out = qrexec(&s, "sys-net", "dom0", "qci.Run+J1", b"");
    assert_refused(&out);
    assert!(
        !s.dom0_log_dir().join("J1.log").exists(),
        "the runner started"
    );
    let log = policy_log(&s);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].starts_with("denied: sys-net -> dom0 qci.Run+J1: "),
        "{log}"
    );
    // Denied by qci's explicit `@anyvm @adminvm deny` line, not by the
    // absence of a rule.
    assert!(lines[0].contains("30-qci.policy"), "{log}");

    let event = br#"{"job": "J1", "state": "success", "description": "forged"}"#;
    let out = qrexec(&s, "sys-net", "sd-dev", "qci.Status+J1", event);
    assert_refused(&out);
    assert!(
        !s.status_file("J1").exists(),
        "the forged status was recorded"
    );

    let out = qrexec(&s, "sys-net", "sd-dev", "qci.Export+J1", b"");
    assert_refused(&out);

    let log = policy_log(&s);
    assert_eq!(log.lines().count(), 3, "{log}");
}

#[test]
fn badly_named_policy_file_refuses_every_call() {
    let s = machine();
    service(&s, "dom0", "test.Env", ENV_SERVICE);
    policy(&s, "20-test.policy", "test.Env * sd-dev @adminvm allow\n");
    assert_code(&qrexec(&s, "sd-dev", "dom0", "test.Env+x", b""), 0);

    policy(&s, "25-BAD.policy", "test.Env * sd-dev @adminvm allow\n");
    let out = qrexec(&s, "sd-dev", "dom0", "test.Env+x", b"");
    assert_refused(&out);
    let log = policy_log(&s);
    assert!(log.contains("invalid filename"), "{log}");
    // Calls from dom0 are not policy-checked.
    service(&s, "sd-dev", "test.Env", ENV_SERVICE);
    assert_code(&qrexec(&s, "dom0", "sd-dev", "test.Env+x", b""), 0);

    std::fs::remove_file(policy_dir(&s).join("25-BAD.policy")).unwrap();
    // Files that do not count are ignored, whatever their names and content.
    policy(&s, "README", "not a policy\n");
    policy(&s, ".26-BAD.policy", "not a policy\n");
    policy(&s, "27-test.policy~", "not a policy\n");
    assert_code(&qrexec(&s, "sd-dev", "dom0", "test.Env+x", b""), 0);
}

#[test]
fn policy_syntax_error_refuses_every_call() {
    let s = machine();
    service(&s, "dom0", "test.Env", ENV_SERVICE);
    // Inline comments are not supported: the whole policy fails to load.
    policy(
        &s,
        "20-test.policy",
        "test.Env * sd-dev @adminvm allow # comment\n",
    );
    let out = qrexec(&s, "sd-dev", "dom0", "test.Env+x", b"");
    assert_refused(&out);
    let log = policy_log(&s);
    assert!(
        log.contains("invalid action parameter syntax: '#'"),
        "{log}"
    );

    let client = s.machine().join("sd-dev/usr/bin/qrexec-client-vm");
    let out = run_with_input(tool(&s, &client, "sd-dev", &["dom0", "test.Env+x"]), b"");
    assert_refused(&out);
}

#[test]
fn loopback_call_is_refused() {
    let s = machine();
    service(&s, "sd-dev", "test.Env", ENV_SERVICE);
    policy(
        &s,
        "20-test.policy",
        "test.Env * sd-dev sd-dev allow\ntest.Env * sd-dev @anyvm allow\n",
    );
    let out = qrexec(&s, "sd-dev", "sd-dev", "test.Env+x", b"");
    assert_refused(&out);
    let log = policy_log(&s);
    assert!(log.contains("loopback"), "{log}");

    // The same rule lets another VM through: only the loopback is refused.
    policy(&s, "20-test.policy", "test.Env * @anyvm sd-dev allow\n");
    let out = qrexec(&s, "sys-net", "sd-dev", "test.Env+x", b"");
    assert_code(&out, 0);
    assert_eq!(report(&out)["remote"], "sys-net");
}

#[test]
fn qrexec_client_vm_behaves_like_qci_qrexec() {
    let s = machine();
    service(&s, "dom0", "test.Env", ENV_SERVICE);
    policy(&s, "20-test.policy", "test.Env * sd-dev @adminvm allow\n");
    let client = s.machine().join("sd-dev/usr/bin/qrexec-client-vm");

    let out = run_with_input(tool(&s, &client, "sd-dev", &["dom0", "test.Env+x"]), b"");
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+x", "x", ("name", "dom0", "<unset>"))
    );
    let direct = qrexec(&s, "sd-dev", "dom0", "test.Env+x", b"");
    assert_eq!(out.stdout, direct.stdout);

    // Options end before TARGET; `--` is accepted as their end.
    let out = run_with_input(
        tool(&s, &client, "sd-dev", &["--", "@adminvm", "test.Env+x"]),
        b"",
    );
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+x", "x", ("keyword", "<unset>", "adminvm"))
    );

    // The 4.0 `$` keywords still work: every `$` becomes `@`.
    let out = run_with_input(
        tool(&s, &client, "sd-dev", &["$adminvm", "test.Env+x"]),
        b"",
    );
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+x", "x", ("keyword", "<unset>", "adminvm"))
    );
    let out = run_with_input(
        tool(&s, &client, "sd-dev", &["$dispvm:$tag:x", "test.Env+x"]),
        b"",
    );
    assert_refused(&out);
    let log = policy_log(&s);
    assert!(log.contains("invalid target: '@dispvm:@tag:x'"), "{log}");

    let out = run_with_input(tool(&s, &client, "sd-dev", &["dom0", "test.Nope+x"]), b"");
    assert_refused(&out);
}

#[test]
fn qvm_run_from_dom0_runs_a_shell_and_passes_its_status() {
    let s = machine();
    let qvm_run = s.machine().join("dom0/usr/bin/qvm-run");
    let out = run_with_input(
        tool(
            &s,
            &qvm_run,
            "dom0",
            &["--pass-io", "--no-gui", "sd-dev", "echo hi; exit 4"],
        ),
        b"",
    );
    assert_code(&out, 4);
    assert_eq!(text(&out.stdout), "hi\n");

    // The shell runs in the VM, in its home. It gets `COMMAND; exit` first,
    // so the caller's stdin after it is never run as commands.
    let out = run_with_input(
        tool(
            &s,
            &qvm_run,
            "dom0",
            &["--pass-io", "--no-gui", "sd-dev", "pwd -P"],
        ),
        b"echo leaked\n",
    );
    assert_code(&out, 0);
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", real(&s, "sd-dev", "home/user"))
    );

    // --service: COMMAND is SERVICE+ARG, called as dom0.
    service(&s, "sd-dev", "test.Env", ENV_SERVICE);
    let out = run_with_input(
        tool(
            &s,
            &qvm_run,
            "dom0",
            &["--pass-io", "--no-gui", "--service", "sd-dev", "test.Env+z"],
        ),
        b"",
    );
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        vm_env_from_dom0(&s, "1", "z", "test.Env+z", "z")
    );
}

#[test]
fn qvm_run_is_refused_in_a_vm() {
    let s = machine();
    assert!(!s.machine().join("sd-dev/usr/bin/qvm-run").exists());
    let marker = s.dir.path().join("marker");
    let command = format!("touch {}", marker.display());
    let qvm_run = s.machine().join("dom0/usr/bin/qvm-run");
    for target in ["sys-net", "sd-dev"] {
        let out = run_with_input(
            tool(
                &s,
                &qvm_run,
                "sd-dev",
                &["--pass-io", "--no-gui", target, &command],
            ),
            b"",
        );
        assert_code(&out, 2);
        assert_eq!(text(&out.stdout), "");
        assert!(!marker.exists(), "the command ran");
    }
}

#[test]
fn qrexec_client_from_dom0_runs_services() {
    let s = machine();
    service(&s, "sd-dev", "test.Env", ENV_SERVICE);
    let client = s.machine().join("dom0/usr/bin/qrexec-client");
    let out = run_with_input(
        tool(
            &s,
            &client,
            "dom0",
            &["-d", "sd-dev", "DEFAULT:QUBESRPC test.Env+y dom0"],
        ),
        b"",
    );
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        vm_env_from_dom0(&s, "1", "y", "test.Env+y", "y")
    );

    // The remote status is passed through, unless -E.
    service(&s, "sd-dev", "test.Exit", "#!/bin/sh\nexit 6\n");
    let cmd = "DEFAULT:QUBESRPC test.Exit+ dom0";
    assert_code(
        &run_with_input(tool(&s, &client, "dom0", &["-d", "sd-dev", cmd]), b""),
        6,
    );
    assert_code(
        &run_with_input(tool(&s, &client, "dom0", &["-E", "-d", "sd-dev", cmd]), b""),
        0,
    );

    // A local dom0 service with the environment of a call from sd-dev to
    // @adminvm (reference §9).
    service(&s, "dom0", "test.Env", ENV_SERVICE);
    let out = run_with_input(
        tool(
            &s,
            &client,
            "dom0",
            &[
                "-d",
                "dom0",
                "DEFAULT:QUBESRPC test.Env+w sd-dev keyword adminvm",
            ],
        ),
        b"",
    );
    assert_code(&out, 0);
    assert_eq!(
        report(&out),
        dom0_env_from_vm(&s, "test.Env+w", "w", ("keyword", "<unset>", "adminvm"))
    );

    // Only in dom0.
    let out = run_with_input(
        tool(
            &s,
            &client,
            "sd-dev",
            &["-d", "sd-dev", "DEFAULT:QUBESRPC test.Env+y dom0"],
        ),
        b"",
    );
    assert_code(&out, 125);
    assert_eq!(text(&out.stdout), "");
}
