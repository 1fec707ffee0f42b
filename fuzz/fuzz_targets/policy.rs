//! The qrexec policy engine of the emulated machine, fed one policy file.
//!
//! The file can include a few fixed files beside it (see [`Scratch`]), so
//! the directives are reached; inputs whose include paths are absolute or
//! climb with `..` are skipped, so the fuzzer never reads the host's files.
//!
//! Checked, besides not panicking:
//! - Loading is line by line, first stop wins: the file cut in two at a line
//!   boundary loads as its halves do. If the first half fails, the whole
//!   fails with the same message; else if the second half fails (parsed
//!   with its original line numbers), so does the whole.
//! - Evaluation is first match: a call the first half decides is decided
//!   the same by the whole, and a call it has no rule for is decided as the
//!   second half alone decides it. A policy that denies everything (a badly
//!   named included file) stops loading where it is.
//! - An allowed call goes to a qube that exists, to dom0 (with no user, which
//!   qrexec ignores there), or to a disposable of a template for disposables,
//!   and never back to its source.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qci_emulator::policy::{Denied, Policy, Qube, Request, Resolution, System};
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.lines().any(reaches_outside) {
        return;
    }
    let scratch = Scratch::get();
    let whole = Policy::parse_str(text, &scratch.file);
    if let Ok(policy) = &whole {
        for req in REQUESTS {
            check_decision(
                req,
                &policy.evaluate(&req, &scratch.system),
                &scratch.system,
            );
        }
    }

    // Cut after the line break nearest the middle.
    let Some(cut) = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .min_by_key(|&i| i.abs_diff(text.len() / 2))
    else {
        return;
    };
    let (first, second) = text.split_at(cut);
    // Blank lines keep the second half's line numbers, which messages quote.
    let padded = "\n".repeat(first.lines().count()) + second;
    let first = Policy::parse_str(first, &scratch.file);
    let second = Policy::parse_str(&padded, &scratch.file);
    let decide = |policy: &Policy, req: &Request| policy.evaluate(req, &scratch.system);

    let (first, whole) = match (first, whole) {
        (Err(a), Err(w)) => return assert_eq!(a.to_string(), w.to_string()),
        (Err(a), Ok(_)) => panic!("the first half fails ({a}) but the whole loads"),
        (Ok(a), whole) => (a, whole),
    };
    if denies_all(&first, &scratch.system) {
        let whole = whole.expect("loading stops at a policy that denies all");
        for req in REQUESTS {
            assert_eq!(decide(&whole, &req), decide(&first, &req));
        }
        return;
    }
    let (second, whole) = match (second, whole) {
        (Err(b), Err(w)) => return assert_eq!(b.to_string(), w.to_string()),
        (Err(b), Ok(_)) => panic!("the second half fails ({b}) but the whole loads"),
        (Ok(_), Err(w)) => panic!("both halves load but the whole fails: {w}"),
        (Ok(b), Ok(w)) => (b, w),
    };
    let second_denies_all = denies_all(&second, &scratch.system);
    for req in REQUESTS {
        let by_first = decide(&first, &req);
        let expected = if second_denies_all || is_no_match(&by_first) {
            decide(&second, &req)
        } else {
            by_first
        };
        assert_eq!(decide(&whole, &req), expected, "{req:?}");
    }
});

/// A directive line that names a file outside the scratch directory.
fn reaches_outside(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('!')
        && line
            .split_whitespace()
            .skip(1)
            .any(|arg| arg.starts_with('/') || arg.split('/').any(|part| part == ".."))
}

fn is_no_match(decision: &Result<Resolution, Denied>) -> bool {
    matches!(decision, Err(denied) if denied.reason == "no matching rule found")
}

/// Whether the policy refuses every call whatever its rules (a call from a
/// qube that does not exist is otherwise refused for that reason).
fn denies_all(policy: &Policy, system: &System) -> bool {
    let req = Request {
        service: "qci.Run",
        argument: "",
        source: "no-such-qube",
        target: "dom0",
    };
    let Err(denied) = policy.evaluate(&req, system) else {
        panic!("a call from a qube that does not exist was allowed");
    };
    denied.reason != "unknown source qube: no-such-qube"
}

fn check_decision(req: Request, decision: &Result<Resolution, Denied>, system: &System) {
    let Ok(Resolution::Allow { target, user, .. }) = decision else {
        return;
    };
    assert_ne!(target, req.source, "{req:?} loops back");
    if target == "dom0" {
        assert_eq!(user, &None, "a user for dom0 in {req:?}");
    } else if let Some(template) = target.strip_prefix("@dispvm:") {
        assert!(
            system
                .qube(template)
                .is_some_and(|q| q.template_for_dispvms),
            "{req:?} goes to a disposable of {template}"
        );
    } else {
        assert!(
            system.qube(target).is_some(),
            "{req:?} goes to {target}, which does not exist"
        );
    }
}

