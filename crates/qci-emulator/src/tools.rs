//! The command lines of the emulated qrexec tools. Each parses its options as
//! the real tool does (the subset qci and its users need; anything else is
//! refused by name rather than ignored) and returns the process exit code.

use crate::{Caller, DOM0, Machine};
use qci_qrexec::call::exit;
use std::ffi::OsString;

/// The tools this module can stand in for.
pub const TOOLS: [&str; 3] = ["qrexec-client-vm", "qvm-run", "qrexec-client"];

/// Runs emulated `tool` with `args` (without the program name).
pub fn main(tool: &str, args: Vec<OsString>) -> i32 {
    let args: Vec<String> = match args.into_iter().map(OsString::into_string).collect() {
        Ok(a) => a,
        Err(_) => return fail(tool, exit::PROBLEM, "arguments must be valid UTF-8"),
    };
    let (machine, domain) = match Machine::from_process_env() {
        Ok(m) => m,
        Err(e) => return fail(tool, exit::PROBLEM, &e.to_string()),
    };
    // Started by root from outside the machine (a test, a person): become
    // the domain's user, as every process in it is.
    if let Err(e) = machine.enter() {
        return fail(tool, exit::PROBLEM, &e.to_string());
    }
    let result = match tool {
        "qrexec-client-vm" => qrexec_client_vm(&machine, &domain, &args),
        "qvm-run" => qvm_run(&machine, &domain, &args),
        "qrexec-client" => qrexec_client(&machine, &domain, &args),
        other => Err((exit::PROBLEM, format!("{other} is not an emulated tool"))),
    };
    match result {
        Ok(code) => code,
        Err((code, msg)) => fail(tool, code, &msg),
    }
}

fn fail(tool: &str, code: i32, msg: &str) -> i32 {
    eprintln!("{tool}: {msg}");
    code
}

type ToolResult = Result<i32, (i32, String)>;

fn finish(
    machine: &Machine,
    caller: Caller<'_>,
    target: &str,
    service: &str,
    prefix: Option<&[u8]>,
) -> ToolResult {
    let outcome = machine
        .call(caller, target, service, prefix)
        .map_err(|e| (exit::PROBLEM, e.to_string()))?;
    if let Some(msg) = outcome.message {
        eprintln!("{msg}");
    }
    Ok(outcome.code)
}

/// `qrexec-client-vm [opts] TARGET SERVICE[+ARG]`; options end at TARGET.
fn qrexec_client_vm(machine: &Machine, domain: &str, args: &[String]) -> ToolResult {
    if domain == DOM0 {
        return Err((exit::PROBLEM, "only available in a VM".into()));
    }
    let mut rest = args.iter().map(String::as_str);
    let target = loop {
        match rest.next() {
            Some("--") => break rest.next(),
            Some("-t" | "-T" | "--filter-escape-chars-stdout" | "--filter-escape-chars-stderr") => {
            }
            Some("--no-filter-escape-chars-stdout" | "--no-filter-escape-chars-stderr") => {}
            Some(o) if o.starts_with("--buffer-size=") => {}
            Some("-h" | "--help") => {
                println!("usage: qrexec-client-vm [options] TARGET SERVICE[+ARG]");
                return Ok(0);
            }
            Some(o) if o.starts_with('-') && o.len() > 1 => {
                return Err((2, format!("option {o} is not emulated")));
            }
            other => break other,
        }
    };
    let (Some(target), Some(service)) = (target, rest.next()) else {
        return Err((
            2,
            "usage: qrexec-client-vm [options] TARGET SERVICE[+ARG]".into(),
        ));
    };
    if rest.next().is_some() {
        return Err((exit::PROBLEM, "LOCAL_PROGRAM is not emulated".into()));
    }
    // The target field holds 63 characters; the real client cuts the rest.
    // It also turns every `$` of the 4.0 keywords into `@`
    // (`convert_target_name_keyword`), not just the first.
    let target: String = target.replace('$', "@").chars().take(63).collect();
    finish(machine, Caller::Vm(domain), &target, service, None)
}

