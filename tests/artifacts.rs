//! A job's artifacts, end to end through `qci run --local`: dom0 collects
//! them while a step leaves hostile things where `[artifacts]` looks
//! (symlinks to dom0's settings and out of the workspace, a link loop, a
//! FIFO, a 10 GB sparse file, a setuid file, 100,000 small files), and the
//! host takes in only what is safe. Hostile JUnit reports are refused one
//! by one, each with its reason, and the job keeps its outcome.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use support::{Scratch, parse_log};

const MAKE: &str = r#"set -e
mkdir -p out/empty reports
printf 'built\n' > build.log
printf 'ok\n' > out/ok.txt
printf '#!/bin/sh\n' > out/exec.sh
chmod 4755 out/exec.sh
ln -s "${QCI_DOM0_CONFIG:-/etc/qci/dom0.toml}" out/conf
ln -s "$HOME/.ssh" out/ssh
ln -s loop out/loop
mkfifo out/fifo
truncate -s 10G out/huge.bin
printf '<testsuite/>\n' > reports/a.xml
ln -s /etc reports/etc.xml
exit 3
"#;

const PIPELINE: &str = r#"[[steps]]
name = "make"
command = "sh make.sh"

[artifacts]
paths = ["out/", "*.log"]
reports = ["reports/*.xml"]
"#;

/// Every entry of the archive: path → (is a directory, mode, contents).
fn entries(archive: &std::path::Path) -> BTreeMap<String, (bool, u32, Vec<u8>)> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let is_dir = e.header().entry_type().is_dir();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, (is_dir, mode, data))
        })
        .collect()
}

/// Every path under `dir`, relative, a directory's with a `/`, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                found.push(format!("{rel}/"));
                stack.push(path);
            } else {
                found.push(rel);
            }
        }
    }
    found.sort();
    found
}

const HOSTILE_REPORTS: &str = r#"set -e
mkdir -p r
printf '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n<testsuite><testcase name="&lol2;"/></testsuite>\n' > r/bomb.xml
truncate -s 200M r/big.xml
{ printf '<testsuites>'; i=0; while [ $i -lt 10000 ]; do printf '<testsuite>'; i=$((i+1)); done; } > r/deep.xml
printf '<testsuite><testcase name="caf\351"/></testsuite>' > r/latin1.xml
printf '<testsuite><testcase classname="t" name="&lt;script&gt;alert(1)&lt;/script&gt;"><failure message="&lt;script&gt;alert(2)&lt;/script&gt;"/></testcase><testcase classname="t" name="ok"/></testsuite>' > r/script.xml
"#;

#[test]
fn hostile_reports_are_refused_each_with_its_reason_and_the_job_keeps_its_outcome() {
    let s = Scratch::new();
    let pipeline = "[[steps]]\nname = \"make\"\ncommand = \"sh make.sh\"\n\
                    [artifacts]\nreports = [\"r/*.xml\"]\n";
    let dir = s.project(
        "reports",
        &[(".qci.toml", pipeline), ("make.sh", HOSTILE_REPORTS)],
    );
    let out = s.run(&dir, &[]);
    let (_, state, description) = s.ended(&out, 0);
    assert_eq!(
        (state.as_str(), description.as_str()),
        ("success", "All 1 steps passed"),
        "a refused report changes no outcome"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("qci: report") || l.starts_with("qci: tests") || l.starts_with("qci:   ")
        })
        .collect();
    assert_eq!(
        lines,
        [
            "qci: report files/r/big.xml not read: the report is larger than 32 MiB",
            "qci: report files/r/bomb.xml not read: the report has a DOCTYPE: refused (no DTDs or entities)",
            "qci: report files/r/deep.xml not read: nested deeper than 32 elements",
            "qci: report files/r/latin1.xml not read: invalid UTF-8 at byte 30",
            "qci: tests: 1 of 2 tests failed (1 passed)",
            "qci:   failed t::<script>alert(1)</script>: <script>alert(2)</script>",
        ],
        "{stdout}"
    );
}

