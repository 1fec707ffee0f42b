//! Hostile tar streams against the dom0 unpacker. Each stream is crafted
//! byte by byte where the tar crate's builder would refuse to write it, and
//! every refusal is checked for the entry and rule it names and for leaving
//! nothing outside the destination.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qci_core::unpack::{Limits, Summary, UnpackError, unpack};
use tar::{Builder, EntryType, Header};
use tempfile::TempDir;

const MTIME: u64 = 1_700_000_000;
const SENTINEL: &str = "untouched";

/// A tar stream built entry by entry, with raw names.
struct Tar(Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(Builder::new(Vec::new()))
    }

    /// Appends one member; names and targets of 100 bytes or more go into
    /// GNU long-name headers, as GNU tar does.
    fn raw(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut header = Header::new_gnu();
        if name.len() < 100 {
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
        } else {
            self.extension(EntryType::GNULongName, name);
            header.as_old_mut().name[..99].copy_from_slice(&name[..99]);
        }
        if link.len() < 100 {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        } else {
            self.extension(EntryType::GNULongLink, link);
            header.as_old_mut().linkname[..99].copy_from_slice(&link[..99]);
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(MTIME);
        header.set_cksum();
        self.0.append(&header, data).expect("append");
        self
    }

    fn extension(&mut self, kind: EntryType, value: &[u8]) -> &mut Self {
        let mut data = value.to_vec();
        data.push(0);
        self.header_only(kind, b"././@LongLink", data.len() as u64);
        self.0.get_mut().extend_from_slice(&data);
        self.pad();
        self
    }

    /// A pax header with the given records.
    fn pax(&mut self, kind: EntryType, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
            // The length counts its own digits.
            let mut len = body.len() + 1;
            while body.len() + len.to_string().len() != len {
                len = body.len() + len.to_string().len();
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.extend_from_slice(&body);
        }
        self.header_only(kind, b"PaxHeaders/x", data.len() as u64);
        self.0.get_mut().extend_from_slice(&data);
        self.pad();
        self
    }

    /// A header whose data is written (or not) by the caller.
    fn header_only(&mut self, kind: EntryType, name: &[u8], size: u64) -> &mut Self {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_cksum();
        self.0.get_mut().extend_from_slice(header.as_bytes());
        self
    }

    fn pad(&mut self) {
        let buf = self.0.get_mut();
        buf.resize(buf.len().div_ceil(512) * 512, 0);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), b"", mode, data)
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Directory, name.as_bytes(), b"", mode, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            name.as_bytes(),
            target.as_bytes(),
            0o777,
            b"",
        )
    }

    fn kind(&mut self, kind: EntryType, name: &str, link: &str) -> &mut Self {
        self.raw(kind, name.as_bytes(), link.as_bytes(), 0o644, b"")
    }

    /// The stream without the end-of-archive marker.
    fn unfinished(&mut self) -> Vec<u8> {
        self.0.get_ref().clone()
    }

    fn bytes(&mut self) -> Vec<u8> {
        let mut out = self.unfinished();
        out.extend_from_slice(&[0; 1024]);
        out
    }
}

/// A temporary directory holding `dest` and a sentinel file beside it.
struct Sandbox {
    tmp: TempDir,
    dest: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).expect("mkdir dest");
        fs::write(tmp.path().join("sentinel"), SENTINEL).expect("sentinel");
        Sandbox { tmp, dest }
    }

    fn outside(&self) -> &Path {
        self.tmp.path()
    }

    fn unpack(&self, stream: &[u8], limits: &Limits) -> Result<Summary, UnpackError> {
        unpack(stream, &self.dest, limits)
    }

    /// Nothing appeared beside dest and the sentinel is unchanged.
    fn assert_contained(&self) {
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .expect("read tmp")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names, ["dest", "sentinel"]);
        let sentinel = fs::read_to_string(self.tmp.path().join("sentinel")).expect("read sentinel");
        assert_eq!(sentinel, SENTINEL);
    }
}