/// `qvm-run [opts] VMNAME COMMAND`: with `--service`, COMMAND is
/// `SERVICE[+ARG]`; otherwise it is fed to `qubes.VMShell` as `CMD; exit`.
fn qvm_run(machine: &Machine, domain: &str, args: &[String]) -> ToolResult {
    if domain != DOM0 {
        return Err((2, "only available in dom0 on this machine".into()));
    }
    let mut service = false;
    let mut pass_io = false;
    let mut positional = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--" => {
                positional.extend(rest.by_ref().cloned());
            }
            "-p" | "--pass-io" => pass_io = true,
            "--service" => service = true,
            "--no-gui" | "--gui" | "--no-autostart" | "--autostart" | "-q" | "--quiet" => {}
            "--filter-escape-chars" | "--no-filter-escape-chars" => {}
            "--no-color-output" | "--no-color-stderr" => {}
            "-u" | "--user" => {
                rest.next();
            }
            o if o.starts_with('-') && o.len() > 1 => {
                return Err((2, format!("option {o} is not emulated")));
            }
            _ => positional.push(a.clone()),
        }
    }
    let [vm, command] = positional.as_slice() else {
        return Err((
            2,
            "usage: qvm-run [--pass-io] [--service] VMNAME COMMAND".into(),
        ));
    };
    if !pass_io {
        silence_stdio();
    }
    let caller = Caller::Dom0 { source: DOM0 };
    if service {
        finish(machine, caller, vm, command, None)
    } else {
        let prefix = format!("{command}; exit\n");
        finish(
            machine,
            caller,
            vm,
            "qubes.VMShell",
            Some(prefix.as_bytes()),
        )
    }
}

/// `qrexec-client -d VM [-w N] [-t] [-T] [-E] 'USER:CMD'`, where CMD is
/// `QUBESRPC SERVICE+ARG SOURCE [name|keyword TARGET]` or a shell command.
fn qrexec_client(machine: &Machine, domain: &str, args: &[String]) -> ToolResult {
    if domain != DOM0 {
        return Err((exit::PROBLEM, "only available in dom0".into()));
    }
    let mut vm = None;
    let mut always_zero = false;
    let mut positional = Vec::new();
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "-d" => vm = rest.next().cloned(),
            "-w" => {
                rest.next();
            }
            "-t" | "-T" => {}
            "-E" => always_zero = true,
            o if o.starts_with('-') && o.len() > 1 => {
                return Err((2, format!("option {o} is not emulated")));
            }
            _ => positional.push(a.clone()),
        }
    }
    let (Some(vm), [command]) = (vm, positional.as_slice()) else {
        return Err((2, "usage: qrexec-client -d VM 'USER:COMMAND'".into()));
    };
    let Some((_user, cmd)) = command.split_once(':') else {
        return Err((2, format!("command {command:?} has no USER: prefix")));
    };
    let cmd = cmd.strip_prefix("nogui:").unwrap_or(cmd);
    let code = match cmd.strip_prefix("QUBESRPC ") {
        Some(rpc) => {
            let mut words = rpc.split_whitespace();
            let (Some(service), Some(source)) = (words.next(), words.next()) else {
                return Err((2, format!("bad QUBESRPC command {cmd:?}")));
            };
            // To dom0 the command also names the requested target:
            // `name dom0` or `keyword adminvm` (reference §9).
            let target = match (words.next(), words.next()) {
                (Some("keyword"), Some(keyword)) if vm == DOM0 => format!("@{keyword}"),
                _ => vm.clone(),
            };
            finish(machine, Caller::Dom0 { source }, &target, service, None)?
        }
        None => {
            let prefix = format!("{cmd}; exit\n");
            let caller = Caller::Dom0 { source: DOM0 };
            finish(
                machine,
                caller,
                &vm,
                "qubes.VMShell",
                Some(prefix.as_bytes()),
            )?
        }
    };
    Ok(if always_zero { 0 } else { code })
}

/// Without `--pass-io`, `qvm-run` passes nothing through.
fn silence_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsFd;
        let _ = nix::unistd::dup2_stdin(null.as_fd());
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
}
