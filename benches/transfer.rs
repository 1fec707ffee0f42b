//! Code transfer: the real `qci-vm export JOB` (the dev VM's `qci.Export`)
//! piped into `qci_core::unpack::unpack` in this process, as qci-dom0's
//! fetch does, against `tar -c | tar -x` of the same tree.
//!
//! The tree: 20,000 files and 500 MiB by default (`QCI_BENCH_SCALE` scales
//! both), in nested directories, with sizes from a few bytes to 10 MiB and
//! pseudo-random content. Each side runs twice, alternately (ours, tar, tar,
//! ours), into an emptied destination; the best run counts. Everything
//! happens under `TMPDIR` (`TMPDIR=/dev/shm` takes the disk out of the
//! comparison).

mod common;

use common::{MIB, Rng, mib_per_s, release_dir, scaled, sync};
use qci_core::unpack::{Limits, unpack};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const JOB: &str = "bench-transfer";
const RUNS: usize = 2;

fn main() {
    let bin = release_dir();
    let files = scaled(20_000, 20);
    let total = scaled(500 << 20, 1 << 20);

    let scratch = tempfile::tempdir().expect("tempdir");
    let home = scratch.path().join("home");
    let src = home.join(".qci/work").join(JOB);
    let dst = scratch.path().join("dst");
    eprintln!(
        "transfer: generating {files} files, {:.1} MiB in {}",
        total as f64 / MIB,
        src.display()
    );
    let tree = generate(&src, files, total);
    sync();

    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    // Ours, tar, tar, ours: each side runs once first and once second.
    for turn in 0..RUNS * 2 {
        fresh(&dst);
        if turn % 4 == 0 || turn % 4 == 3 {
            let t = export_unpack(&bin, &home, &dst, &tree);
            eprintln!("transfer: qci export|unpack {:.2} s", t.as_secs_f64());
            ours.push(t);
        } else {
            let t = tar_pipe(&src, &dst, &tree);
            eprintln!("transfer: tar -c | tar -x   {:.2} s", t.as_secs_f64());
            baseline.push(t);
        }
    }
    let _ = fs::remove_dir_all(&dst);

    let ours = mib_per_s(tree.bytes, *ours.iter().min().unwrap());
    let base = mib_per_s(tree.bytes, *baseline.iter().min().unwrap());
    println!(
        "transfer: {} files, {} dirs, {:.1} MiB, on {} (best of {RUNS})",
        tree.files,
        tree.dirs,
        tree.bytes as f64 / MIB,
        fs_type(scratch.path())
    );
    println!("  qci export|unpack   {ours:.1} MiB/s");
    println!("  tar -c | tar -x     {base:.1} MiB/s (baseline)");
    println!("  ratio               {:.2}x (target >= 0.9x)", ours / base);
}

/// The file system type of `dir` (`stat -f`): both sides write to it, and
/// on a disk its writeback can weigh more than either program.
fn fs_type(dir: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown file system".into(),
    }
}

/// What `generate` made, to check each copy against.
struct Tree {
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// Writes `files` files of `total` bytes under `root`: ten large files (a
/// fifth of the bytes) and the rest log-uniformly from bytes to ~300 KiB,
/// in directories 1 to 4 deep of 20 files each.
fn generate(root: &Path, files: u64, total: u64) -> Tree {
    let mut rng = Rng::new(0x5eed);
    let large = 10.min(files / 2);
    let large_bytes = total / 5;
    let small = files - large;
    let weights: Vec<f64> = (0..small)
        .map(|_| 2f64.powf(rng.next_f64() * 16.0))
        .collect();
    let sum: f64 = weights.iter().sum();
    let small_bytes = total - large_bytes;
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (w / sum * small_bytes as f64) as u64)
        .collect();
    // Rounding leftovers go to the first file, so the total is exact.
    sizes[0] += small_bytes - sizes.iter().sum::<u64>();
    for i in 0..large {
        let share = large_bytes / large + u64::from(i == 0) * (large_bytes % large);
        sizes.push(share);
    }

    let mut dirs = std::collections::BTreeSet::new();
    let mut buf = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        // Group `d` of 20 files sits 0 to 3 levels down a tree of fan-out 8.
        let d = i as u64 / 20;
        let mut dir = root.to_owned();
        for level in 0..d % 4 {
            dir.push(format!("d{level}-{}", (d >> (3 * level)) % 8));
        }
        dir.push(format!("g{d}"));
        if dirs.insert(dir.clone()) {
            fs::create_dir_all(&dir).expect("create dir");
        }
        let ext = ["rs", "txt", "bin", "json", "sh"][i % 5];
        let path = dir.join(format!("file{i:05}.{ext}"));
        buf.resize(*size as usize, 0);
        rng.fill(&mut buf);
        let mut f = fs::File::create(&path).expect("create file");
        f.write_all(&buf).expect("write file");
        if ext == "sh" {
            f.set_permissions(fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
    }
    let dirs = count(root).1 - 1;
    Tree {
        files,
        dirs,
        bytes: total,
    }
}

/// (files, directories including `dir`, file bytes) under `dir`.
fn count(dir: &Path) -> (u64, u64, u64) {
    let mut acc = (0, 1, 0);
    for entry in fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            let (f, d, b) = count(&entry.path());
            acc = (acc.0 + f, acc.1 + d, acc.2 + b);
        } else {
            acc = (acc.0 + 1, acc.1, acc.2 + meta.len());
        }
    }
    acc
}

fn check(dst: &Path, tree: &Tree, who: &str) {
    let got = count(dst);
    let want = (tree.files, tree.dirs + 1, tree.bytes);
    assert_eq!(got, want, "{who}: the copy differs (files, dirs, bytes)");
}

/// An empty `dst`, with the previous copy's dirty pages on disk.
fn fresh(dst: &Path) {
    if dst.exists() {
        fs::remove_dir_all(dst).expect("clear destination");
    }
    fs::create_dir(dst).expect("create destination");
    sync();
}

/// Our path: `qci-vm export JOB` as qrexec starts it, into the unpacker.
fn export_unpack(bin: &Path, home: &Path, dst: &Path, tree: &Tree) -> Duration {
    let limits = Limits {
        max_total_bytes: tree.bytes * 2 + (1 << 30),
        ..Limits::default()
    };
    let start = Instant::now();
    let mut child = Command::new(bin.join("qci-vm"))
        .arg("export")
        .env("HOME", home)
        .env("QREXEC_SERVICE_ARGUMENT", JOB)
        .env("QREXEC_REMOTE_DOMAIN", "dom0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start qci-vm export");
    let stdout = child.stdout.take().expect("piped stdout");
    let summary = unpack(stdout, dst, &limits).expect("unpack the export");
    let status = child.wait().expect("wait for qci-vm export");
    let elapsed = start.elapsed();
    assert!(status.success(), "qci-vm export failed: {status}");
    assert_eq!(summary.bytes, tree.bytes, "unpacked bytes");
    check(dst, tree, "qci export|unpack");
    elapsed
}

/// The baseline: GNU tar on both ends of a pipe.
fn tar_pipe(src: &Path, dst: &Path, tree: &Tree) -> Duration {
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"tar -C "$1" -cf - . | tar -C "$2" -xf -"#)
        .arg("sh")
        .arg(src)
        .arg(dst)
        .status()
        .expect("run tar");
    let elapsed = start.elapsed();
    assert!(status.success(), "tar pipe failed: {status}");
    check(dst, tree, "tar -c | tar -x");
    elapsed
}
