//! dom0's hardened tar unpacker, fed raw bytes as the `qci.Export` stream.
//!
//! The workspace is `a/b/ws` in a scratch directory that also holds a
//! sentinel tree: files, a directory and a symlink at the top, beside `ws`
//! and beside `b`, so that a write that climbs one, two or three levels out
//! lands among them. Run as root (as CI and scripts/fuzz run it), the
//! unpacker runs with the scratch directory as the root of the file system
//! (chroot), so a write anywhere at all, by an absolute path or by more
//! `..` than there are levels, lands there too, and the host's files are
//! safe from a broken unpacker. As another user only the first holds.
//! After every input, whether it was accepted or refused:
//!
//! - nothing outside the workspace changed: every sentinel has the inode,
//!   mode, owner, size, link count, times and link target it had (the
//!   change time of a directory also catches an entry added or removed);
//! - inside it, only regular files, directories and symlinks, owned by us,
//!   no setuid, setgid or sticky bit, regular files with one link (no hard
//!   link in or out), directories with `u+rwx` (the caller can remove them);
//! - no symlink leads out of the workspace, following the links inside it
//!   the way the kernel would;
//! - the file bytes on disk are within the byte limit, and within what the
//!   unpacker says it wrote when it succeeded;
//! - the workspace can be removed.
//!
//! Limits are small so that the fuzzer reaches them. A custom mutator
//! repairs the header checksums after most mutations (walking the archive
//! as a reader does), so mutated headers get past the checksum check; one
//! mutation in eight is left as it is, bad checksums included.

#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use nix::unistd::{chroot, fchdir};
use qci_core::unpack::{Limits, unpack};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

const LIMITS: Limits = Limits {
    max_total_bytes: 64 << 10,
    max_entries: 16,
    max_path_len: 1024,
};

fuzz_target!(|data: &[u8]| {
    let scratch = Scratch::get();
    let ws = &scratch.ws;
    let result = match &scratch.way_out {
        Some(way_out) => {
            chroot(&scratch.root).expect("chroot into the scratch directory");
            let result = unpack(data, Path::new("/a/b/ws"), &LIMITS);
            way_out.take();
            result
        }
        None => unpack(data, ws, &LIMITS),
    };

    let after = snapshot(&scratch.root);
    if after != scratch.outside {
        panic!(
            "unpacking changed what is outside the workspace ({result:?}):\n{}",
            diff(&scratch.root, &scratch.outside, &after)
        );
    }
    let bytes = check_inside(ws);
    assert!(bytes <= LIMITS.max_total_bytes, "{bytes} bytes on disk");
    if let Ok(summary) = &result {
        assert!(
            bytes <= summary.bytes,
            "{bytes} bytes on disk, but {summary:?}"
        );
        assert!(summary.entries <= LIMITS.max_entries, "{summary:?}");
    }
    // Emptied, not removed, so that its parent stays as it was.
    for entry in fs::read_dir(ws).expect("the workspace") {
        let path = entry.expect("a workspace entry").path();
        let removed = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        removed.unwrap_or_else(|e| panic!("cannot remove {path:?}: {e}"));
    }
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if !seed.is_multiple_of(8) {
        fix_checksums(&mut data[..size]);
    }
    size
});

/// Walks the archive header by header, as a reader would, and sets each
/// header's checksum to match its bytes.
fn fix_checksums(data: &mut [u8]) {
    let mut at = 0usize;
    while let Some(block) = at.checked_add(512).and_then(|end| data.get_mut(at..end)) {
        if block.iter().all(|&b| b == 0) {
            at += 512;
            continue;
        }
        let mut header = tar::Header::from_byte_slice(block).clone();
        header.set_cksum();
        block.copy_from_slice(header.as_bytes());
        let size = header.entry_size().unwrap_or(0);
        let Some(next) = usize::try_from(size.div_ceil(512).saturating_mul(512))
            .ok()
            .and_then(|data_len| at.checked_add(512)?.checked_add(data_len))
        else {
            return;
        };
        at = next;
    }
}

/// The scratch directory, made once per process.
struct Scratch {
    root: PathBuf,
    ws: PathBuf,
    /// The sentinels as they were before the first input.
    outside: Vec<Option<Node>>,
    /// How to leave the chroot; `None` when this process may not chroot.
    way_out: Option<&'static WayOut>,
}

/// The real root and working directory, open, to return to after a chroot
/// (the working directory stays outside it, so libFuzzer's relative paths
/// keep working inside).
struct WayOut {
    root: fs::File,
    cwd: fs::File,
}

impl WayOut {
    /// Tries a chroot into `root` and back.
    fn new(root: &Path) -> Option<&'static WayOut> {
        let way_out = WayOut {
            root: fs::File::open("/").expect("the root directory"),
            cwd: fs::File::open(".").expect("the working directory"),
        };
        if let Err(e) = chroot(root) {
            eprintln!(
                "unpack: cannot chroot ({e}): only writes that climb out with .. are watched"
            );
            return None;
        }
        let way_out: &'static WayOut = Box::leak(Box::new(way_out));
        way_out.take();
        // A failed check panics inside the chroot: leave it first, so that
        // the panic's report and libFuzzer's crash file are written outside.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            way_out.take();
            report(info);
        }));
        Some(way_out)
    }

    fn take(&self) {
        fchdir(&self.root).expect("back to the real root");
        chroot(".").expect("chroot back to the real root");
        fchdir(&self.cwd).expect("back to the working directory");
    }
}

