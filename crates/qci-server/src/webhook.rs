//! GitHub webhooks: the signature check, the few payload fields qci reads,
//! and what each delivery asks of the queue. Payloads carry far more than
//! this; unknown fields are ignored on purpose (GitHub adds them freely).

use crate::config::{PullRequests, RepoConfig, ServerConfig};
use crate::github::Role;
use hmac::{Hmac, Mac};
use qci_core::job_file::valid_slug;
use qci_core::job_file::{CommitSha, Reason};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Whether `signature` (the `X-Hub-Signature-256` header, `sha256=HEX`) is
/// the HMAC-SHA256 of `body` under `secret`. The comparison is constant-time
/// (`verify_slice`), so timing tells an attacker nothing about the digest.
pub fn signature_valid(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(hex) = signature.and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(digest) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// `sha256=HEX` for `body`: what GitHub sends (tests and benchmarks sign with it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "unsupported event {0:?} (qci handles push, pull_request, issue_comment, check_run, \
         check_suite and ping)"
    )]
    UnknownEvent(String),
    #[error("malformed {event} payload: {source}")]
    Json {
        event: String,
        source: serde_json::Error,
    },
    #[error("bad {0} in the payload")]
    BadField(&'static str),
}

#[derive(Deserialize)]
struct Repo {
    full_name: String,
    clone_url: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repo,
    #[serde(default)]
    head_commit: Option<HeadCommit>,
    pusher: Pusher,
}

#[derive(Deserialize)]
struct HeadCommit {
    message: String,
    author: Pusher,
}

#[derive(Deserialize)]
struct Pusher {
    name: String,
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repo,
    #[serde(default)]
    label: Option<Label>,
    sender: User,
}

#[derive(Deserialize)]
struct PullRequest {
    title: String,
    user: User,
    head: Branch,
    base: Branch,
    /// Its labels now (after the change, in a `labeled` event).
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Deserialize)]
struct Branch {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    /// `null` when the fork was deleted.
    repo: Option<Repo>,
}

#[derive(Deserialize)]
struct Label {
    name: String,
}

#[derive(Deserialize)]
struct IssueCommentEvent {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: Repo,
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    /// Present only when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    body: String,
    user: User,
    created_at: String,
}

#[derive(Deserialize)]
struct CheckApp {
    id: u64,
}

#[derive(Deserialize)]
struct CheckRunEvent {
    action: String,
    check_run: CheckRun,
    repository: Repo,
    sender: User,
}

#[derive(Deserialize)]
struct CheckRun {
    head_sha: String,
    /// What the app that made the check run put there: for qci, the job id.
    #[serde(default)]
    external_id: Option<String>,
    app: CheckApp,
}

#[derive(Deserialize)]
struct CheckSuiteEvent {
    action: String,
    check_suite: CheckSuite,
    repository: Repo,
    sender: User,
}

#[derive(Deserialize)]
struct CheckSuite {
    head_sha: String,
    /// `null` when the branch is gone, or the suite is a fork's.
    #[serde(default)]
    head_branch: Option<String>,
    app: CheckApp,
}

/// A commit to run. Its Qubes versions, and so its jobs, are worked out
/// later, from its `.qci.toml` (see [`crate::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub slug: String,
    /// Where the dev VM clones from (the config's mirror, if it names one).
    pub clone_url: String,
    pub sha: CommitSha,
    pub git_ref: String,
    pub reason: Reason,
    pub author: String,
    pub message: String,
    /// Jobs with the same key are superseded by newer ones (a branch, a PR).
    pub supersede_key: Option<String>,
    pub pr: Option<u64>,
    /// A fork's pull request waits for a maintainer.
    pub needs_approval: bool,
}

/// One job to queue: a commit on one Qubes version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub commit: Commit,
    pub qubes: String,
    /// Its commit status context, `CONTEXT/qubes-VERSION`.
    pub context: String,
}

/// What a delivery asks of the queue. Everything but `Ignore` is kept as a
/// trigger and carried out in the order the deliveries came.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Recorded as received, nothing to do, with the reason.
    Ignore(String),
    /// Run a commit, on the Qubes versions its `.qci.toml` asks for.
    Run(Commit),
    /// Run a commit on these versions only (a version label's), not its
    /// `.qci.toml`'s; it supersedes its pull request's runs of other
    /// commits, and its own runs of these versions.
    RunVersions {
        commit: Commit,
        versions: Vec<String>,
    },
    /// Something `by` asked (a label on a fork's pull request, a comment
    /// command) that holds only if GitHub says their role in the
    /// repository is at least `needs`: a network call, so the resolver
    /// makes it, then does `ask`. `comment` is the comment to react to.
    Asked {
        slug: String,
        pr: u64,
        by: String,
        needs: Role,
        comment: Option<u64>,
        ask: Ask,
    },
    /// A fork's pull request approved, from before approvals were checked
    /// with GitHub (now an [`Ask::Approve`]): kept so that triggers stored
    /// by an older host still resolve. Its waiting jobs may
    /// run. `sha`, when known, limits it to the commit they saw; `before`
    /// (Unix ms) to jobs queued before the approving comment.
    Approve {
        slug: String,
        pr: u64,
        sha: Option<String>,
        before: Option<i64>,
        by: String,
    },
    /// A pull request was closed: its jobs that have not started are dropped.
    Close { slug: String, pr: u64 },
    /// A GitHub Actions job on a label of `[server.actions]`: queued (a
    /// machine and a runner start for it), picked up or completed (its
    /// machine, or its place in the pool's queue, ends).
    WorkflowJob(ActionsJob),
    /// GitHub's Re-run of one check run: the job it names (its
    /// `external_id`) runs again as a new job, if it is one of ours, of
    /// `slug`, on `sha`; whether it is can only be told from the database.
    Rerun {
        slug: String,
        job: String,
        sha: String,
        by: String,
    },
}

