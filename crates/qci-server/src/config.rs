//! The `[server]` table of the host's config file (HOST.toml), and the
//! secrets it names. Secrets are never values in the file: it names a file
//! or an environment variable that holds each one.

use qci_core::toml_file::{self, TomlFileError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole host config file: the pool's table and the server's. The
/// server keeps its database and published logs in the pool's `state_dir`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub pool: qci_pool::PoolConfig,
    pub server: ServerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the web server listens, e.g. `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The address people and GitHub reach this host by: status links point
    /// at `PUBLIC_URL/jobs/JOB`.
    pub public_url: String,
    /// The address the dev VM posts statuses to (`/api/jobs/JOB/status`);
    /// defaults to `public_url`.
    #[serde(default)]
    pub relay_url: Option<String>,
    /// The secret GitHub signs webhooks with.
    pub webhook_secret: SecretSource,
    /// Token mode: a token that may post commit statuses (`repo:status`).
    /// Exactly one of this or `github_app` is set.
    #[serde(default)]
    pub github_token: Option<SecretSource>,
    /// App mode: qci authenticates as a GitHub App ([`crate::github_app`]).
    #[serde(default)]
    pub github_app: Option<GithubAppConfig>,
    #[serde(default = "default_github_api")]
    pub github_api_url: String,
    /// Guards `/api/jobs` (list, cancel, retry) and `qci jobs`. Without it
    /// that API is closed.
    #[serde(default)]
    pub admin_token: Option<SecretSource>,
    /// Webhook bodies larger than this are refused unread (GitHub caps
    /// payloads at 25 MB; pushes of many commits reach a few MB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Bound on a job from dispatch to its end, machine boot included.
    #[serde(default = "default_job_timeout", with = "duration")]
    pub job_timeout: Duration,
    /// How many times a job is handed to the pool when it could not start
    /// (hypervisor unreachable, no machine freed within the pool's queue
    /// timeout, lease store trouble) before it ends as `error`.
    #[serde(default = "default_start_attempts")]
    pub start_attempts: u32,
    /// The wait before a job that could not start goes back to the pool;
    /// it doubles after each failed attempt, up to 30 minutes.
    #[serde(default = "default_start_retry_delay", with = "duration")]
    pub start_retry_delay: Duration,
    /// Published logs older than this are deleted; the job stays in history.
    #[serde(default = "default_keep_logs", with = "duration")]
    pub keep_logs: Duration,
    /// Webhook deliveries GitHub made this recently and qci never took (it
    /// was stopped, crashed, or its disk was full) are redelivered, on
    /// start and when storage recovers ([`crate::redelivery`]). GitHub
    /// redelivers only the last 3 days' deliveries, the default; `0s` turns
    /// it off.
    #[serde(default = "default_redeliver_within", with = "duration")]
    pub redeliver_within: Duration,
    /// How long the host keeps trying to post one GitHub status.
    #[serde(default = "default_github_retry", with = "duration")]
    pub github_retry_budget: Duration,
    /// A fork's pull request runs once someone with triage access or more
    /// adds this label (checked with GitHub's permission API: a label is
    /// never trusted alone) ...
    #[serde(default = "default_approve_label")]
    pub approve_label: String,
    /// ... or someone with write access or more comments this (as the
    /// comment's first line): an alias of `/qci approve`, kept so existing
    /// setups go on working. Off with the repository's `comments = false`.
    #[serde(default = "default_approve_comment")]
    pub approve_comment: String,
    #[serde(default)]
    pub repos: Vec<RepoConfig>,
    #[serde(default)]
    pub notify: NotifyConfig,
    /// `[server.actions]`: GitHub Actions jobs whose `runs-on` names one of
    /// its labels get a fresh machine and a single-use runner (App mode
    /// only: the runner's JIT config needs an installation token).
    #[serde(default)]
    pub actions: Option<ActionsConfig>,
}

/// `[server.actions]`: which `runs-on` labels qci serves, and how the
/// runner it starts in the dev VM is registered and started.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// A `runs-on` label to the Qubes version whose machine runs the job,
    /// e.g. `{ "qubes-4.2" = "4.2" }`. A job must also ask for
    /// `self-hosted`, as GitHub requires of every self-hosted runner.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The runner group the runners join (1: the repository's default).
    #[serde(default = "default_runner_group")]
    pub runner_group_id: u64,
    /// Labels every runner gets besides `self-hosted` and the job's Qubes label.
    #[serde(default)]
    pub extra_labels: Vec<String>,
    /// A runner no job reached this long after its machine booted is
    /// powered off and freed: GitHub may have given the job to another runner.
    #[serde(default = "default_pickup_timeout", with = "duration")]
    pub pickup_timeout: Duration,
    /// The runner's work folder, relative to its install directory.
    #[serde(default = "default_work_folder")]
    pub work_folder: String,
    /// The command that starts the runner in the dev VM, run by `sh -c`
    /// from `$HOME` with the encoded JIT config in `$QCI_JITCONFIG` (kept
    /// out of the command line qci logs). The default is the runner that
    /// Salt installs (`qci.actions-runner`).
    #[serde(default = "default_runner_command")]
    pub command: String,
    /// Runners register with this organization
    /// (`POST /orgs/ORG/actions/runners/generate-jitconfig`) for the jobs
    /// of its repositories, rather than with each job's repository. The
    /// App then needs the organization's "Self-hosted runners" permission
    /// (read and write). Jobs of other owners' repositories still get a
    /// repository runner.
    #[serde(default)]
    pub organization: Option<String>,
    /// Runners kept waiting per label, each on a booted machine of its own,
    /// so a job starts without waiting for a boot. A job an idle runner
    /// takes makes the machine started for that job the next idle one:
    /// at most `min_idle` per label plus the queued jobs hold machines.
    /// Needs `organization`: a runner that waits before any job named a
    /// repository can only register with an organization.
    #[serde(default)]
    pub min_idle: u32,
}

impl ActionsConfig {
    /// The Qubes version a job's `runs-on` labels ask for, if qci serves
    /// them: `self-hosted` and exactly one configured label, and no label
    /// the runner would not have (GitHub would never give it the job).
    pub fn version_for(&self, labels: &[String]) -> Result<&str, String> {
        let mut versions = labels.iter().filter_map(|l| self.labels.get_key_value(l));
        let Some((label, version)) = versions.next() else {
            return Err(format!(
                "runs-on {labels:?} names no label of [server.actions]"
            ));
        };
        if versions.next().is_some() {
            return Err(format!("runs-on {labels:?} names two Qubes labels"));
        }
        if !labels.iter().any(|l| l.eq_ignore_ascii_case("self-hosted")) {
            return Err(format!("runs-on {labels:?} lacks self-hosted"));
        }
        let runner = self.runner_labels(label);
        if let Some(other) = labels
            .iter()
            .find(|l| !runner.iter().any(|r| r.eq_ignore_ascii_case(l)))
        {
            return Err(format!(
                "runs-on label {other:?} is not one qci's runners have"
            ));
        }
        Ok(version)
    }

    /// The labels a runner for `label` registers with.
    pub fn runner_labels(&self, label: &str) -> Vec<String> {
        let mut labels = vec!["self-hosted".to_owned(), label.to_owned()];
        labels.extend(self.extra_labels.iter().cloned());
        labels
    }
}

fn default_runner_group() -> u64 {
    1
}
fn default_pickup_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_work_folder() -> String {
    "_work".into()
}
fn default_runner_command() -> String {
    "cd ~/actions-runner && exec ./run.sh --jitconfig \"$QCI_JITCONFIG\"".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// `OWNER/REPO`, as GitHub spells it.
    pub slug: String,
    /// Clone from here instead of the URL in the webhook (a mirror).
    #[serde(default)]
    pub clone_url: Option<String>,
    /// Branch patterns whose pushes run (`*` within a name part, `**` across).
    #[serde(default = "default_branches")]
    pub branches: Vec<String>,
    /// Tag patterns whose pushes run (release jobs). None by default.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Which pull requests run: `"always"` (or `true`, the default) every
    /// opened, reopened or pushed one, on every version, a fork's waiting
    /// for approval; `"label"` only those carrying a label
    /// `LABEL_PREFIX VERSION` (`qci:4.3`), on those versions only, when
    /// labelled and on each push while the label stays; `"off"` (or
    /// `false`) none, comments included. Removing a label stops the runs
    /// of later pushes; it does not cancel a job already running.
    ///
    /// A fork's code runs only once approved: a version label added by
    /// someone with triage access or more (asked of GitHub's permission
    /// API, never read off the label alone) approves the commit labelled
    /// then. Each new push to a fork is code no one reviewed yet, so its
    /// jobs wait again, label or not, until it is labelled again or
    /// someone with write access comments `/qci approve` or `/qci run`
    /// (which approves a fork's head only if qci had it before the comment:
    /// a push after it is not what the commenter saw).
    #[serde(default)]
    pub pull_requests: PullRequests,
    /// Comment commands on pull requests, from people with write access or
    /// more (asked of GitHub's permission API): `/qci run [VERSION…]` (the
    /// commit's versions when none are named), `/qci retry` (the versions
    /// whose latest job on the head failed), `/qci cancel` (the head's
    /// queued and running jobs), `/qci approve`. The command is the
    /// comment's first line. Others' commands do nothing (the delivery's
    /// outcome says why); an accepted one gets a 👍 reaction.
    #[serde(default = "yes")]
    pub comments: bool,
    /// What a version label starts with: `qci:` makes `qci:4.3`.
    #[serde(default = "default_label_prefix")]
    pub label_prefix: String,
    /// The Qubes versions to run on, one job and one status context each,
    /// unless the commit's own `.qci.toml` names its `qubes` (read through
    /// GitHub's contents API with `github_token`, which then needs read
    /// access to the repository's contents).
    #[serde(default = "default_qubes")]
    pub qubes: Vec<String>,
    /// Status contexts are `CONTEXT/qubes-VERSION`.
    #[serde(default = "default_context")]
    pub context: String,
}

/// `pull_requests` of a repository: `true`/`false` as before, or a word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PullRequestsWord")]
pub enum PullRequests {
    #[default]
    Always,
    Label,
    Off,
}

/// What the file may say for [`PullRequests`].
#[derive(Deserialize)]
#[serde(untagged)]
enum PullRequestsWord {
    Bool(bool),
    Word(String),
}

impl TryFrom<PullRequestsWord> for PullRequests {
    type Error = String;

    fn try_from(word: PullRequestsWord) -> Result<Self, String> {
        match word {
            PullRequestsWord::Bool(true) => Ok(Self::Always),
            PullRequestsWord::Bool(false) => Ok(Self::Off),
            PullRequestsWord::Word(w) => match w.as_str() {
                "always" => Ok(Self::Always),
                "label" => Ok(Self::Label),
                "off" => Ok(Self::Off),
                other => Err(format!(
                    "pull_requests {other:?}: expected true, false, \"always\", \"label\" or \"off\""
                )),
            },
        }
    }
}

/// `[server.github_app]`: the App's id and private key (the PEM GitHub
/// offers for download in the App's settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubAppConfig {
    pub app_id: u64,
    /// Read once at start, refused when others may read the file.
    pub private_key: SecretSource,
    /// The installation to use when a caller names none (one installation
    /// only); otherwise it comes from a webhook or is looked up per repository.
    #[serde(default)]
    pub installation_id: Option<u64>,
}

/// The refusal of a config with both ways of authenticating to GitHub.
pub const BOTH_GITHUB_AUTHS: &str = "server: github_token and [server.github_app] are both set; \
     keep one (a personal token, or a GitHub App)";
/// The refusal of a config with neither.
pub const NO_GITHUB_AUTH: &str = "server: neither github_token nor [server.github_app] is set; \
     GitHub needs one (a personal token, or a GitHub App)";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A Slack incoming webhook URL (a secret: it is all it takes to post).
    #[serde(default)]
    pub slack_url: Option<SecretSource>,
    /// A URL that gets every finished job as JSON.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// Where a secret is: `{ file = "/etc/qci/github-token" }` or `{ env = "VAR" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] TomlFileError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Secret(#[from] qci_core::secret::SecretError),
    #[error("the environment variable {0} (a secret named in the config) is not set or empty")]
    SecretEnv(String),
}

impl HostConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: HostConfig = toml_file::read(path)?;
        config
            .pool
            .validate()
            .map_err(|e| ConfigError::Invalid(e.0))?;
        config.server.validate()?;
        config.check_idle_machines()?;
        Ok(config)
    }

    /// Every label `min_idle` keeps runners for has machines of its
    /// version: an idle runner for a version the pool lacks would be
    /// refused a machine, again and again.
    fn check_idle_machines(&self) -> Result<(), ConfigError> {
        let Some(actions) = self.server.actions.as_ref().filter(|a| a.min_idle > 0) else {
            return Ok(());
        };
        for (label, version) in &actions.labels {
            if !self.pool.machines.iter().any(|m| m.qubes == *version) {
                return Err(ConfigError::Invalid(format!(
                    "server.actions: min_idle keeps runners for label {label:?}, \
                     but the pool has no machine of Qubes {version}"
                )));
            }
        }
        Ok(())
    }

    pub fn state_dir(&self) -> &Path {
        &self.pool.state_dir
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(why));
        for url in [Some(&self.public_url), self.relay_url.as_ref()]
            .into_iter()
            .flatten()
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!("server: {url:?} is not an http(s) URL"));
            }
        }
        match (&self.github_token, &self.github_app) {
            (Some(_), Some(_)) => return bad(BOTH_GITHUB_AUTHS.into()),
            (None, None) => return bad(NO_GITHUB_AUTH.into()),
            _ => {}
        }
        if self.start_attempts == 0 {
            return bad("server: start_attempts must be at least 1".into());
        }
        if self.approve_label.trim().is_empty() || self.approve_comment.trim().is_empty() {
            return bad("server: approve_label and approve_comment must not be empty".into());
        }
        if let Some(actions) = &self.actions {
            if actions.labels.is_empty() {
                return bad("server.actions: labels is empty".into());
            }
            for (label, v) in &actions.labels {
                if !qci_core::pipeline::valid_qubes_version(v) {
                    return bad(format!(
                        "server.actions: label {label:?}: bad Qubes version {v:?}"
                    ));
                }
            }
            if let Some(org) = &actions.organization
                && !qci_core::job_file::valid_slug(&format!("{org}/x"))
            {
                return bad(format!(
                    "server.actions: organization {org:?} is not a GitHub account name"
                ));
            }
            if actions.min_idle > 0 && actions.organization.is_none() {
                return bad(
                    "server.actions: min_idle needs organization: a runner that \
                     waits before any job names a repository can only register with \
                     an organization"
                        .into(),
                );
            }
        }
        for repo in &self.repos {
            if !qci_core::job_file::valid_slug(&repo.slug) {
                return bad(format!(
                    "server.repos: slug {:?} is not OWNER/REPO",
                    repo.slug
                ));
            }
            if repo.label_prefix.trim().is_empty() {
                return bad(format!("server.repos {}: label_prefix is empty", repo.slug));
            }
            if repo.qubes.is_empty() {
                return bad(format!("server.repos {}: qubes is empty", repo.slug));
            }
            for v in &repo.qubes {
                if !qci_core::pipeline::valid_qubes_version(v) {
                    return bad(format!(
                        "server.repos {}: bad Qubes version {v:?}",
                        repo.slug
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn repo(&self, slug: &str) -> Option<&RepoConfig> {
        self.repos
            .iter()
            .find(|r| r.slug.eq_ignore_ascii_case(slug))
    }

    pub fn relay_base(&self) -> &str {
        self.relay_url
            .as_deref()
            .unwrap_or(&self.public_url)
            .trim_end_matches('/')
    }

    pub fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

impl SecretSource {
    /// Where the secret is kept, for an error about what it holds (never
    /// the secret itself).
    pub fn origin(&self) -> String {
        match (&self.file, &self.env) {
            (Some(path), _) => format!("file {}", path.display()),
            (None, Some(var)) => format!("environment variable {var}"),
            (None, None) => "nowhere".into(),
        }
    }

    /// Reads the secret now; the server reads each once at start.
    pub fn read(&self) -> Result<String, ConfigError> {
        match (&self.file, &self.env) {
            (Some(path), None) => Ok(qci_core::secret::read_secret(path)?),
            (None, Some(var)) => std::env::var(var)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::SecretEnv(var.clone())),
            _ => Err(ConfigError::Invalid(
                "a secret must name exactly one of `file` or `env`".into(),
            )),
        }
    }
}

fn default_github_api() -> String {
    qci_core::job_file::GITHUB_API_URL.to_owned()
}
fn default_max_body() -> usize {
    5 << 20
}
fn default_job_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_start_attempts() -> u32 {
    5
}
fn default_start_retry_delay() -> Duration {
    Duration::from_secs(60)
}
fn default_keep_logs() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}
fn default_redeliver_within() -> Duration {
    Duration::from_secs(3 * 24 * 3600)
}
fn default_github_retry() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_approve_label() -> String {
    "qci-approved".into()
}
fn default_approve_comment() -> String {
    "/qci approve".into()
}
fn default_label_prefix() -> String {
    "qci:".into()
}
fn default_branches() -> Vec<String> {
    vec!["**".into()]
}
fn default_qubes() -> Vec<String> {
    vec!["4.2".into()]
}
fn default_context() -> String {
    "qci".into()
}
fn yes() -> bool {
    true
}

/// Durations are written as people write them: `90s`, `30m`, `6h`, `90d`.
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        qci_core::pipeline::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_host_file_and_names_the_bad_key() {
        let text = r#"
[pool]
state_dir = "/var/lib/qci-host"
[server]
listen = "127.0.0.1:8080"
public_url = "https://ci.example.org/"
webhook_secret = { env = "QCI_WEBHOOK_SECRET" }
github_token = { file = "/etc/qci/github-token" }
job_timeout = "2h"
[[server.repos]]
slug = "freedomofpress/securedrop-workstation"
tags = ["v*"]
qubes = ["4.2", "4.3"]
"#;
        let config: HostConfig = toml::from_str(text).unwrap();
        config.server.validate().unwrap();
        assert_eq!(config.state_dir(), Path::new("/var/lib/qci-host"));
        assert_eq!(config.server.public_base(), "https://ci.example.org");
        assert_eq!(config.server.relay_base(), "https://ci.example.org");
        assert_eq!(config.server.job_timeout, Duration::from_secs(7200));
        let repo = config
            .server
            .repo("FreedomOfPress/securedrop-workstation")
            .unwrap();
        assert_eq!(repo.branches, ["**"]);
        assert_eq!(repo.qubes, ["4.2", "4.3"]);

        assert!(config.server.github_token.is_some() && config.server.github_app.is_none());
        assert_eq!(repo.pull_requests, PullRequests::Always);
        assert!(repo.comments);
        assert_eq!(repo.label_prefix, "qci:");
        for (said, mode) in [
            ("true", PullRequests::Always),
            ("false", PullRequests::Off),
            ("\"always\"", PullRequests::Always),
            ("\"label\"", PullRequests::Label),
            ("\"off\"", PullRequests::Off),
        ] {
            let with = text.replace("tags = [", &format!("pull_requests = {said}\ntags = ["));
            let config: HostConfig = toml::from_str(&with).unwrap();
            assert_eq!(config.server.repos[0].pull_requests, mode, "{said}");
        }
        let odd = text.replace("tags = [", "pull_requests = \"sometimes\"\ntags = [");
        let err = toml::from_str::<HostConfig>(&odd).unwrap_err().to_string();
        assert!(
            err.contains("\"sometimes\"") && err.contains("\"label\""),
            "{err}"
        );

        let typo = text.replace("job_timeout", "job_timout");
        let err = toml::from_str::<HostConfig>(&typo).unwrap_err().to_string();
        assert!(
            err.contains("job_timout") && err.contains("line 9"),
            "{err}"
        );
    }

    /// `[server.github_app]` instead of `github_token`; both or neither
    /// refused, saying so.
    #[test]
    fn the_actions_table_has_defaults_and_refuses_what_qci_cannot_do() {
        let head = "[pool]\nstate_dir = \"/s\"\n[server]\nlisten = \"127.0.0.1:8080\"\n\
                    public_url = \"https://ci.example.org/\"\nwebhook_secret = { env = \"S\" }\n\
                    [server.github_app]\napp_id = 1\nprivate_key = { file = \"/k\" }\n";
        let load = |actions: &str| {
            let config: HostConfig =
                toml::from_str(&format!("{head}[server.actions]\n{actions}")).unwrap();
            config
                .server
                .validate()
                .map(|()| config.server.actions.unwrap())
        };
        let a = load("labels = { \"qubes-4.2\" = \"4.2\" }\n").unwrap();
        assert_eq!(a.runner_group_id, 1);
        assert_eq!(a.pickup_timeout, Duration::from_secs(300));
        assert_eq!(a.work_folder, "_work");
        assert!(a.command.contains("run.sh --jitconfig \"$QCI_JITCONFIG\""));
        assert_eq!(a.runner_labels("qubes-4.2"), ["self-hosted", "qubes-4.2"]);
        let refused = |t: &str| load(t).unwrap_err().to_string();
        assert!(refused("labels = {}\n").contains("labels is empty"));
        assert!(refused("labels = { q = \"4.2; x\" }\n").contains("bad Qubes version"));
        assert!(
            refused("labels = { q = \"4.2\" }\nmin_idle = 1\n")
                .contains("min_idle needs organization")
        );
        assert!(
            refused("labels = { q = \"4.2\" }\norganization = \"a b\"\n")
                .contains("not a GitHub account name")
        );
        let idle =
            load("labels = { q = \"4.2\" }\norganization = \"acme\"\nmin_idle = 2\n").unwrap();
        assert_eq!(
            (idle.min_idle, idle.organization.as_deref()),
            (2, Some("acme"))
        );
        let unknown: Result<HostConfig, _> = toml::from_str(&format!(
            "{head}[server.actions]\nlabels = {{}}\nlabel = 1\n"
        ));
        assert!(unknown.is_err());
    }

    #[test]
    fn min_idle_needs_a_machine_for_every_label() {
        let config = |labels: &str| -> HostConfig {
            toml::from_str(&format!(
                "[pool]\nstate_dir = \"/s\"\n[[pool.machines]]\nname = \"m\"\nqubes = \"4.2\"\n\
                 backend = \"local\"\npath = \"/m\"\n[server]\nlisten = \"127.0.0.1:8080\"\n\
                 public_url = \"https://ci.example.org/\"\nwebhook_secret = {{ env = \"S\" }}\n\
                 [server.github_app]\napp_id = 1\nprivate_key = {{ file = \"/k\" }}\n\
                 [server.actions]\nlabels = {{ {labels} }}\norganization = \"acme\"\nmin_idle = 1\n"
            ))
            .unwrap()
        };
        assert!(
            config("\"qubes-4.2\" = \"4.2\"")
                .check_idle_machines()
                .is_ok()
        );
        let err = config("\"qubes-4.2\" = \"4.2\", \"qubes-4.3\" = \"4.3\"")
            .check_idle_machines()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "server.actions: min_idle keeps runners for label \"qubes-4.3\", \
             but the pool has no machine of Qubes 4.3"
        );
    }

    #[test]
    fn a_host_uses_a_token_or_an_app_not_both() {
        let head = r#"
[pool]
state_dir = "/var/lib/qci-host"
[server]
listen = "127.0.0.1:8080"
public_url = "https://ci.example.org/"
webhook_secret = { env = "QCI_WEBHOOK_SECRET" }
"#;
        let token = "github_token = { file = \"/etc/qci/github-token\" }\n";
        let app = "[server.github_app]\napp_id = 12345\n\
                   private_key = { file = \"/etc/qci/github-app.pem\" }\n";
        let config: HostConfig = toml::from_str(&format!("{head}{app}")).unwrap();
        config.server.validate().unwrap();
        let github_app = config.server.github_app.unwrap();
        assert_eq!(github_app.app_id, 12345);
        assert_eq!(
            github_app.private_key.file.as_deref(),
            Some(Path::new("/etc/qci/github-app.pem"))
        );
        assert_eq!(github_app.installation_id, None);
        let with_id: HostConfig =
            toml::from_str(&format!("{head}{app}installation_id = 678\n")).unwrap();
        assert_eq!(
            with_id.server.github_app.unwrap().installation_id,
            Some(678)
        );

        let refusal = |text: String| {
            let config: HostConfig = toml::from_str(&text).unwrap();
            config.server.validate().unwrap_err().to_string()
        };
        assert_eq!(
            refusal(format!("{head}{token}{app}")),
            "server: github_token and [server.github_app] are both set; \
             keep one (a personal token, or a GitHub App)"
        );
        assert_eq!(
            refusal(head.to_owned()),
            "server: neither github_token nor [server.github_app] is set; \
             GitHub needs one (a personal token, or a GitHub App)"
        );
    }

    #[test]
    fn a_secret_names_one_place() {
        let both = SecretSource {
            file: Some("/x".into()),
            env: Some("X".into()),
        };
        assert!(both.read().unwrap_err().to_string().contains("exactly one"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, " s3cret\n").unwrap();
        let file = SecretSource {
            file: Some(path.clone()),
            env: None,
        };
        // Readable by others (the default umask's 0644): refused.
        let err = file.read().unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(file.read().unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            file.read(),
            Err(ConfigError::Secret(
                qci_core::secret::SecretError::Empty { .. }
            ))
        ));
    }
}
