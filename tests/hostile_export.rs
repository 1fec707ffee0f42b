//! A hostile dev VM: its `qci.Export` sends crafted tar streams. dom0 must
//! refuse each one with the entry and the rule, end the job in `error`, and
//! create nothing outside the workspace.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails by panicking, its setup too"
)]

mod support;

use std::path::Path;
use support::{Scratch, job_id, states};

/// One raw tar entry; paths are written into the header as they are, so
/// they can be what no honest archiver would produce.
fn entry(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
    mode: u32,
) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    builder.append(&h, data).unwrap();
}

fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    // Valid entries first: the hostile one is mixed into a good stream.
    entry(
        &mut b,
        ".qci.toml",
        tar::EntryType::Regular,
        "",
        b"[[steps]]\nname = \"x\"\ncommand = \"true\"\n",
        0o644,
    );
    entry(&mut b, "src/", tar::EntryType::Directory, "", b"", 0o755);
    entry(
        &mut b,
        "src/ok.txt",
        tar::EntryType::Regular,
        "",
        b"fine\n",
        0o644,
    );
    build(&mut b);
    b.into_inner().unwrap()
}

/// Makes the dev VM answer `qci.Export` with `stream`.
fn hostile_export(s: &Scratch, stream: &[u8]) {
    let tar_path = s.machine().join("sd-dev/evil.tar");
    std::fs::write(&tar_path, stream).unwrap();
    s.dev_vm_export(&format!("exec cat {}", tar_path.display()));
}

/// Every file under `root`, relative, for a before/after comparison.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn every_hostile_stream_ends_the_job_in_error_and_nothing_escapes() {
    let s = Scratch::new();
    s.prepare_machine();
    let project = s.noop_project();
    // An absolute path of this run's own, outside the machine and the
    // project: nothing left by an earlier run can be mistaken for an escape.
    let outside = tempfile::tempdir().unwrap();
    let absolute = outside.path().join("qci-escaped");
    let absolute = absolute.to_str().unwrap();

    type Case<'a> = (
        &'static str,
        Box<dyn Fn(&mut tar::Builder<Vec<u8>>) + 'a>,
        &'a str,
        &'static str,
    );
    let cases: [Case; 8] = [
        (
            "absolute",
            Box::new(|b| entry(b, absolute, tar::EntryType::Regular, "", b"x", 0o644)),
            absolute,
            "refused: absolute path",
        ),
        (
            "dotdot",
            Box::new(|b| {
                entry(
                    b,
                    "src/../../escaped",
                    tar::EntryType::Regular,
                    "",
                    b"x",
                    0o644,
                )
            }),
            "src/../../escaped",
            "refused: path contains ..",
        ),
        (
            "symlink out",
            Box::new(|b| {
                entry(
                    b,
                    "link",
                    tar::EntryType::Symlink,
                    "../../../..",
                    b"",
                    0o777,
                )
            }),
            "link",
            "symlink target leaves the destination",
        ),
        (
            "write through symlink",
            Box::new(|b| {
                entry(b, "inside", tar::EntryType::Symlink, "src", b"", 0o777);
                entry(b, "inside/x", tar::EntryType::Regular, "", b"x", 0o644);
            }),
            "inside/x",
            "path goes through a symlink",
        ),
        (
            "hard link",
            Box::new(|b| entry(b, "hl", tar::EntryType::Link, "src/ok.txt", b"", 0o644)),
            "hl",
            "hard links are not allowed",
        ),
        (
            "fifo",
            Box::new(|b| entry(b, "fifo", tar::EntryType::Fifo, "", b"", 0o644)),
            "fifo",
            "fifos are not allowed",
        ),
        (
            "device",
            Box::new(|b| entry(b, "dev", tar::EntryType::Char, "", b"", 0o644)),
            "dev",
            "character devices are not allowed",
        ),
        (
            "truncated",
            Box::new(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_path("big").unwrap();
                h.set_size(1 << 20);
                h.set_cksum();
                b.get_mut().extend_from_slice(h.as_bytes());
                b.get_mut().extend_from_slice(&[0u8; 1000]);
            }),
            "",
            "tar stream is not valid",
        ),
    ];
    for (name, build, entry_name, rule) in cases {
        let before = files(&project);
        hostile_export(&s, &archive(build));
        let out = s.run(&project, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(3), "{name}: {stdout}");
        let job = job_id(&stdout);
        let (state, description) = states(&s.status_file(&job)).pop().unwrap();
        assert_eq!(state, "error", "{name}");
        assert!(
            description.starts_with("Code transfer failed"),
            "{name}: {description}"
        );
        assert!(
            description.contains(entry_name) && description.contains(rule),
            "{name}: {description}"
        );
        // Nothing outside the workspace, and no step ran. `src/../../escaped`
        // would land in dom0's `var/lib/qci/jobs`, beside the workspace: look
        // for it anywhere in the machine and the project.
        assert!(!Path::new(absolute).exists(), "{name}");
        let escaped: Vec<_> = files(s.dir.path())
            .into_iter()
            .filter(|f| f.ends_with("escaped"))
            .collect();
        assert!(escaped.is_empty(), "{name}: {escaped:?}");
        assert_eq!(files(&project), before, "{name}: the project changed");
        let log = s.job_log(&job);
        assert!(
            !log.contains("[qci] step "),
            "{name}: a step ran after a refused transfer"
        );
    }
}

#[test]
fn special_mode_bits_are_stripped_and_the_job_runs() {
    let s = Scratch::new();
    s.prepare_machine();
    let project = s.noop_project();
    let stream = archive(|b| {
        entry(
            b,
            "suid",
            tar::EntryType::Regular,
            "",
            b"#!/bin/sh\n",
            0o6755,
        );
        entry(b, "sticky/", tar::EntryType::Directory, "", b"", 0o1777);
    });
    hostile_export(&s, &stream);
    let out = s.run(&project, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    let ws = s.work_dir().join("jobs").join(job_id(&stdout));
    assert_eq!(
        std::fs::metadata(ws.join("suid"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(ws.join("sticky"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o777
    );
}