/// What someone asked of a pull request, once they are found allowed.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// Its waiting jobs may run: of `sha` only when known, of those queued
    /// before `before` (Unix ms) when known.
    Approve {
        sha: Option<String>,
        before: Option<i64>,
    },
    /// A fork's labelled commit runs on `versions`.
    RunCommit {
        commit: Commit,
        versions: Vec<String>,
    },
    /// Its head (asked of GitHub) runs on `versions`; on its `.qci.toml`'s
    /// when empty. A fork's head runs at once only if qci had it before
    /// `before` (the comment's time, Unix ms): one pushed after the
    /// comment is code its author did not see, and waits for approval.
    Run {
        versions: Vec<String>,
        #[serde(default)]
        before: Option<i64>,
    },
    /// Its head runs again on the versions whose latest job failed.
    Retry,
    /// Its head's queued and running jobs are canceled.
    Cancel,
}

/// What `workflow_job` says happened to an Actions job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    Queued,
    InProgress,
    Completed,
}

/// One Actions job, as a `workflow_job` delivery names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionsJob {
    pub action: JobAction,
    pub slug: String,
    /// GitHub's job id (`workflow_job.id`).
    pub job_id: u64,
    pub run_id: u64,
    pub name: String,
    /// The Qubes version its labels ask for.
    pub qubes: String,
    /// The `[server.actions]` label that picked the version.
    pub label: String,
    /// The runner GitHub gave it to (`in_progress`, `completed`).
    pub runner_name: Option<String>,
    pub runner_id: Option<u64>,
}

#[derive(Deserialize)]
struct WorkflowJobEvent {
    action: String,
    workflow_job: WorkflowJobBody,
    repository: NamedRepository,
}

#[derive(Deserialize)]
struct NamedRepository {
    full_name: String,
}

#[derive(Deserialize)]
struct WorkflowJobBody {
    id: u64,
    #[serde(default)]
    run_id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    runner_id: Option<u64>,
    #[serde(default)]
    runner_name: Option<String>,
}

