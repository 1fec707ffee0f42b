//! `qci gitlab-executor config|prepare|run|cleanup`: GitLab Runner's custom
//! executor over the pool of HOST.toml. gitlab-runner runs each stage as a
//! separate process; they meet through the job id that `config` puts in
//! `job_env` (`QCI_GITLAB_JOB`) and the pool's lease of that id:
//!
//! - `config` prints the runner's JSON (builds and cache directories in the
//!   dev VM, the driver, `job_env`);
//! - `prepare` waits in the pool's FIFO for a machine of the job's Qubes
//!   version, reverts it, boots it and waits for dom0 to reach the dev VM
//!   (exactly what `qci run --qubes` does: [`qci_pool::Pool::lease_booted`]),
//!   then hands the lease to gitlab-runner, the process that runs all the
//!   job's stages, and leaves the machine running;
//! - `run SCRIPT STAGE` places the script and the job's `CUSTOM_ENV_*`
//!   variables (prefix stripped) in the dev VM, runs it there and streams
//!   its output to stdout;
//! - `cleanup` powers the machine off and frees it; with no lease left it
//!   does nothing, so it is safe after a failed or canceled prepare and when
//!   called twice.
//!
//! Failures exit with gitlab-runner's codes, `BUILD_FAILURE_EXIT_CODE` (the
//! job's own fault: its script failed, it asked for a Qubes version no
//! machine runs) or `SYSTEM_FAILURE_EXIT_CODE` (the machine, the hypervisor,
//! the pool, a timeout or a cancel), after one `qci: WHY` line on stderr.

use crate::out::{self, outln};
use crate::pool::{Terminal, cancel_on_signals, interrupted, load, reconcile};
use qci_core::job_id::JobIdError;
use qci_core::{ExitCode, JobId, State};
use qci_pool::backend::Backend;
use qci_pool::guest::{GuestError, GuestPid, sh_quote};
use qci_pool::lease::{LeaseRow, owner_alive, owner_of};
use qci_pool::{Dom0, Pool, PoolConfig, PoolError, Ready, Target};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `job_env` variable that carries the job id to the later stages.
pub const JOB_VAR: &str = "QCI_GITLAB_JOB";
/// The job variable that picks the Qubes version (`CUSTOM_ENV_` + this).
pub const QUBES_VAR: &str = "QCI_QUBES";
const CUSTOM_ENV: &str = "CUSTOM_ENV_";

/// A stage, as gitlab-runner calls it.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Stage {
    /// Print the runner's configuration as JSON (config_exec).
    Config {
        /// `builds_dir`: where the job's sources go, in the dev VM.
        #[arg(long, value_name = "DIR", default_value = "/home/user/builds")]
        builds_dir: String,
        /// `cache_dir`: where the job's cache goes, in the dev VM.
        #[arg(long, value_name = "DIR", default_value = "/home/user/cache")]
        cache_dir: String,
    },
    /// Lease a machine of the job's Qubes version, revert it, boot it and
    /// wait for its dev VM (prepare_exec).
    Prepare {
        /// The Qubes version when the job sets no QCI_QUBES variable
        /// (default: the pool's one version, if all its machines share one).
        #[arg(long, value_name = "VERSION")]
        qubes: Option<String>,
    },
    /// Run one stage's script in the dev VM (run_exec).
    Run {
        /// The script gitlab-runner wrote for the stage, on this host.
        script: PathBuf,
        /// The stage's name (prepare_script, get_sources, step_script, ...).
        stage: String,
    },
    /// Power the job's machine off and free it (cleanup_exec).
    Cleanup,
}

/// Whose fault a failure is, as gitlab-runner tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Build,
    System,
}