fn assert_refused(result: Result<Summary, UnpackError>, entry: &str, rule: &str) {
    match result {
        Err(UnpackError::Refused { entry: e, rule: r }) => {
            assert_eq!((e.as_str(), r.as_str()), (entry, rule));
        }
        other => panic!("expected refusal of {entry:?} ({rule}), got {other:?}"),
    }
}

/// Valid entries that come before a hostile one in the mixed variant.
fn valid_prefix(tar: &mut Tar) {
    tar.dir("src/", 0o755)
        .file("src/main.c", 0o644, b"int main;\n")
        .symlink("main.c", "src/main.c");
}

/// Runs a hostile case alone and after valid entries, followed each time by
/// a valid entry that must never be reached.
fn check(entry: &str, rule: &str, hostile: impl Fn(&mut Tar, &Path)) {
    for prefixed in [false, true] {
        let sandbox = Sandbox::new();
        let mut tar = Tar::new();
        if prefixed {
            valid_prefix(&mut tar);
        }
        hostile(&mut tar, sandbox.outside());
        tar.file("after", 0o644, b"never\n");
        let result = sandbox.unpack(&tar.bytes(), &Limits::default());
        let entry = entry.replace("{tmp}", &sandbox.outside().display().to_string());
        assert_refused(result, &entry, rule);
        sandbox.assert_contained();
        assert!(!sandbox.dest.join("after").exists(), "unpacking went on");
        if prefixed {
            assert_eq!(
                fs::read(sandbox.dest.join("src/main.c")).expect("prefix"),
                b"int main;\n"
            );
        }
    }
}