/// `workflow_job`: only jobs on a label of `[server.actions]`, in App mode,
/// of a configured repository; `waiting` and other actions change nothing.
fn plan_workflow_job(config: &ServerConfig, ev: WorkflowJobEvent) -> Result<Plan, PayloadError> {
    let slug = ev.repository.full_name;
    if !valid_slug(&slug) {
        return Err(PayloadError::BadField("repository.full_name"));
    }
    let Some(actions) = &config.actions else {
        return ignore("workflow_job: [server.actions] is not configured");
    };
    if config.github_app.is_none() {
        return ignore("workflow_job: Actions runners need App mode ([server.github_app])");
    }
    if config.repo(&slug).is_none() {
        return ignore(format!("repository {slug} is not configured"));
    }
    let job = ev.workflow_job;
    let action = match ev.action.as_str() {
        "queued" => JobAction::Queued,
        "in_progress" => JobAction::InProgress,
        "completed" => JobAction::Completed,
        other => {
            return ignore(format!(
                "workflow_job action {:?}",
                other.chars().take(32).collect::<String>()
            ));
        }
    };
    let qubes = match actions.version_for(&job.labels) {
        Ok(v) => v.to_owned(),
        Err(why) => return ignore(format!("workflow_job {}: {why}", job.id)),
    };
    let label = job
        .labels
        .iter()
        .find(|l| actions.labels.contains_key(*l))
        .cloned()
        .unwrap_or_default();
    // A runner's name is ours to match only if it is one qci could have made.
    let runner_name = job.runner_name.filter(|n| {
        !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    Ok(Plan::WorkflowJob(ActionsJob {
        action,
        slug,
        job_id: job.id,
        run_id: job.run_id,
        name: job.name.chars().take(200).collect(),
        qubes,
        label,
        runner_name,
        runner_id: job.runner_id,
    }))
}

fn json<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(body).map_err(|source| PayloadError::Json {
        event: event.to_owned(),
        source,
    })
}

/// A delivery's repository and the App installation it came through
/// (`installation.id`, in App mode), if it names both.
pub fn installation(body: &[u8]) -> Option<(String, u64)> {
    #[derive(Deserialize)]
    struct Installed {
        installation: Option<InstallationRef>,
        repository: Option<NamedRepository>,
    }
    #[derive(Deserialize)]
    struct InstallationRef {
        id: u64,
    }
    let found: Installed = serde_json::from_slice(body).ok()?;
    let repo = found.repository?.full_name;
    valid_slug(&repo).then_some((repo, found.installation?.id))
}

/// Turns one verified delivery into a plan, by the config's filters.
pub fn plan(config: &ServerConfig, event: &str, body: &[u8]) -> Result<Plan, PayloadError> {
    match event {
        "ping" => {
            // Parsed all the same: a malformed body is refused whatever the event.
            json::<serde_json::Value>(event, body)?;
            Ok(Plan::Ignore("ping".into()))
        }
        "push" => plan_push(config, json(event, body)?),
        "pull_request" => plan_pull_request(config, json(event, body)?),
        "issue_comment" => plan_comment(config, json(event, body)?),
        "check_run" => plan_check_run(config, json(event, body)?),
        "check_suite" => plan_check_suite(config, json(event, body)?),
        "workflow_job" => plan_workflow_job(config, json(event, body)?),
        other => Err(PayloadError::UnknownEvent(other.chars().take(64).collect())),
    }
}

fn ignore(why: impl Into<String>) -> Result<Plan, PayloadError> {
    Ok(Plan::Ignore(why.into()))
}

fn checked_repo(repo: &Repo) -> Result<(), PayloadError> {
    if valid_slug(&repo.full_name) {
        Ok(())
    } else {
        Err(PayloadError::BadField("repository.full_name"))
    }
}

fn plan_push(config: &ServerConfig, push: Push) -> Result<Plan, PayloadError> {
    checked_repo(&push.repository)?;
    let Some(repo) = config.repo(&push.repository.full_name) else {
        return ignore(format!(
            "repository {} is not configured",
            push.repository.full_name
        ));
    };
    if push.deleted {
        return ignore(format!("{} was deleted", push.git_ref));
    }
    let sha = CommitSha::parse(&push.after).map_err(|_| PayloadError::BadField("after"))?;
    let (supersede_key, wanted) = if let Some(branch) = push.git_ref.strip_prefix("refs/heads/") {
        (
            Some(format!("{}#branch:{branch}", repo.slug)),
            repo.branches.iter().any(|p| glob(p, branch)),
        )
    } else if let Some(tag) = push.git_ref.strip_prefix("refs/tags/") {
        // A tag names a release: a newer tag never makes an older one moot.
        (None, repo.tags.iter().any(|p| glob(p, tag)))
    } else {
        return ignore(format!("{} is neither a branch nor a tag", push.git_ref));
    };
    if !wanted {
        return ignore(format!("{} matches no pattern in the config", push.git_ref));
    }
    let (author, message) = match push.head_commit {
        Some(c) => (c.author.name, c.message),
        None => (push.pusher.name, String::new()),
    };
    Ok(Plan::Run(Commit {
        slug: repo.slug.clone(),
        clone_url: repo.clone_url.clone().unwrap_or(push.repository.clone_url),
        sha,
        git_ref: push.git_ref,
        reason: Reason::Push,
        author,
        message,
        supersede_key,
        pr: None,
        needs_approval: false,
    }))
}

fn plan_pull_request(config: &ServerConfig, ev: PullRequestEvent) -> Result<Plan, PayloadError> {
    checked_repo(&ev.repository)?;
    let Some(repo) = config.repo(&ev.repository.full_name) else {
        return ignore(format!(
            "repository {} is not configured",
            ev.repository.full_name
        ));
    };
    if repo.pull_requests == PullRequests::Off {
        return ignore("pull requests are off for this repository");
    }
    let pr = &ev.pull_request;
    let head_repo = pr.head.repo.as_ref();
    let base_name = pr.base.repo.as_ref().map(|r| r.full_name.as_str());
    // A deleted fork has no head repository: treat it as a fork.
    let from_fork = head_repo.map(|r| r.full_name.as_str()) != base_name.or(Some(&repo.slug));
    let commit = |needs_approval: bool| -> Result<Commit, PayloadError> {
        let sha = CommitSha::parse(&pr.head.sha).map_err(|_| PayloadError::BadField("head.sha"))?;
        // The commit is in the head repository; the base one only has it
        // under refs/pull/N/head, which a plain clone does not fetch.
        let clone_url = head_repo.map_or(ev.repository.clone_url.as_str(), |r| &r.clone_url);
        Ok(pull_request_commit(
            repo,
            ev.number,
            sha,
            PullRequestHead {
                title: &pr.title,
                author: &pr.user.login,
                git_ref: &pr.head.git_ref,
                clone_url,
            },
            needs_approval,
        ))
    };
    match ev.action.as_str() {
        "opened" | "synchronize" | "reopened" => match repo.pull_requests {
            PullRequests::Label => {
                let versions = label_versions(repo, pr.labels.iter().map(|l| l.name.as_str()));
                if versions.is_empty() {
                    return ignore(format!(
                        "#{} has no {}VERSION label (pull_requests = \"label\")",
                        ev.number, repo.label_prefix
                    ));
                }
                // A fork's new push is code no one has seen: its jobs wait
                // for a new approval, however it was labelled before.
                Ok(Plan::RunVersions {
                    commit: commit(from_fork)?,
                    versions,
                })
            }
            _ => Ok(Plan::Run(commit(from_fork)?)),
        },
        "labeled" => {
            let Some(label) = ev.label.as_ref() else {
                return ignore("a labeled event without its label");
            };
            if label.name == config.approve_label {
                if !from_fork {
                    return ignore("the approve label on a pull request not from a fork");
                }
                return Ok(approve_by_label(repo, &ev, commit(true)?));
            }
            let Some(name) = label.name.strip_prefix(&repo.label_prefix) else {
                return ignore("a label that asks nothing of qci");
            };
            let versions = label_versions(repo, [label.name.as_str()]);
            if versions.is_empty() {
                return ignore(format!(
                    "label {:?} names no Qubes version",
                    name.chars().take(64).collect::<String>()
                ));
            }
            match repo.pull_requests {
                PullRequests::Label if from_fork => Ok(Plan::Asked {
                    slug: repo.slug.clone(),
                    pr: ev.number,
                    by: ev.sender.login.clone(),
                    needs: Role::Triage,
                    comment: None,
                    // Runs only once the labeller's role is checked.
                    ask: Ask::RunCommit {
                        commit: commit(false)?,
                        versions,
                    },
                }),
                PullRequests::Label => Ok(Plan::RunVersions {
                    commit: commit(false)?,
                    versions,
                }),
                _ if from_fork => Ok(approve_by_label(repo, &ev, commit(true)?)),
                _ => ignore(
                    "every version runs already (pull_requests = \"always\"): labels narrow nothing",
                ),
            }
        }
        "unlabeled" => ignore(
            "a label was removed: later pushes do not run for it; jobs already running go on",
        ),
        "closed" => Ok(Plan::Close {
            slug: repo.slug.clone(),
            pr: ev.number,
        }),
        other => ignore(format!("pull_request action {other:?}")),
    }
}

/// A label that approves a fork's waiting jobs on the labelled commit, once
/// GitHub says its sender may triage (labelling needs that on GitHub, but
/// the label is never trusted alone).
fn approve_by_label(repo: &RepoConfig, ev: &PullRequestEvent, commit: Commit) -> Plan {
    Plan::Asked {
        slug: repo.slug.clone(),
        pr: ev.number,
        by: ev.sender.login.clone(),
        needs: Role::Triage,
        comment: None,
        ask: Ask::Approve {
            sha: Some(commit.sha.as_str().to_owned()),
            before: None,
        },
    }
}

/// The Qubes versions that labels `PREFIX VERSION` name, in order, once each.
fn label_versions<'l>(repo: &RepoConfig, labels: impl IntoIterator<Item = &'l str>) -> Vec<String> {
    let mut versions = Vec::new();
    for label in labels {
        if let Some(v) = label.strip_prefix(&repo.label_prefix).map(str::trim)
            && qci_core::pipeline::valid_qubes_version(v)
            && !versions.iter().any(|w| w == v)
        {
            versions.push(v.to_owned());
        }
    }
    versions
}