#[derive(Debug, thiserror::Error)]
pub enum GitlabError {
    #[error(transparent)]
    Host(#[from] crate::pool::HostError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(
        "no job id: neither {JOB_VAR} nor CUSTOM_ENV_CI_JOB_ID is set (stages are run by gitlab-runner)"
    )]
    NoJob,
    #[error("job id from the runner: {0}")]
    JobId(#[source] JobIdError),
    #[error(
        "no Qubes version: set the job variable {QUBES_VAR} (the pool runs {0}), or pass --qubes to prepare"
    )]
    NoQubes(String),
    #[error("job {0} holds no machine (prepare did not lease one, or it was freed)")]
    NoLease(JobId),
    #[error(
        "the lease of job {job} is stale: its holder, the parent of prepare (pid {pid}), is gone; \
         gitlab-runner must run the stages itself (a wrapper script must `exec qci`)"
    )]
    Stale { job: JobId, pid: i64 },
    #[error("cannot read the script {}: {source}", path.display())]
    Script {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stage {0:?}: a stage name is letters, digits and _ only")]
    BadStage(String),
    #[error("machine {machine}: {source}")]
    Guest { machine: String, source: GuestError },
    #[error("no machine could run the job: {0}")]
    GaveUp(String),
    #[error("cannot hand the lease of {machine} to gitlab-runner (pid {pid}): {why}")]
    HandOver {
        machine: String,
        pid: u32,
        why: String,
    },
    #[error("stage {stage} exited with {code}")]
    ScriptFailed { stage: String, code: i32 },
    #[error("stage {stage}: the lease of {machine} expired; the machine was powered off and freed")]
    TimedOut { stage: String, machine: String },
    #[error("stage {stage} canceled; machine {machine} was powered off and freed")]
    Canceled { stage: String, machine: String },
    #[error("stage {stage}: machine {machine} stopped answering: {source}")]
    Lost {
        stage: String,
        machine: String,
        source: GuestError,
    },
}

impl GitlabError {
    pub fn fault(&self) -> Fault {
        match self {
            Self::ScriptFailed { .. } | Self::NoQubes(_) => Fault::Build,
            Self::Pool(e) if e.is_bad_input() => Fault::Build,
            _ => Fault::System,
        }
    }
}

/// The exit code gitlab-runner gave for `fault` (its variables), else
/// qci's own table when run by hand, so a script sees the codes `qci run`
/// would give.
fn exit_code(fault: Fault) -> std::process::ExitCode {
    let (var, default) = match fault {
        Fault::Build => ("BUILD_FAILURE_EXIT_CODE", ExitCode::StepFailed),
        Fault::System => ("SYSTEM_FAILURE_EXIT_CODE", ExitCode::CiError),
    };
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .map_or_else(|| default.into(), std::process::ExitCode::from)
}

/// Runs a stage: its own `qci: WHY` line and gitlab-runner's exit code, not
/// qci's table, since gitlab-runner reads only its own two codes.
pub fn main(config: &Path, stage: &Stage) -> std::process::ExitCode {
    match execute(config, stage) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qci: {e}");
            exit_code(e.fault())
        }
    }
}

fn execute(config: &Path, stage: &Stage) -> Result<(), GitlabError> {
    let env = Env::from_process();
    match stage {
        Stage::Config {
            builds_dir,
            cache_dir,
        } => config_stage(&load(config)?, &env, builds_dir, cache_dir),
        Stage::Prepare { qubes } => prepare(load(config)?, &env, qubes.as_deref()),
        Stage::Run { script, stage } => run(load(config)?, &env, script, stage),
        Stage::Cleanup => cleanup(load(config)?, &env),
    }
}