/// Everything in the scratch directory but the workspace (`a/b/ws`).
const SENTINELS: [&str; 9] = [
    "",
    "keep",
    "keep-dir",
    "keep-dir/inner",
    "keep-link",
    "a",
    "a/keep",
    "a/b",
    "a/b/keep",
];

impl Scratch {
    fn get() -> &'static Scratch {
        static SCRATCH: OnceLock<Scratch> = OnceLock::new();
        SCRATCH.get_or_init(|| {
            // Kept for the life of the process; scripts/fuzz removes TMPDIR.
            let root = tempfile::tempdir().expect("a scratch directory").keep();
            for dir in ["a/b/ws", "keep-dir"] {
                fs::create_dir_all(root.join(dir)).expect("a sentinel directory");
            }
            for file in ["keep", "keep-dir/inner", "a/keep", "a/b/keep"] {
                fs::write(root.join(file), "sentinel\n").expect("a sentinel file");
            }
            std::os::unix::fs::symlink("keep-dir", root.join("keep-link"))
                .expect("a sentinel symlink");
            // File times come from a clock that ticks every few milliseconds:
            // from the next tick on, any change moves them.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let outside = snapshot(&root);
            Scratch {
                ws: root.join("a/b/ws"),
                way_out: WayOut::new(&root),
                root,
                outside,
            }
        })
    }
}

/// What is compared of each sentinel. The change time moves on any write,
/// chmod, chown or time change of a file, and on any entry added to or
/// removed from a directory, and nothing can set it back: so neither bytes
/// nor directory entries need to be read.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    len: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// A symlink's target.
    target: Option<PathBuf>,
}

fn snapshot(root: &Path) -> Vec<Option<Node>> {
    SENTINELS
        .iter()
        .map(|name| {
            let path = root.join(name);
            let meta = fs::symlink_metadata(&path).ok()?;
            Some(Node {
                ino: meta.ino(),
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                len: meta.len(),
                nlink: meta.nlink(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                target: match meta.is_symlink() {
                    true => Some(fs::read_link(&path).ok()?),
                    false => None,
                },
            })
        })
        .collect()
}

/// The sentinels that changed, and what the directories hold now.
fn diff(root: &Path, before: &[Option<Node>], after: &[Option<Node>]) -> String {
    let mut out = String::new();
    for ((name, old), new) in SENTINELS.iter().zip(before).zip(after) {
        if old != new {
            out += &format!("{name:?}: {old:?}\n  -> {new:?}\n");
            if let Ok(entries) = fs::read_dir(root.join(name)) {
                let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
                out += &format!("  holds {names:?}\n");
            }
        }
    }
    out
}

/// Checks every file in the workspace, and gives the bytes of its regular
/// files.
fn check_inside(ws: &Path) -> u64 {
    let uid = fs::symlink_metadata(ws).expect("the workspace").uid();
    let mut bytes = 0;
    let mut todo: Vec<Vec<OsString>> = vec![Vec::new()];
    while let Some(parts) = todo.pop() {
        let path = join(ws, &parts);
        let meta = fs::symlink_metadata(&path).expect("a file in the workspace");
        let kind = meta.file_type();
        assert_eq!(meta.uid(), uid, "{path:?} is owned by someone else");
        assert_eq!(
            meta.mode() & 0o7000,
            0,
            "{path:?} has mode {:o}",
            meta.mode()
        );
        if kind.is_dir() {
            assert_eq!(meta.mode() & 0o700, 0o700, "{path:?} is not u+rwx");
            for entry in fs::read_dir(&path).expect("a workspace directory") {
                let mut child = parts.clone();
                child.push(entry.expect("a directory entry").file_name());
                todo.push(child);
            }
        } else if kind.is_file() {
            assert_eq!(meta.nlink(), 1, "{path:?} is a hard link");
            bytes += meta.len();
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).expect("a symlink's target");
            let mut hops = 0;
            let dir = parts[..parts.len() - 1].to_vec();
            if let Err(why) = resolve(ws, dir, &target, &mut hops) {
                panic!("symlink {path:?} -> {target:?} {why}");
            }
        } else {
            let what = if kind.is_fifo() {
                "a fifo"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else {
                "a socket"
            };
            panic!("{path:?} is {what}");
        }
    }
    bytes
}

/// Where `target`, read from a symlink in the workspace directory `at`,
/// leads: followed name by name as the kernel does, through the symlinks it
/// meets (up to the kernel's 40). An error when it climbs out or is
/// absolute. A name that does not exist is taken as a directory, which can
/// only make a climb out more likely.
fn resolve(
    ws: &Path,
    mut at: Vec<OsString>,
    target: &Path,
    hops: &mut u32,
) -> Result<Vec<OsString>, &'static str> {
    for part in target.components() {
        match part {
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
            Component::CurDir => {}
            Component::ParentDir => {
                at.pop().ok_or("climbs out of the workspace")?;
            }
            Component::Normal(name) => {
                at.push(name.to_owned());
                let path = join(ws, &at);
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) {
                    *hops += 1;
                    if *hops > 40 {
                        // ELOOP: the kernel resolves nothing.
                        return Ok(at);
                    }
                    let next = fs::read_link(&path).expect("a symlink's target");
                    at.pop();
                    at = resolve(ws, at, &next, hops)?;
                }
            }
        }
    }
    Ok(at)
}

fn join(ws: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = ws.to_path_buf();
    path.extend(parts);
    path
}