/// What a pull request's commit is run as, besides its number and sha.
pub struct PullRequestHead<'a> {
    pub title: &'a str,
    pub author: &'a str,
    /// The head branch's name, in the fork or not.
    pub git_ref: &'a str,
    pub clone_url: &'a str,
}

/// A pull request's head commit as a run: the same whether a webhook or a
/// comment command (through the pull request API) asked for it.
pub fn pull_request_commit(
    repo: &RepoConfig,
    number: u64,
    sha: CommitSha,
    head: PullRequestHead<'_>,
    needs_approval: bool,
) -> Commit {
    Commit {
        slug: repo.slug.clone(),
        clone_url: repo
            .clone_url
            .clone()
            .unwrap_or_else(|| head.clone_url.to_owned()),
        sha,
        git_ref: format!("refs/pull/{number}/head"),
        reason: Reason::PullRequest,
        author: head.author.to_owned(),
        message: format!("#{number} {} ({})", head.title, head.git_ref),
        supersede_key: Some(format!("{}#pr:{number}", repo.slug)),
        pr: Some(number),
        needs_approval,
    }
}

/// At most this many versions in one `/qci run`.
const MAX_ASKED_VERSIONS: usize = 8;

fn plan_comment(config: &ServerConfig, ev: IssueCommentEvent) -> Result<Plan, PayloadError> {
    checked_repo(&ev.repository)?;
    let Some(repo) = config.repo(&ev.repository.full_name) else {
        return ignore(format!(
            "repository {} is not configured",
            ev.repository.full_name
        ));
    };
    if ev.action != "created" || ev.issue.pull_request.is_none() {
        return ignore("not a new comment on a pull request");
    }
    if repo.pull_requests == PullRequests::Off {
        return ignore("pull requests are off for this repository");
    }
    if !repo.comments {
        return ignore("comment commands are off for this repository");
    }
    let first = ev
        .comment
        .body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    // Within the second the comment was made: GitHub's stamp has no fraction.
    let made = || -> Result<i64, PayloadError> {
        let created = humantime::parse_rfc3339(&ev.comment.created_at)
            .map_err(|_| PayloadError::BadField("comment.created_at"))?;
        let since = created
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| PayloadError::BadField("comment.created_at"))?;
        Ok(since.as_millis() as i64 + 999)
    };
    let mut words = first.split_whitespace();
    let ask = if first == config.approve_comment.trim() {
        None
    } else if words.next() == Some("/qci") {
        let command = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        match (command, rest.as_slice()) {
            ("approve", []) => None,
            ("retry", []) => Some(Ask::Retry),
            ("cancel", []) => Some(Ask::Cancel),
            ("run", named) => {
                let mut versions: Vec<String> = Vec::new();
                for v in named.iter().take(MAX_ASKED_VERSIONS + 1) {
                    if !qci_core::pipeline::valid_qubes_version(v) {
                        return ignore(format!(
                            "/qci run: {:?} is no Qubes version",
                            v.chars().take(32).collect::<String>()
                        ));
                    }
                    if !versions.iter().any(|w| w == v) {
                        versions.push((*v).to_owned());
                    }
                }
                if versions.len() > MAX_ASKED_VERSIONS {
                    return ignore(format!(
                        "/qci run names more than {MAX_ASKED_VERSIONS} versions"
                    ));
                }
                Some(Ask::Run {
                    versions,
                    before: Some(made()?),
                })
            }
            _ => {
                return ignore(format!(
                    "unknown command {:?} (qci knows /qci run [VERSION…], retry, cancel, approve)",
                    first.chars().take(64).collect::<String>()
                ));
            }
        }
    } else {
        return ignore("a comment that asks nothing of qci");
    };
    let ask = match ask {
        Some(ask) => ask,
        None => Ask::Approve {
            sha: None,
            before: Some(made()?),
        },
    };
    // Anyone can comment: whether this one may is GitHub's to say (the
    // resolver asks), not the comment's `author_association`, which hides
    // private organization members.
    Ok(Plan::Asked {
        slug: repo.slug.clone(),
        pr: ev.issue.number,
        by: ev.comment.user.login,
        needs: Role::Write,
        comment: Some(ev.comment.id),
        ask,
    })
}