/// The variables a stage was given.
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The job's variables, `CUSTOM_ENV_` stripped; names a shell cannot
    /// take are left out.
    fn job_vars(&self) -> Vec<(&str, &str)> {
        let mut vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(CUSTOM_ENV)?, v.as_str())))
            .filter(|(k, _)| is_shell_name(k))
            .collect();
        vars.sort();
        vars
    }

    /// `QCI_GITLAB_JOB` from `job_env`, else made as `config` makes it.
    fn job(&self) -> Result<JobId, GitlabError> {
        match self.get(JOB_VAR) {
            Some(j) => JobId::parse(j).map_err(GitlabError::JobId),
            None => self.derive_job(),
        }
    }

    /// `gitlab-RUNNER-JOB` from the runner's id and GitLab's job id (both
    /// numbers; the runner's is left out when GitLab does not give it): one
    /// id per job, whichever stage asks.
    fn derive_job(&self) -> Result<JobId, GitlabError> {
        let job = self
            .get("CUSTOM_ENV_CI_JOB_ID")
            .ok_or(GitlabError::NoJob)?
            .trim();
        let id = match self
            .get("CUSTOM_ENV_CI_RUNNER_ID")
            .map(str::trim)
            .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(runner) => format!("gitlab-{runner}-{job}"),
            None => format!("gitlab-{job}"),
        };
        JobId::parse(&id).map_err(GitlabError::JobId)
    }
}

fn is_shell_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `config`: the JSON gitlab-runner reads. The machine is not known yet
/// (config comes before prepare), so `hostname` is the host's id.
fn config_stage(
    config: &PoolConfig,
    env: &Env,
    builds_dir: &str,
    cache_dir: &str,
) -> Result<(), GitlabError> {
    let mut json = serde_json::json!({
        "builds_dir": builds_dir,
        "cache_dir": cache_dir,
        "builds_dir_is_shared": false,
        "hostname": config.host_id,
        "driver": {"name": "qci", "version": env!("CARGO_PKG_VERSION")},
    });
    // Without the job's variables here, the later stages, which always
    // have them, make the same id themselves.
    match env.derive_job() {
        Ok(job) => json["job_env"] = serde_json::json!({JOB_VAR: job.as_str()}),
        Err(GitlabError::NoJob) => {}
        Err(e) => return Err(e),
    }
    outln!("{json}");
    Ok(())
}

/// The Qubes version: the job's variable, else `--qubes`, else the pool's
/// only version.
fn qubes_version(
    config: &PoolConfig,
    env: &Env,
    flag: Option<&str>,
) -> Result<String, GitlabError> {
    let asked = env
        .get(&format!("{CUSTOM_ENV}{QUBES_VAR}"))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or(flag);
    if let Some(v) = asked {
        return Ok(v.to_owned());
    }
    let mut versions: Vec<&str> = config.machines.iter().map(|m| m.qubes.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    match versions.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => Err(GitlabError::NoQubes(versions.join(", "))),
    }
}

/// `prepare`: a booted machine whose lease gitlab-runner's process holds.
fn prepare(config: PoolConfig, env: &Env, flag: Option<&str>) -> Result<(), GitlabError> {
    let job = env.job()?;
    let qubes = qubes_version(&config, env, flag)?;
    let job_timeout = config.job_timeout;
    let pool = Pool::open(config)?;
    let target = Target::Qubes(qubes.clone());
    pool.check_target(&target)?;
    reconcile(&pool)?;
    // A prepare that gitlab-runner tries again finds its own lease: the
    // machine starts over from its snapshot.
    if let Some(row) = pool.lease_of(&job)? {
        pool.end_lease(&row, None)?;
    }
    let cancel = cancel_on_signals();
    eprintln!("qci: job {job}: waiting for a machine of Qubes {qubes}");
    let terminal = Terminal::default();
    let booted = match pool.lease_booted(&job, &target, &cancel, job_timeout, &terminal)? {
        Ready::Booted(b) => b,
        Ready::GaveUp { why, .. } => return Err(GitlabError::GaveUp(why)),
    };
    let machine = booted.machine.name.clone();
    if interrupted() {
        let row = pool.lease_of(&job)?;
        if let Some(row) = row {
            pool.end_lease(&row, Some((State::Canceled, "GitLab canceled prepare")))?;
        }
        return Err(PoolError::Canceled.into());
    }
    // The stages are gitlab-runner's children; the lease is its, so it
    // outlives this process, and is reconciled when gitlab-runner dies.
    let parent = std::os::unix::process::parent_id();
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
    if matches!(comm.trim(), "sh" | "bash" | "dash" | "zsh") {
        eprintln!(
            "qci: warning: the lease goes to the parent process, {} (pid {parent}), which must \
             live until cleanup: a wrapper script should `exec qci`",
            comm.trim()
        );
    }
    let handed = match owner_of(parent as i32) {
        Some(owner) => pool
            .store()
            .hand_over(&machine, &job, &owner, i64::from(parent))
            .map_err(|e| e.to_string())
            .and_then(|ok| ok.then_some(()).ok_or_else(|| "the lease is gone".into())),
        None => Err("the process is gone".to_owned()),
    };
    if let Err(why) = handed {
        if let Some(row) = pool.lease_of(&job)? {
            let _ = pool.end_lease(&row, Some((State::Error, &why)));
        }
        return Err(GitlabError::HandOver {
            machine,
            pid: parent,
            why,
        });
    }
    let _ = pool.store().run_started(&job, &machine);
    eprintln!(
        "qci: job {job}: machine {machine} (Qubes {qubes}) is up, dev VM {}",
        booted.machine.dev_vm
    );
    Ok(())
}