#[test]
fn a_failed_jobs_artifacts_are_collected_safely_and_a_dotdot_pattern_is_refused() {
    let s = Scratch::new();
    // A job that declares no artifacts: no line, no archive.
    let plain = s.prepare_machine();
    let artifacts = s.machine().join("dom0/var/lib/qci/artifacts");
    let job = support::job_id(&plain);
    assert!(!s.job_log(&job).contains("artifact"), "{plain}");
    assert_eq!(std::fs::read_dir(&artifacts).unwrap().count(), 0);
    let config = s.machine().join("dom0/etc/qci/dom0.toml");
    let settings = std::fs::read(&config).unwrap();

    let dir = s.project("hostile", &[(".qci.toml", PIPELINE), ("make.sh", MAKE)]);
    let out = s.run(&dir, &[]);
    let (job, state, description) = s.ended(&out, 1);
    assert_eq!(
        (state.as_str(), description.as_str()),
        ("failure", "sh make.sh failed (exit 3)")
    );
    let archive = artifacts.join(format!("{job}.tar"));
    let log = parse_log(&s.job_log(&job));
    let qci: Vec<&str> = log
        .iter()
        .filter(|l| l.step == "qci")
        .map(|l| l.text.as_str())
        .collect();
    let ended = qci.iter().find(|l| l.starts_with("step make ")).unwrap();
    assert!(
        ended.starts_with("step make failed in ") && ended.ends_with("s (exit 3)"),
        "{ended}"
    );
    let said: Vec<&str> = qci
        .iter()
        .copied()
        .filter(|l| l.starts_with("artifact"))
        .collect();
    let summary = format!("artifacts: 4 files, 32 B in {}", archive.display());
    assert_eq!(
        said,
        [
            "artifact out/conf: a symbolic link, not collected",
            "artifact out/fifo: a FIFO, not collected",
            "artifact out/huge.bin: 10.0 GiB, more than the 512.0 MiB left of \
             max_artifact_bytes, not collected",
            "artifact out/loop: a symbolic link, not collected",
            "artifact out/ssh: a symbolic link, not collected",
            "artifact reports/etc.xml: a symbolic link, not collected",
            &summary,
        ]
    );
    // Collected after the leftovers were stopped, before the job's end line.
    let at = |text: &str| qci.iter().position(|l| l.starts_with(text)).unwrap();
    assert!(at("artifacts: 4 files") < at(&format!("job {job}: failure")));

    let got = entries(&archive);
    let expected: BTreeMap<String, (bool, u32, Vec<u8>)> = [
        ("files/build.log", (false, 0o644, &b"built\n"[..])),
        ("files/out/", (true, 0o755, b"")),
        ("files/out/empty/", (true, 0o755, b"")),
        ("files/out/exec.sh", (false, 0o755, b"#!/bin/sh\n")),
        ("files/out/ok.txt", (false, 0o644, b"ok\n")),
        ("files/reports/", (true, 0o755, b"")),
        ("files/reports/a.xml", (false, 0o644, b"<testsuite/>\n")),
        ("reports", (false, 0o644, b"files/reports/a.xml\n")),
    ]
    .into_iter()
    .map(|(p, (d, m, c))| (p.to_owned(), (d, m, c.to_vec())))
    .collect();
    assert_eq!(got, expected);
    let names: Vec<String> = std::fs::read_dir(&artifacts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{job}.tar")], "no .part left");
    assert_eq!(std::fs::read(&config).unwrap(), settings);
    // On the host: the same files, and nothing else anywhere in its store.
    let host = s.state().join("artifacts");
    assert_eq!(
        tree(&host),
        [
            format!("{job}/"),
            format!("{job}/files/"),
            format!("{job}/files/build.log"),
            format!("{job}/files/out/"),
            format!("{job}/files/out/empty/"),
            format!("{job}/files/out/exec.sh"),
            format!("{job}/files/out/ok.txt"),
            format!("{job}/files/reports/"),
            format!("{job}/files/reports/a.xml"),
            format!("{job}/reports"),
        ]
    );
    let exec = std::fs::metadata(host.join(&job).join("files/out/exec.sh")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&exec.permissions()) & 0o7000,
        0,
        "no setuid bit on the host"
    );

    // 100,000 small files: cut at dom0's file limit, with a line, quickly.
    let many = s.project(
        "many",
        &[
            (".qci.toml", "[[steps]]\nname = \"many\"\ncommand = \"mkdir out && cd out && seq 100000 | xargs touch\"\n[artifacts]\npaths = [\"out/\"]\n"),
        ],
    );
    let started = std::time::Instant::now();
    let out = s.run(&many, &[]);
    let (job, state, _) = s.ended(&out, 0);
    assert_eq!(state, "success");
    let log = s.job_log(&job);
    assert!(
        log.contains(
            "[qci] artifacts: the limit of 10000 files was reached; the rest was not collected"
        ),
        "{log}"
    );
    let taken = std::fs::read_dir(host.join(&job).join("files/out"))
        .unwrap()
        .count();
    assert!(taken < 10_000, "{taken} files taken in");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // A pattern that climbs out of the workspace: a bad .qci.toml.
    let climbing = PIPELINE.replace("\"*.log\"", "\"logs/../../etc/*\"");
    let dir = s.project("climbing", &[(".qci.toml", &climbing), ("make.sh", MAKE)]);
    let out = s.run(&dir, &[]);
    let (job, state, description) = s.ended(&out, 2);
    let refusal = ".qci.toml: artifacts: pattern \"logs/../../etc/*\" has a `..` component";
    assert_eq!((state.as_str(), description.as_str()), ("error", refusal));
    assert!(s.job_log(&job).contains(&format!("[qci] {refusal}\n")));
    assert!(!artifacts.join(format!("{job}.tar")).exists());
}