/// What a tree holds: files with content and mode, dirs with mode, symlinks.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).expect("readlink").display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                format!("dir {mode:o}")
            } else {
                let content = fs::read_to_string(&path).expect("read");
                format!("file {mode:o} {content:?}")
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn valid_tree_unpacks_exactly() {
    let sandbox = Sandbox::new();
    let long_dir = "d".repeat(80);
    let long_file = format!("{long_dir}/{}", "f".repeat(80));
    let mut tar = Tar::new();
    tar.dir("./", 0o755)
        .dir("./a/", 0o755)
        .dir("a/b/", 0o750)
        .file("a/x.txt", 0o644, b"hello\n")
        .file("a/b/run.sh", 0o755, b"#!/bin/sh\necho hi\n")
        .symlink("a/b/up", "../x.txt")
        .symlink("a/b/top", "../../README")
        .symlink("here", ".")
        .symlink("bee", "a/b")
        .file("README", 0o600, b"read me\n")
        .file("implicit/parent/file", 0o644, b"deep\n")
        .file(&long_file, 0o644, b"long\n")
        .file("a/x.txt", 0o644, b"second\n");
    let summary = sandbox
        .unpack(&tar.bytes(), &Limits::default())
        .expect("unpack");
    assert_eq!(
        summary,
        Summary {
            entries: 13,
            bytes: 6 + 18 + 8 + 5 + 5 + 7
        }
    );

    let expected: BTreeMap<String, String> = [
        ("README", "file 600 \"read me\\n\"".to_owned()),
        ("a", "dir 755".to_owned()),
        ("a/b", "dir 750".to_owned()),
        (
            "a/b/run.sh",
            "file 755 \"#!/bin/sh\\necho hi\\n\"".to_owned(),
        ),
        ("a/b/top", "-> ../../README".to_owned()),
        ("a/b/up", "-> ../x.txt".to_owned()),
        ("a/x.txt", "file 644 \"second\\n\"".to_owned()),
        ("bee", "-> a/b".to_owned()),
        ("here", "-> .".to_owned()),
        ("implicit", "dir 755".to_owned()),
        ("implicit/parent", "dir 755".to_owned()),
        ("implicit/parent/file", "file 644 \"deep\\n\"".to_owned()),
        (long_dir.as_str(), "dir 755".to_owned()),
        (long_file.as_str(), "file 644 \"long\\n\"".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut actual = snapshot(&sandbox.dest);
    // Implicit parents get 0o755 minus the umask: only check they are dirs.
    for key in ["implicit", "implicit/parent", long_dir.as_str()] {
        assert!(actual[key].starts_with("dir "), "{key}: {}", actual[key]);
        actual.insert(key.to_owned(), "dir 755".to_owned());
    }
    assert_eq!(actual, expected);

    // Symlinks inside resolve inside.
    assert_eq!(
        fs::read(sandbox.dest.join("a/b/up")).expect("up"),
        b"second\n"
    );
    assert_eq!(
        fs::read(sandbox.dest.join("bee/top")).expect("top"),
        b"read me\n"
    );

    for path in ["a", "a/b", "a/x.txt", "a/b/run.sh", "a/b/up", "README"] {
        let meta = fs::symlink_metadata(sandbox.dest.join(path)).expect("lstat");
        assert_eq!(meta.mtime() as u64, MTIME, "mtime of {path}");
    }
    sandbox.assert_contained();
}

#[test]
fn gnu_tar_output_from_a_pipe_unpacks() {
    if Command::new("tar").arg("--version").output().is_err() {
        // scripts/test-all installs tar: under CI its absence is a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "GNU tar is missing: install it (scripts/test-all does)"
        );
        eprintln!("SKIPPED: no tar binary; install GNU tar");
        return;
    }
    let source = tempfile::tempdir().expect("tempdir");
    let deep = source.path().join("x".repeat(120)).join("y".repeat(120));
    fs::create_dir_all(&deep).expect("mkdir");
    fs::write(deep.join("z".repeat(120)), "deep\n").expect("write");
    fs::write(source.path().join("Makefile"), "all:\n").expect("write");
    fs::set_permissions(
        source.path().join("Makefile"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("Makefile", source.path().join("link")).expect("symlink");
    let before = snapshot(source.path());

    for format in ["gnu", "pax"] {
        let sandbox = Sandbox::new();
        let mut child = Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(source.path())
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tar");
        let stdout = child.stdout.take().expect("stdout");
        let summary = unpack(stdout, &sandbox.dest, &Limits::default()).expect("unpack");
        assert!(child.wait().expect("wait").success(), "tar was cut off");
        assert_eq!(summary.bytes, 10);
        assert_eq!(snapshot(&sandbox.dest), before, "format {format}");
        sandbox.assert_contained();
    }
}

#[test]
fn absolute_path() {
    check("{tmp}/evil", "absolute path", |tar, tmp| {
        tar.file(&format!("{}/evil", tmp.display()), 0o644, b"x");
    });
}

#[test]
fn dotdot_path() {
    check("../evil", "path contains ..", |tar, _| {
        tar.file("../evil", 0o644, b"x");
    });
}

#[test]
fn dotdot_inside_path() {
    check("a/../../evil", "path contains ..", |tar, _| {
        tar.file("a/../../evil", 0o644, b"x");
    });
}

#[test]
fn dotdot_in_gnu_long_name() {
    let name = format!("{}../../evil", "a/".repeat(60));
    check(&name, "path contains ..", |tar, _| {
        tar.file(&name, 0o644, b"x");
    });
}

#[test]
fn dotdot_in_pax_path() {
    check("../evil", "path contains ..", |tar, _| {
        tar.pax(EntryType::XHeader, &[("path", b"../evil")]);
        tar.file("innocent", 0o644, b"x");
    });
}

#[test]
fn nul_in_pax_path() {
    check("a\0b", "path contains NUL", |tar, _| {
        tar.pax(EntryType::XHeader, &[("path", b"a\0b")]);
        tar.file("innocent", 0o644, b"x");
    });
}

#[test]
fn empty_path() {
    check("", "empty path", |tar, _| {
        tar.file("", 0o644, b"x");
    });
    check(".", "empty path", |tar, _| {
        tar.file(".", 0o644, b"x");
    });
}

#[test]
fn symlink_to_absolute() {
    check("l", "symlink target is absolute", |tar, _| {
        tar.symlink("l", "/etc");
    });
}

#[test]
fn symlink_with_too_many_dotdots() {
    check("a/l", "symlink target leaves the destination", |tar, _| {
        tar.symlink("a/l", "../../x");
    });
    check("l", "symlink target leaves the destination", |tar, _| {
        tar.symlink("l", "..");
    });
}

#[test]
fn symlink_long_target_escaping() {
    let target = format!("{}x", "../".repeat(60));
    check(
        "a/b/l",
        "symlink target leaves the destination",
        |tar, _| {
            tar.symlink("a/b/l", &target);
        },
    );
}

#[test]
fn symlink_with_dotdot_after_a_name() {
    check("l", "symlink target has .. after a name", |tar, _| {
        tar.symlink("l", "x/../y");
    });
}

#[test]
fn symlink_empty_target() {
    check("l", "symlink target is empty", |tar, _| {
        tar.symlink("l", "");
    });
}

#[test]
fn symlink_chain_through_dot() {
    check("d/l", "path goes through a symlink", |tar, _| {
        tar.symlink("d", ".").symlink("d/l", "..");
    });
}

#[test]
fn write_through_symlink_to_dir_inside() {
    check("l/file", "path goes through a symlink", |tar, _| {
        tar.dir("sub/", 0o755)
            .symlink("l", "sub")
            .file("l/file", 0o644, b"x");
    });
}

#[test]
fn write_through_symlink_to_outside() {
    check("l", "symlink target is absolute", |tar, tmp| {
        tar.symlink("l", &tmp.display().to_string())
            .file("l/evil", 0o644, b"x");
    });
}

#[test]
fn dir_through_symlink() {
    check("l/sub/", "path goes through a symlink", |tar, _| {
        tar.dir("real/", 0o755)
            .symlink("l", "real")
            .dir("l/sub/", 0o755);
    });
}

#[test]
fn existing_symlink_never_replaced() {
    check("l", "would replace an existing symlink", |tar, _| {
        tar.file("x", 0o644, b"x")
            .symlink("l", "x")
            .file("l", 0o644, b"y");
    });
    check("l", "would replace an existing symlink", |tar, _| {
        tar.symlink("l", "x").symlink("l", "y");
    });
    check("l/", "would replace an existing symlink", |tar, _| {
        tar.dir("x/", 0o755).symlink("l", "x").dir("l/", 0o755);
    });
}

#[test]
fn existing_dir_never_replaced() {
    check("a", "would replace an existing directory", |tar, _| {
        tar.dir("a/", 0o755).file("a", 0o644, b"x");
    });
    check("a", "would replace an existing directory", |tar, _| {
        tar.dir("a/", 0o755).symlink("a", "b");
    });
}

#[test]
fn file_is_not_a_directory() {
    check("f/x", "path goes through a non-directory", |tar, _| {
        tar.file("f", 0o644, b"x").file("f/x", 0o644, b"y");
    });
    check("f/", "would replace an existing file", |tar, _| {
        tar.file("f", 0o644, b"x").dir("f/", 0o755);
    });
}

#[test]
fn hard_links() {
    check("h", "hard links are not allowed", |tar, _| {
        tar.file("x", 0o644, b"x").kind(EntryType::Link, "h", "x");
    });
    check("h", "hard links are not allowed", |tar, _| {
        tar.kind(EntryType::Link, "h", "../../../../etc/passwd");
    });
    check("h", "hard links are not allowed", |tar, _| {
        tar.kind(EntryType::Link, "h", "/etc/passwd");
    });
}

#[test]
fn devices_and_fifos() {
    check("tty", "character devices are not allowed", |tar, _| {
        tar.kind(EntryType::Char, "tty", "");
    });
    check("sda", "block devices are not allowed", |tar, _| {
        tar.kind(EntryType::Block, "sda", "");
    });
    check("pipe", "fifos are not allowed", |tar, _| {
        tar.kind(EntryType::Fifo, "pipe", "");
    });
}

#[test]
fn other_entry_types() {
    check("c", "entry type '7' is not allowed", |tar, _| {
        tar.kind(EntryType::Continuous, "c", "");
    });
    check("s", "entry type 'S' is not allowed", |tar, _| {
        tar.kind(EntryType::GNUSparse, "s", "");
    });
    check("v", "entry type 'V' is not allowed", |tar, _| {
        tar.kind(EntryType::new(b'V'), "v", "");
    });
}

#[test]
fn pax_sparse_and_size_overrides() {
    check("s", "sparse files are not supported", |tar, _| {
        tar.pax(EntryType::XHeader, &[("GNU.sparse.size", b"100")]);
        tar.file("s", 0o644, b"");
    });
    check("big", "pax size records are not supported", |tar, _| {
        tar.pax(EntryType::XHeader, &[("size", b"9000000000")]);
        tar.file("big", 0o644, b"");
    });
}

#[test]
fn huge_extension_header_refused_before_reading() {
    // Claims 1 TiB of long name and sends nothing: refused from the header.
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.header_only(EntryType::GNULongName, b"././@LongLink", 1 << 40);
    assert_refused(
        sandbox.unpack(&tar.unfinished(), &Limits::default()),
        "././@LongLink",
        "path longer than 4096 bytes",
    );
    let mut tar = Tar::new();
    tar.header_only(EntryType::XHeader, b"PaxHeaders/x", 1 << 40);
    assert_refused(
        sandbox.unpack(&tar.unfinished(), &Limits::default()),
        "PaxHeaders/x",
        "pax header larger than 73728 bytes",
    );
}

#[test]
fn special_bits_stripped() {
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file("setuid", 0o4755, b"x")
        .file("setgid", 0o2755, b"x")
        .file("readonly", 0o444, b"x")
        .dir("sticky/", 0o1777)
        .dir("locked/", 0o500)
        .file("locked/inside", 0o644, b"x");
    sandbox
        .unpack(&tar.bytes(), &Limits::default())
        .expect("unpack");
    for (path, mode) in [
        ("setuid", 0o755),
        ("setgid", 0o755),
        ("readonly", 0o444),
        ("sticky", 0o777),
        ("locked", 0o700),
    ] {
        let meta = fs::symlink_metadata(sandbox.dest.join(path)).expect("lstat");
        assert_eq!(meta.mode() & 0o7777, mode, "mode of {path}");
    }
    sandbox.assert_contained();
}

#[test]
fn total_bytes_limit() {
    let limits = Limits {
        max_total_bytes: 10,
        ..Limits::default()
    };
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file("a", 0o644, b"123456").file("b", 0o644, b"123456");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "b",
        "more than 10 bytes in total",
    );
    assert!(!sandbox.dest.join("b").exists(), "refused before writing");
    sandbox.assert_contained();

    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file("big", 0o644, b"12345678901");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "big",
        "more than 10 bytes in total",
    );
    assert!(!sandbox.dest.join("big").exists(), "refused before writing");

    // A size declared on a directory counts too (its data would be skipped).
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.raw(EntryType::Directory, b"d/", b"", 0o755, b"12345678901");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "d/",
        "more than 10 bytes in total",
    );

    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file("a", 0o644, b"12345").file("b", 0o644, b"12345");
    assert_eq!(
        sandbox
            .unpack(&tar.bytes(), &limits)
            .expect("at the limit")
            .bytes,
        10
    );
}

#[test]
fn entry_count_limit() {
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    valid_prefix(&mut tar);
    tar.file("fourth", 0o644, b"x");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "fourth",
        "more than 3 entries",
    );
    assert!(!sandbox.dest.join("fourth").exists());
    sandbox.assert_contained();

    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    valid_prefix(&mut tar);
    assert_eq!(
        sandbox
            .unpack(&tar.bytes(), &limits)
            .expect("at the limit")
            .entries,
        3
    );
}