/// Why a check run or suite of `app` is not qci's, if it is not: only the
/// configured app's are, or any when the config names none (token mode).
/// GitHub sends a rerequest only to the app whose check it is, but one
/// webhook URL may serve several apps; in token mode the job a check run
/// names is what tells (see `resolve`).
fn foreign_app(config: &ServerConfig, app: &CheckApp) -> Option<String> {
    match &config.github_app {
        Some(ours) if ours.app_id != app.id => Some(format!(
            "app {} made it, not qci's app {}",
            app.id, ours.app_id
        )),
        _ => None,
    }
}

/// What a check run's or suite's event has in common: the repository, the
/// action, and the commit and app of the check.
struct CheckRequest<'e> {
    /// `check_run` or `check_suite`, as the event is named.
    kind: &'static str,
    /// Its `head_sha` field, as a refusal names it.
    sha_field: &'static str,
    repository: &'e Repo,
    action: &'e str,
    head_sha: &'e str,
    app: &'e CheckApp,
}

/// The repository and commit of a re-run qci acts on, or why it does not
/// (a plan that ignores it).
fn rerequested<'c>(
    config: &'c ServerConfig,
    req: &CheckRequest<'_>,
) -> Result<Result<(&'c crate::config::RepoConfig, CommitSha), Plan>, PayloadError> {
    checked_repo(req.repository)?;
    let Some(repo) = config.repo(&req.repository.full_name) else {
        return ignore(format!(
            "repository {} is not configured",
            req.repository.full_name
        ))
        .map(Err);
    };
    if req.action != "rerequested" {
        return ignore(format!("{} action {:?}", req.kind, req.action)).map(Err);
    }
    let sha = CommitSha::parse(req.head_sha).map_err(|_| PayloadError::BadField(req.sha_field))?;
    if let Some(why) = foreign_app(config, req.app) {
        let noun = req.kind.replace('_', " ");
        return ignore(format!("a re-run of a {noun} {why}")).map(Err);
    }
    Ok(Ok((repo, sha)))
}

fn plan_check_run(config: &ServerConfig, ev: CheckRunEvent) -> Result<Plan, PayloadError> {
    let run = ev.check_run;
    let req = CheckRequest {
        kind: "check_run",
        sha_field: "check_run.head_sha",
        repository: &ev.repository,
        action: &ev.action,
        head_sha: &run.head_sha,
        app: &run.app,
    };
    let (repo, sha) = match rerequested(config, &req)? {
        Ok(found) => found,
        Err(ignored) => return Ok(ignored),
    };
    let external = run.external_id.unwrap_or_default();
    if qci_core::JobId::parse(&external).is_err() {
        return ignore(format!(
            "a re-run of a check run whose external_id {:?} is no qci job id",
            external.chars().take(64).collect::<String>()
        ));
    }
    Ok(Plan::Rerun {
        slug: repo.slug.clone(),
        job: external,
        sha: sha.as_str().to_owned(),
        by: ev.sender.login,
    })
}