/// What a script run ended in.
enum End {
    Exited(i32),
    Canceled,
    Expired,
    Lost(GuestError),
}

/// `run SCRIPT STAGE`: the script in the dev VM, its output on stdout.
fn run(config: PoolConfig, env: &Env, script: &Path, stage: &str) -> Result<(), GitlabError> {
    if !is_shell_name(stage) {
        return Err(GitlabError::BadStage(stage.to_owned()));
    }
    let job = env.job()?;
    let call_timeout = config.call_timeout;
    let pool = Pool::open(config)?;
    let cancel = cancel_on_signals();
    let row = pool
        .lease_of(&job)?
        .ok_or_else(|| GitlabError::NoLease(job.clone()))?;
    if !owner_alive(&row.owner) {
        return Err(GitlabError::Stale { job, pid: row.pid });
    }
    let body = std::fs::read(script).map_err(|source| GitlabError::Script {
        path: script.to_owned(),
        source,
    })?;
    let machine = pool
        .config()
        .machine(&row.machine)
        .ok_or_else(|| PoolError::UnknownMachine(row.machine.clone()))?;
    let guest_err = |source| GitlabError::Guest {
        machine: row.machine.clone(),
        source,
    };
    let backend = Backend::open(machine, call_timeout).map_err(|source| PoolError::Hypervisor {
        machine: row.machine.clone(),
        source,
    })?;
    let dom0 = backend.dom0(machine, call_timeout);
    let dir = format!(".qci/gitlab/{job}");
    let mut exports = String::new();
    for (k, v) in env.job_vars() {
        exports.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    // Secrets among the variables: readable by the dev VM's user only.
    let place = |file: &str, data: &[u8], tag: &str| {
        let path = format!("{dir}/{file}");
        dom0.dev_vm(
            &format!(
                "umask 077 && mkdir -p {} && cat > {} && chmod 700 {}",
                sh_quote(&dir),
                sh_quote(&path),
                sh_quote(&path)
            ),
            Some(data),
            &format!("{job}.{tag}"),
        )
        .map(drop)
    };
    place(&format!("{stage}.env"), exports.as_bytes(), "env").map_err(guest_err)?;
    place(&format!("{stage}.sh"), &body, "script").map_err(guest_err)?;
    // The script runs from the home directory with the job's variables;
    // its own shebang picks its shell.
    let command = format!(
        "cd && . {d}/{stage}.env && exec {d}/{stage}.sh",
        d = sh_quote(&dir)
    );
    let output = format!("{}/qci-gitlab-{job}-{stage}.out", backend.tmp_dir);
    let start = format!(
        "exec qvm-run --pass-io --no-gui {} {} < /dev/null > {} 2>&1",
        sh_quote(&machine.dev_vm),
        sh_quote(&command),
        sh_quote(&output),
    );
    let pid = backend
        .guest
        .start(&["sh".into(), "-c".into(), start])
        .map_err(guest_err)?;
    let end = follow(&backend, pid, &output, &row, call_timeout, &|| {
        interrupted() || cancel.load(std::sync::atomic::Ordering::Relaxed)
    });
    let _ = dom0.sh(&format!("rm -f {}", sh_quote(&output)));
    let name = row.machine.clone();
    match end {
        End::Exited(0) => {
            record_step(&pool, &job, stage, 0);
            Ok(())
        }
        // qvm-run also fails when the dev VM or qrexec does: the exit is the
        // script's only if the dev VM still answers.
        End::Exited(code) if !dev_vm_answers(&dom0) => Err(GitlabError::Lost {
            stage: stage.to_owned(),
            machine: name,
            source: GuestError::Failed(format!(
                "the script's qvm-run exited with {code} and {} no longer answers",
                machine.dev_vm
            )),
        }),
        End::Exited(code) => {
            record_step(&pool, &job, stage, code);
            Err(GitlabError::ScriptFailed {
                stage: stage.to_owned(),
                code,
            })
        }
        End::Canceled => {
            let why = format!("GitLab canceled stage {stage}");
            pool.end_lease(&row, Some((State::Canceled, &why)))?;
            Err(GitlabError::Canceled {
                stage: stage.to_owned(),
                machine: name,
            })
        }
        End::Expired => {
            let why = format!("stage {stage} outlived the lease");
            pool.end_lease(&row, Some((State::Error, &why)))?;
            Err(GitlabError::TimedOut {
                stage: stage.to_owned(),
                machine: name,
            })
        }
        End::Lost(source) => Err(GitlabError::Lost {
            stage: stage.to_owned(),
            machine: name,
            source,
        }),
    }
}

fn dev_vm_answers(dom0: &Dom0<'_>) -> bool {
    matches!(dom0.check_dev_vm(dom0.timeout), Ok(0))
}

/// The job's own script stages say how the job went, for `qci pool`.
fn record_step(pool: &Pool, job: &JobId, stage: &str, code: i32) {
    if !matches!(stage, "step_script" | "build_script") && !stage.starts_with("step_") {
        return;
    }
    let (state, why) = match code {
        0 => ("success", format!("GitLab {stage} passed")),
        c => ("failure", format!("GitLab {stage} failed (exit {c})")),
    };
    let _ = pool.store().run_ended(job, state, &why, None);
}

/// Streams the growing output file until the script ends, the stage is
/// canceled, the lease expires or dom0 stops answering for twice the call
/// timeout.
fn follow(
    backend: &Backend,
    pid: GuestPid,
    output: &str,
    row: &LeaseRow,
    call_timeout: Duration,
    canceled: &dyn Fn() -> bool,
) -> End {
    const POLL: Duration = Duration::from_millis(100);
    const CHUNK: usize = 1 << 20;
    let expires = Instant::now()
        + Duration::from_secs_f64((row.expires_at - qci_pool::lease::now()).max(0.0));
    let mut offset = 0u64;
    let mut exited: Option<i32> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        // A cancel first: the signal that cancels may also end the script.
        if canceled() {
            return End::Canceled;
        }
        let read = backend.guest.read_at(output, offset, CHUNK);
        let chunk = match read {
            Ok(c) => c,
            Err(e) => {
                if failing_since.get_or_insert_with(Instant::now).elapsed() > call_timeout * 2 {
                    return End::Lost(e);
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        failing_since = None;
        if !chunk.is_empty() {
            offset += chunk.len() as u64;
            out::write(&chunk);
            continue;
        }
        if let Some(code) = exited {
            return End::Exited(code);
        }
        match backend.guest.exit_code(pid) {
            // Once it has ended, one more read: what it wrote last.
            Ok(Some(code)) => {
                exited = Some(code);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                if failing_since.get_or_insert_with(Instant::now).elapsed() > call_timeout * 2 {
                    return End::Lost(e);
                }
            }
        }
        if Instant::now() >= expires {
            return End::Expired;
        }
        std::thread::sleep(POLL);
    }
}

/// `cleanup`: the machine off and free, whatever came before.
fn cleanup(config: PoolConfig, env: &Env) -> Result<(), GitlabError> {
    let job = env.job()?;
    let pool = Pool::open(config)?;
    match pool.lease_of(&job)? {
        Some(row) => {
            let ended = pool.store().run_state(&job)?.is_some();
            let end = (!ended).then_some((State::Error, "GitLab job ended before its script ran"));
            pool.end_lease(&row, end)?;
            eprintln!(
                "qci: job {job}: machine {} powered off and freed",
                row.machine
            );
        }
        None => eprintln!("qci: job {job}: holds no machine, nothing to free"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_job_id_is_the_runners_and_gitlabs_and_job_env_wins() {
        let e = env(&[
            ("CUSTOM_ENV_CI_JOB_ID", "42"),
            ("CUSTOM_ENV_CI_RUNNER_ID", "7"),
        ]);
        assert_eq!(e.job().unwrap().as_str(), "gitlab-7-42");
        let e = env(&[
            ("CUSTOM_ENV_CI_JOB_ID", "42"),
            ("CUSTOM_ENV_CI_RUNNER_ID", "x y"),
        ]);
        assert_eq!(e.job().unwrap().as_str(), "gitlab-42");
        let e = env(&[(JOB_VAR, "gitlab-1-2"), ("CUSTOM_ENV_CI_JOB_ID", "42")]);
        assert_eq!(e.job().unwrap().as_str(), "gitlab-1-2");
        assert!(matches!(env(&[]).job(), Err(GitlabError::NoJob)));
        let e = env(&[("CUSTOM_ENV_CI_JOB_ID", "4 2; rm")]);
        assert!(matches!(e.job(), Err(GitlabError::JobId(_))));
    }

    #[test]
    fn the_qubes_version_is_the_jobs_else_the_flag_else_the_pools_only_one() {
        let text = |versions: &[&str]| {
            let mut t = "[pool]\nhost_id = \"h\"\nstate_dir = \"/tmp/s\"\n".to_owned();
            for (i, v) in versions.iter().enumerate() {
                t.push_str(&format!(
                    "[[pool.machines]]\nname = \"m{i}\"\nqubes = \"{v}\"\nbackend = \"local\"\npath = \"/tmp/m{i}\"\n"
                ));
            }
            t
        };
        let dir = tempfile::tempdir().unwrap();
        let load = |versions: &[&str]| {
            let path = dir.path().join("host.toml");
            std::fs::write(&path, text(versions)).unwrap();
            crate::pool::load(&path).unwrap()
        };
        let one = load(&["4.2", "4.2"]);
        let two = load(&["4.2", "4.3"]);
        let asks = env(&[("CUSTOM_ENV_QCI_QUBES", "4.3")]);
        assert_eq!(qubes_version(&two, &asks, Some("4.2")).unwrap(), "4.3");
        assert_eq!(qubes_version(&two, &env(&[]), Some("4.2")).unwrap(), "4.2");
        assert_eq!(qubes_version(&one, &env(&[]), None).unwrap(), "4.2");
        match qubes_version(&two, &env(&[]), None) {
            Err(GitlabError::NoQubes(v)) => assert_eq!(v, "4.2, 4.3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn job_variables_lose_their_prefix_and_bad_names_are_left_out() {
        let e = env(&[
            ("CUSTOM_ENV_CI_PROJECT_DIR", "/b/p"),
            ("CUSTOM_ENV_bad-name", "x"),
            ("PATH", "/bin"),
            ("CUSTOM_ENV_A", "it's"),
        ]);
        assert_eq!(
            e.job_vars(),
            vec![("A", "it's"), ("CI_PROJECT_DIR", "/b/p")]
        );
    }
}