#[test]
fn path_length_limit() {
    let limits = Limits {
        max_path_len: 10,
        ..Limits::default()
    };
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file("ok/6chars", 0o644, b"x")
        .file("abcdefghijk", 0o644, b"x");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "abcdefghijk",
        "path longer than 10 bytes",
    );
    sandbox.assert_contained();

    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.symlink("l", "abcdefghijk");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "l",
        "symlink target longer than 10 bytes",
    );

    // GNU long names: at the limit passes, over it is refused at the header.
    let limits = Limits {
        max_path_len: 150,
        ..Limits::default()
    };
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file(&"n".repeat(150), 0o644, b"x");
    sandbox.unpack(&tar.bytes(), &limits).expect("150 bytes");
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.file(&"n".repeat(151), 0o644, b"x");
    assert_refused(
        sandbox.unpack(&tar.bytes(), &limits),
        "././@LongLink",
        "path longer than 150 bytes",
    );
    sandbox.assert_contained();
}

#[test]
fn truncated_streams_are_io_errors() {
    let mut tar = Tar::new();
    tar.file("a", 0o644, &[b'a'; 1000]).file("b", 0o644, b"b");
    let whole = tar.bytes();
    let unfinished = tar.unfinished();
    // Inside a header, inside a file's data, inside padding, at an entry
    // boundary without the end marker, and nothing at all.
    for cut in [100, 512 + 300, 512 + 1000, 2048, unfinished.len(), 0] {
        let sandbox = Sandbox::new();
        let result = sandbox.unpack(&whole[..cut], &Limits::default());
        assert!(
            matches!(result, Err(UnpackError::Io(_))),
            "cut at {cut}: {result:?}"
        );
        sandbox.assert_contained();
    }
    let mut tar = Tar::new();
    tar.extension(EntryType::GNULongName, b"dangling");
    let sandbox = Sandbox::new();
    let result = sandbox.unpack(&tar.bytes(), &Limits::default());
    assert!(matches!(result, Err(UnpackError::Io(_))), "{result:?}");
}