/// Calls every policy is asked about: the qci services from each kind of
/// source to each kind of target, and the services of the included files.
const REQUESTS: [Request; 24] = {
    const fn call(
        service: &'static str,
        argument: &'static str,
        source: &'static str,
        target: &'static str,
    ) -> Request<'static> {
        Request {
            service,
            argument,
            source,
            target,
        }
    }
    [
        call("qci.Run", "J1", "sd-dev", "@adminvm"),
        call("qci.Run", "J1", "sd-dev", "dom0"),
        call("qci.Run", "J1", "work", "dom0"),
        call("qci.Run", "J1", "dom0", "dom0"),
        call("qci.Run", "", "sd-dev", "@adminvm"),
        call("qci.Run", "J1", "sd-dev", "work"),
        call("qci.Run", "J1", "sd-dev", ""),
        call("qci.Run", "J1", "sd-dev", "@default"),
        call("qci.Run", "J1", "sd-dev", "no-such-qube"),
        call("qci.Run", "J1", "work", "@dispvm"),
        call("qci.Run", "J1", "sd-dev", "@dispvm"),
        call("qci.Run", "J1", "sd-dev", "@dispvm:dvm"),
        call("qci.Run", "J1", "sd-dev", "@dispvm:work"),
        call(
            "qci.Run",
            "J1",
            "sd-dev",
            "uuid:00000000-0000-0000-0000-000000000000",
        ),
        call("qci.Status", "J1", "work", "sd-dev"),
        call("qci.Status", "J1", "dom0", "sd-dev"),
        call("qci.Export", "J1", "work", "sd-dev"),
        call("qci.Extra", "", "sd-dev", "dom0"),
        call("qci.Extra", "x", "work", "sd-dev"),
        call("qci.Svc", "", "sd-dev", "dom0"),
        call("qci.Svc", "arg", "work", "@dispvm"),
        call("qci.Legacy", "", "sd-dev", "dom0"),
        call("qci.Legacy", "arg", "work", "sd-dev"),
        call("other.Service", "", "work", "sd-dev"),
    ]
};

/// A policy directory to parse the input in, with files it can include:
/// `inc/extra` (a 4.1 file), `inc/dir/` (two policy files), `inc/bad/` (a
/// badly named one, which denies every call), `inc/svc` (a 4.0 service
/// file for `!include-service`) and a legacy directory for `!compat-4.0`.
struct Scratch {
    file: PathBuf,
    system: System,
}

impl Scratch {
    fn get() -> &'static Scratch {
        static SCRATCH: OnceLock<Scratch> = OnceLock::new();
        SCRATCH.get_or_init(|| {
            // Kept for the life of the process; scripts/fuzz removes TMPDIR.
            let root = tempfile::tempdir().expect("a scratch directory").keep();
            let policy_d = root.join("etc/qubes/policy.d");
            let files: [(&str, &str); 7] = [
                ("inc/extra", "qci.Extra * sd-dev @adminvm allow\n"),
                ("inc/dir/10-a.policy", "qci.Extra +x @anyvm @anyvm deny\n"),
                (
                    "inc/dir/20-b.policy",
                    "qci.Extra * @anyvm sd-dev allow target=dom0\n",
                ),
                ("inc/bad/Bad.policy", "qci.Extra * @anyvm @anyvm deny\n"),
                (
                    "inc/svc",
                    "sd-dev dom0 allow\n$anyvm $dispvm allow,autostart=no\n",
                ),
                (
                    "../../qubes-rpc/policy/qci.Legacy",
                    "sd-dev dom0 allow\n$anyvm $anyvm deny\n",
                ),
                (
                    "../../qubes-rpc/policy/qci.Legacy+arg",
                    "work sd-dev allow,user=root\n",
                ),
            ];
            for (name, text) in files {
                let path = policy_d.join(name);
                fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
                fs::write(&path, text).expect("a policy file");
            }
            let qube = |name: &str, klass: &str| Qube {
                name: name.into(),
                klass: klass.into(),
                ..Qube::default()
            };
            let system = System {
                qubes: vec![
                    qube("dom0", "AdminVM"),
                    Qube {
                        tags: vec!["qci".into()],
                        ..qube("sd-dev", "AppVM")
                    },
                    Qube {
                        default_dispvm: Some("dvm".into()),
                        ..qube("work", "AppVM")
                    },
                    Qube {
                        template_for_dispvms: true,
                        tags: vec!["dvm".into()],
                        ..qube("dvm", "AppVM")
                    },
                ],
            };
            Scratch {
                file: policy_d.join("30-fuzz.policy"),
                system,
            }
        })
    }
}