fn plan_check_suite(config: &ServerConfig, ev: CheckSuiteEvent) -> Result<Plan, PayloadError> {
    let suite = ev.check_suite;
    let req = CheckRequest {
        kind: "check_suite",
        sha_field: "check_suite.head_sha",
        repository: &ev.repository,
        action: &ev.action,
        head_sha: &suite.head_sha,
        app: &suite.app,
    };
    let (repo, sha) = match rerequested(config, &req)? {
        Ok(found) => found,
        Err(ignored) => return Ok(ignored),
    };
    let git_ref = suite
        .head_branch
        .map_or_else(|| sha.as_str().to_owned(), |b| format!("refs/heads/{b}"));
    // Run as a push of the commit would, on its `.qci.toml`'s versions; but
    // superseding nothing: re-running an older commit must not stop the
    // newer runs of its branch.
    Ok(Plan::Run(Commit {
        slug: repo.slug.clone(),
        clone_url: repo.clone_url.clone().unwrap_or(ev.repository.clone_url),
        sha,
        git_ref,
        reason: Reason::Manual,
        author: ev.sender.login.clone(),
        message: format!("Re-run requested by {} on GitHub", ev.sender.login),
        supersede_key: None,
        pr: None,
        needs_approval: false,
    }))
}

/// GitHub's filter patterns: `*` matches within one `/`-separated part,
/// `**` across parts, everything else literally.
pub fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p {
            [] => n.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=n.len()).any(|i| go(rest, &n[i..])),
            [b'*', rest @ ..] => (0..=n.len())
                .take_while(|&i| i == 0 || n[i - 1] != b'/')
                .any(|i| go(rest, &n[i..])),
            [c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_checks_the_whole_body_and_the_secret() {
        let sig = sign(b"secret", b"{\"a\":1}");
        assert!(signature_valid(b"secret", b"{\"a\":1}", Some(&sig)));
        assert!(!signature_valid(b"secret", b"{\"a\":2}", Some(&sig)));
        assert!(!signature_valid(b"other", b"{\"a\":1}", Some(&sig)));
        assert!(!signature_valid(b"secret", b"{\"a\":1}", None));
        let sha1 = sig.replace("sha256=", "sha1=");
        assert!(!signature_valid(b"secret", b"{\"a\":1}", Some(&sha1)));
        assert!(!signature_valid(b"secret", b"{\"a\":1}", Some("sha256=zz")));
        let upper = sig.to_uppercase().replace("SHA256=", "sha256=");
        assert!(signature_valid(b"secret", b"{\"a\":1}", Some(&upper)));
    }

    #[test]
    fn glob_follows_githubs_filter_patterns() {
        assert!(glob("main", "main"));
        assert!(!glob("main", "main2"));
        assert!(glob("release/*", "release/1.0"));
        assert!(!glob("release/*", "release/1.0/hotfix"));
        assert!(glob("release/**", "release/1.0/hotfix"));
        assert!(glob("**", "feature/x/y"));
        assert!(glob("v*", "v1.2.3"));
        assert!(!glob("v*", "1.2.3"));
    }

    const CHECK_RUN: &[u8] = include_bytes!("../tests/fixtures/check_run-rerequested.json");
    const CHECK_SUITE: &[u8] = include_bytes!("../tests/fixtures/check_suite-rerequested.json");
    const SHA: &str = "3f786850e387550fdab836ed7e6dc881de23001b";

    /// A host of the fixtures' repository, in App mode as `app_id` (or
    /// token mode without it).
    fn host(app_id: Option<u64>) -> ServerConfig {
        let auth = match app_id {
            Some(id) => format!(
                "[server.github_app]\napp_id = {id}\nprivate_key = {{ file = \"/k.pem\" }}\n"
            ),
            None => "github_token = { file = \"/t\" }\n".to_owned(),
        };
        let text = format!(
            "[pool]\nstate_dir = \"/s\"\n[server]\nlisten = \"127.0.0.1:8080\"\n\
             public_url = \"https://ci.example.org\"\nwebhook_secret = {{ env = \"S\" }}\n\
             {auth}[[server.repos]]\nslug = \"freedomofpress/securedrop-workstation\"\n"
        );
        toml::from_str::<crate::HostConfig>(&text).unwrap().server
    }

    /// The fixture with its `.`-separated fields set to JSON values.
    fn edited(body: &[u8], edits: &[(&str, serde_json::Value)]) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(body).unwrap();
        for (path, value) in edits {
            let mut at = &mut v;
            for key in path.split('.') {
                at = &mut at[key];
            }
            *at = value.clone();
        }
        serde_json::to_vec(&v).unwrap()
    }

    const QUEUED: &[u8] = include_bytes!("../tests/fixtures/workflow_job-queued.json");
    const COMPLETED: &[u8] = include_bytes!("../tests/fixtures/workflow_job-completed.json");

    fn with_actions(mut config: ServerConfig) -> ServerConfig {
        let text = "labels = { \"qubes-4.2\" = \"4.2\" }\nextra_labels = [\"fast\"]\n";
        config.actions = Some(toml::from_str(text).unwrap());
        config
    }

    #[test]
    fn a_queued_workflow_job_on_a_qubes_label_is_planned_with_its_version() {
        let config = with_actions(host(Some(12345)));
        match plan(&config, "workflow_job", QUEUED).unwrap() {
            Plan::WorkflowJob(job) => {
                assert_eq!(job.action, JobAction::Queued);
                assert_eq!(job.job_id, 29679449);
                assert_eq!(job.qubes, "4.2");
                assert_eq!(job.label, "qubes-4.2");
                assert_eq!(job.slug, "freedomofpress/securedrop-workstation");
                assert_eq!(job.runner_name, None);
            }
            other => panic!("{other:?}"),
        }
        match plan(&config, "workflow_job", COMPLETED).unwrap() {
            Plan::WorkflowJob(job) => {
                assert_eq!(job.action, JobAction::Completed);
                assert_eq!(job.runner_name.as_deref(), Some("qci-emu-42-1796346000000"));
                assert_eq!(job.runner_id, Some(101));
            }
            other => panic!("{other:?}"),
        }
        // The extra label is the runner's too: a job may ask for it.
        let fast = edited(
            QUEUED,
            &[(
                "workflow_job.labels",
                serde_json::json!(["self-hosted", "qubes-4.2", "fast"]),
            )],
        );
        assert!(matches!(
            plan(&config, "workflow_job", &fast).unwrap(),
            Plan::WorkflowJob(_)
        ));
    }

    #[test]
    fn workflow_jobs_qci_does_not_serve_are_ignored_saying_why() {
        let why = |config: &ServerConfig, body: &[u8]| match plan(config, "workflow_job", body) {
            Ok(Plan::Ignore(why)) => why,
            other => panic!("{other:?}"),
        };
        let app = with_actions(host(Some(12345)));
        let labels = |l: serde_json::Value| edited(QUEUED, &[("workflow_job.labels", l)]);
        assert!(
            why(&app, &labels(serde_json::json!(["ubuntu-latest"]))).contains("names no label")
        );
        assert!(why(&app, &labels(serde_json::json!(["qubes-4.2"]))).contains("lacks self-hosted"));
        assert!(
            why(
                &app,
                &labels(serde_json::json!(["self-hosted", "qubes-4.2", "gpu"]))
            )
            .contains("\"gpu\"")
        );
        assert!(why(&host(Some(12345)), QUEUED).contains("not configured"));
        assert!(why(&with_actions(host(None)), QUEUED).contains("App mode"));
        let waiting = edited(QUEUED, &[("action", "waiting".into())]);
        assert!(why(&app, &waiting).contains("waiting"));
        let elsewhere = edited(QUEUED, &[("repository.full_name", "someone/else".into())]);
        assert!(why(&app, &elsewhere).contains("not configured"));
        let bad = edited(QUEUED, &[("repository.full_name", "../x".into())]);
        assert!(plan(&app, "workflow_job", &bad).is_err());
        let no_id = edited(QUEUED, &[("workflow_job.id", "x".into())]);
        assert!(plan(&app, "workflow_job", &no_id).is_err());
    }

    const COMMENT: &[u8] = include_bytes!("../tests/fixtures/issue_comment-command.json");
    const LABELED: &[u8] = include_bytes!("../tests/fixtures/pull_request-labeled-version.json");

    /// The fixtures' repository with `keys` in its table.
    fn repo_with(keys: &str) -> ServerConfig {
        let mut config = host(None);
        let text = format!("slug = \"freedomofpress/securedrop-workstation\"\n{keys}");
        config.repos = vec![toml::from_str(&text).unwrap()];
        config
    }

    fn asked(config: &ServerConfig, body: &str) -> Result<Ask, String> {
        let comment = edited(COMMENT, &[("comment.body", body.into())]);
        match plan(config, "issue_comment", &comment).unwrap() {
            Plan::Asked {
                ask,
                needs: Role::Write,
                comment: Some(2500000002),
                by,
                pr: 1234,
                ..
            } if by == "rosharma" => Ok(ask),
            Plan::Ignore(why) => Err(why),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comment_commands_are_the_first_line_and_need_write_access() {
        let config = repo_with("");
        let run = |versions: &[&str]| {
            Ok(Ask::Run {
                versions: versions.iter().map(|v| v.to_string()).collect(),
                // 2026-11-29T12:45:10Z, to the end of its second.
                before: Some(1_795_956_310_999),
            })
        };
        assert_eq!(asked(&config, "/qci run 4.2"), run(&["4.2"]));
        assert_eq!(
            asked(&config, "  /qci run 4.3 4.2 4.3\n\nplease"),
            run(&["4.3", "4.2"])
        );
        assert_eq!(asked(&config, "/qci run"), run(&[]));
        assert_eq!(asked(&config, "/qci retry"), Ok(Ask::Retry));
        assert_eq!(asked(&config, "/qci cancel"), Ok(Ask::Cancel));
        for approve in ["/qci approve", "/qci approve\nlooks fine"] {
            assert!(
                matches!(
                    asked(&config, approve),
                    Ok(Ask::Approve {
                        sha: None,
                        before: Some(_)
                    })
                ),
                "{approve}"
            );
        }
        assert_eq!(
            asked(&config, "/qci run 4.2; rm -rf /"),
            Err("/qci run: \"4.2;\" is no Qubes version".into())
        );
        assert!(
            asked(&config, "/qci deploy")
                .unwrap_err()
                .starts_with("unknown command")
        );
        assert_eq!(
            asked(&config, "> /qci run\nquoted"),
            Err("a comment that asks nothing of qci".into())
        );
        assert_eq!(
            asked(&repo_with("comments = false"), "/qci run"),
            Err("comment commands are off for this repository".into())
        );
        assert_eq!(
            asked(&repo_with("pull_requests = false"), "/qci run"),
            Err("pull requests are off for this repository".into())
        );
    }

    #[test]
    fn a_version_label_runs_its_version_in_label_mode_only() {
        let Plan::RunVersions { commit, versions } = plan(
            &repo_with("pull_requests = \"label\""),
            "pull_request",
            LABELED,
        )
        .unwrap() else {
            panic!("not a run of versions");
        };
        assert_eq!(versions, ["4.3"]);
        assert!(!commit.needs_approval);
        let prefixed = edited(LABELED, &[("label.name", "ci/4.2".into())]);
        let config = repo_with("pull_requests = \"label\"\nlabel_prefix = \"ci/\"");
        assert!(matches!(
            plan(&config, "pull_request", &prefixed).unwrap(),
            Plan::RunVersions { versions, .. } if versions == ["4.2"]
        ));
        assert_eq!(
            plan(&repo_with(""), "pull_request", LABELED).unwrap(),
            Plan::Ignore(
                "every version runs already (pull_requests = \"always\"): labels narrow nothing"
                    .into()
            )
        );
        let odd = edited(LABELED, &[("label.name", "qci:needs-review".into())]);
        assert_eq!(
            plan(
                &repo_with("pull_requests = \"label\""),
                "pull_request",
                &odd
            )
            .unwrap(),
            Plan::Ignore("label \"needs-review\" names no Qubes version".into())
        );
    }

    #[test]
    fn a_rerequested_check_run_of_ours_reruns_the_job_it_names() {
        for config in [host(Some(12345)), host(None)] {
            assert_eq!(
                plan(&config, "check_run", CHECK_RUN).unwrap(),
                Plan::Rerun {
                    slug: "freedomofpress/securedrop-workstation".into(),
                    job: "1-q4.2".into(),
                    sha: SHA.into(),
                    by: "rosharma".into(),
                }
            );
        }
    }

    #[test]
    fn other_check_runs_are_ignored_saying_why() {
        let ignored = |config: &ServerConfig, body: &[u8]| match plan(config, "check_run", body) {
            Ok(Plan::Ignore(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ignored(&host(Some(999)), CHECK_RUN),
            "a re-run of a check run app 12345 made it, not qci's app 999"
        );
        let foreign = edited(CHECK_RUN, &[("check_run.external_id", "build #17".into())]);
        assert_eq!(
            ignored(&host(None), &foreign),
            "a re-run of a check run whose external_id \"build #17\" is no qci job id"
        );
        let none = edited(
            CHECK_RUN,
            &[("check_run.external_id", serde_json::Value::Null)],
        );
        assert_eq!(
            ignored(&host(None), &none),
            "a re-run of a check run whose external_id \"\" is no qci job id"
        );
        for action in ["created", "completed", "requested_action"] {
            let body = edited(CHECK_RUN, &[("action", action.into())]);
            assert_eq!(
                ignored(&host(None), &body),
                format!("check_run action \"{action}\"")
            );
        }
        let elsewhere = edited(
            CHECK_RUN,
            &[("repository.full_name", "someone/else".into())],
        );
        assert_eq!(
            ignored(&host(None), &elsewhere),
            "repository someone/else is not configured"
        );
        let bad = edited(CHECK_RUN, &[("check_run.head_sha", "main".into())]);
        assert!(matches!(
            plan(&host(None), "check_run", &bad),
            Err(PayloadError::BadField("check_run.head_sha"))
        ));
    }

    #[test]
    fn a_rerequested_check_suite_runs_its_commit_as_a_push_would() {
        let Plan::Run(commit) = plan(&host(Some(12345)), "check_suite", CHECK_SUITE).unwrap()
        else {
            panic!("not a run");
        };
        assert_eq!(
            commit,
            Commit {
                slug: "freedomofpress/securedrop-workstation".into(),
                clone_url: "https://github.com/freedomofpress/securedrop-workstation.git".into(),
                sha: CommitSha::parse(SHA).unwrap(),
                git_ref: "refs/heads/main".into(),
                reason: Reason::Manual,
                author: "rosharma".into(),
                message: "Re-run requested by rosharma on GitHub".into(),
                supersede_key: None,
                pr: None,
                needs_approval: false,
            }
        );
        let ignored = |config: &ServerConfig, body: &[u8]| match plan(config, "check_suite", body) {
            Ok(Plan::Ignore(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ignored(&host(Some(7)), CHECK_SUITE),
            "a re-run of a check suite app 12345 made it, not qci's app 7"
        );
        for action in ["requested", "completed"] {
            let body = edited(CHECK_SUITE, &[("action", action.into())]);
            assert_eq!(
                ignored(&host(None), &body),
                format!("check_suite action \"{action}\"")
            );
        }
        let bad = edited(CHECK_SUITE, &[("check_suite.head_sha", "x".into())]);
        assert!(matches!(
            plan(&host(None), "check_suite", &bad),
            Err(PayloadError::BadField("check_suite.head_sha"))
        ));
    }
}