#[test]
fn corrupt_header_is_an_io_error() {
    let mut tar = Tar::new();
    tar.file("a", 0o644, b"a");
    let mut bytes = tar.bytes();
    bytes[0] = b'b';
    let sandbox = Sandbox::new();
    let result = sandbox.unpack(&bytes, &Limits::default());
    assert!(matches!(result, Err(UnpackError::Io(_))), "{result:?}");
}

#[test]
fn trailer_is_drained_and_bounded() {
    let mut tar = Tar::new();
    tar.file("a", 0o644, b"a");
    let mut padded = tar.bytes();
    padded.resize(10240, 0);
    let mut stream: &[u8] = &padded;
    let sandbox = Sandbox::new();
    unpack(&mut stream, &sandbox.dest, &Limits::default()).expect("padded");
    assert!(stream.is_empty(), "trailer left unread");

    let mut endless = tar.bytes();
    endless.resize(3 << 20, 0);
    let sandbox = Sandbox::new();
    assert_refused(
        sandbox.unpack(&endless, &Limits::default()),
        "(end of archive)",
        "more than 1 MiB of data after the end of the archive",
    );
}

#[test]
fn pax_global_header_ignored() {
    let sandbox = Sandbox::new();
    let mut tar = Tar::new();
    tar.pax(EntryType::XGlobalHeader, &[("comment", b"hello")])
        .pax(
            EntryType::XHeader,
            &[("path", b"renamed"), ("mtime", b"1.5")],
        )
        .file("original", 0o644, b"x");
    let summary = sandbox
        .unpack(&tar.bytes(), &Limits::default())
        .expect("unpack");
    assert_eq!(summary.entries, 2);
    let mut content = String::new();
    fs::File::open(sandbox.dest.join("renamed"))
        .expect("renamed")
        .read_to_string(&mut content)
        .expect("read");
    assert_eq!(content, "x");
    assert!(!sandbox.dest.join("original").exists());
}
