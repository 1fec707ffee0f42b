//! The resolver: carries out each trigger (a delivery that asks for
//! something) in the order the deliveries came. A push or a pull request
//! becomes one job per Qubes version, each with its own status context;
//! the versions are the ones a version label or a `/qci run` command
//! names, else the `qubes` of the commit's own `.qci.toml`, read through
//! GitHub's contents API, or the repository's configured ones when the
//! commit has no such file (or names none). A GitHub Actions job is handed
//! to [`crate::actions`], which waits for its machine on a thread of its
//! own.
//!
//! That GitHub call is why this is not done while answering the webhook:
//! the webhook is answered as soon as its trigger is committed, and the
//! resolver does the rest. Triggers live in the database, so one left
//! unresolved by a crash is resolved after the restart.
//!
//! A commit never stays silent: a `.qci.toml` that dom0 would refuse, a
//! version no machine of the pool runs, or GitHub refusing to give the file
//! (after retries within `github_retry_budget`) each end the jobs concerned
//! at once as `error`, saying why. When the versions cannot be known at
//! all, those jobs are the repository's configured versions. Triggers are
//! resolved one at a time, so approvals and closed pull requests apply to
//! the jobs of the deliveries before them; a GitHub outage holds the ones
//! behind it until the budget is spent.
//!
//! Whoever asks for something by a label on a fork's pull request or by a
//! comment command ([`Plan::Asked`]) is checked here too, with GitHub's
//! permission API under the same retries, and the pull request's head is
//! read from GitHub for a command: a refusal or GitHub's silence ends the
//! trigger with the reason as its outcome, and nothing runs or is posted.

use crate::app::App;
use crate::github::Role;
use crate::github::{self, GithubError, PipelineFile};
use crate::queue::{self, CancelOutcome, RetryOutcome, Trigger, Version};
use crate::webhook::{Ask, Commit, Plan, PullRequestHead, pull_request_commit};
use qci_core::job_file::CommitSha;
use qci_core::pipeline::{Pipeline, PipelineError};
use qci_core::retry::{self, RetryPolicy, Stop};
use qci_core::status::clean_description;
use qci_core::{JobId, State};
use std::time::Duration;

/// Where the resolver reads commits' `.qci.toml`, and how hard it tries;
/// with the host's credential ([`App::github`]).
#[derive(Clone)]
pub struct Source {
    pub api_url: String,
    pub policy: RetryPolicy,
}

/// Starts the resolver on its own thread.
pub fn spawn(app: App, source: Source) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("qci-resolve".into())
        .spawn(move || resolve_forever(&app, &source))?;
    Ok(())
}

fn resolve_forever(app: &App, source: &Source) {
    // Made here: a blocking client must not be built (or dropped) on the
    // async runtime's threads.
    let client = match github::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot set up the HTTP client for GitHub: {e}");
            return;
        }
    };
    let client = &client;
    // The trigger that failed last, and how many times in a row.
    let mut failing: (i64, u32) = (0, 0);
    loop {
        let seen = app.store.commit_count();
        let trigger = match app.store.read_blocking(queue::next_trigger) {
            Ok(Some(trigger)) => trigger,
            Ok(None) => {
                app.store.wait_commit(seen, Duration::from_secs(5));
                continue;
            }
            Err(e) => {
                tracing::error!("reading the triggers: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Err(e) = resolve(app, client, source, trigger.clone()) else {
            continue;
        };
        // The database's trouble: the trigger stays, and is tried again;
        // one that fails every time must not hold up those behind it.
        failing = match failing {
            (seq, n) if seq == trigger.seq => (seq, n + 1),
            _ => (trigger.seq, 1),
        };
        tracing::error!(delivery = trigger.delivery, "resolving its trigger: {e}");
        if failing.1 >= GIVE_UP_AFTER {
            let outcome = format!("error: not carried out after {GIVE_UP_AFTER} tries: {e}");
            if let Err(e) = app
                .store
                .write_blocking(move |conn| queue::trigger_done(conn, &trigger, &outcome))
            {
                tracing::error!("cannot set a trigger aside: {e}");
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Tries of one trigger whose writes fail before it is set aside.
const GIVE_UP_AFTER: u32 = 5;

fn resolve(
    app: &App,
    client: &reqwest::blocking::Client,
    source: &Source,
    trigger: Trigger,
) -> Result<(), crate::store::StoreError> {
    // What needs GitHub (permissions, pull requests, `.qci.toml`) is asked
    // before the write, which then holds no lock across the network.
    let (action, react) = match serde_json::from_str::<Plan>(&trigger.plan) {
        Err(e) => (
            Action::Done(format!("error: the stored request cannot be read: {e}")),
            None,
        ),
        Ok(plan) => prepare(app, client, source, plan),
    };
    let pool = app.executor.versions();
    let (stop, outcome) = app.store.write_blocking(move |conn| {
        let mut stop = Vec::new();
        let outcome = match action {
            Action::Done(outcome) => outcome,
            Action::Run {
                mut commit,
                versions,
                narrow,
                approve_before,
            } => match versions {
                None => format!("ignored: repository {} is not configured", commit.slug),
                Some(versions) => {
                    let mut waits = "";
                    if let Some(by) = approve_before
                        && commit.needs_approval
                    {
                        if queue::had_commit(conn, &commit, by)? {
                            commit.needs_approval = false;
                        } else {
                            waits =
                                " (waiting for approval: the fork's head came after the comment)";
                        }
                    }
                    let queued = queue::run_commit(conn, &trigger, &commit, &versions, narrow)?;
                    stop = queued.stop;
                    format!("queued {}{waits}", joined(&queued.jobs))
                }
            },
            Action::Approve {
                slug,
                pr,
                sha,
                before,
                by,
            } => {
                let approved = queue::approve(conn, &slug, pr, sha.as_deref(), before, &by)?;
                format!("approved by {by}: {}", joined(&approved))
            }
            Action::Close { slug, pr } => {
                let dropped = queue::close_pr(conn, &slug, pr)?;
                format!("pull request closed: dropped {}", joined(&dropped))
            }
            Action::Rerun { slug, job, sha, by } => {
                rerun(conn, &trigger.delivery, &slug, &job, &sha, &by, &pool)?
            }
            Action::Retry { slug, pr, sha, by } => {
                let mut queued = Vec::new();
                let mut refused = Vec::new();
                for (id, qubes, state) in queue::head_jobs(conn, &slug, pr, &sha)? {
                    if !matches!(state, State::Failure | State::Error) {
                        continue;
                    }
                    match queue::retry(conn, &id, &pool, Some(&trigger.delivery))? {
                        RetryOutcome::Queued(new) => queued.push(new),
                        RetryOutcome::NoMachine(_) => {
                            refused.push(format!("no machine runs Qubes {qubes}"));
                        }
                        RetryOutcome::NotFinal(_) | RetryOutcome::NotFound => {}
                    }
                }
                match (queued.is_empty(), refused.is_empty()) {
                    (true, true) => format!("ignored: /qci retry: nothing failed at {sha}"),
                    (true, false) => format!("ignored: /qci retry: {}", refused.join("; ")),
                    _ => format!("retry by {by}: queued {}", joined(&queued)),
                }
            }
            Action::Cancel { slug, pr, sha, by } => {
                let mut canceled = Vec::new();
                for (id, _, state) in queue::head_jobs(conn, &slug, pr, &sha)? {
                    if !matches!(state, State::Queued | State::Running) {
                        continue;
                    }
                    if let CancelOutcome::Canceled { running } = queue::cancel(conn, &id, &by)? {
                        if running {
                            stop.push(id.clone());
                        }
                        canceled.push(id);
                    }
                }
                format!("canceled by {by}: {}", joined(&canceled))
            }
        };
        queue::trigger_done(conn, &trigger, &outcome)?;
        Ok((stop, outcome))
    })?;
    for job in &stop {
        app.running.cancel(job);
    }
    // Only a command that did something: `/qci retry` with nothing failed
    // is ignored as surely as one from a passer-by.
    let taken = !(outcome.starts_with("ignored:") || outcome.starts_with("error:"));
    if let (true, Some((slug, comment))) = (taken, react) {
        // A courtesy: the command's author sees it was taken.
        let reacted = app
            .github
            .token(client, &slug)
            .map_err(|e| e.to_string())
            .and_then(|token| {
                github::react(client, &source.api_url, &token, &slug, comment, "+1")
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = reacted {
            tracing::warn!("reacting to comment {comment} of {slug}: {e}");
        }
    }
    Ok(())
}

/// A plan with what GitHub said: what the write does.
enum Action {
    /// Nothing to change: only the delivery's outcome.
    Done(String),
    /// `versions` is `None` when the repository is no longer configured;
    /// `narrow` when only these versions run (see [`queue::run_commit`]).
    /// With `approve_before`, a commit waiting for approval (a fork's
    /// head, by a command) is approved if qci had it by then (Unix ms).
    Run {
        commit: Commit,
        versions: Option<Vec<Version>>,
        narrow: bool,
        approve_before: Option<i64>,
    },
    Approve {
        slug: String,
        pr: u64,
        sha: Option<String>,
        before: Option<i64>,
        by: String,
    },
    Close {
        slug: String,
        pr: u64,
    },
    Rerun {
        slug: String,
        job: String,
        sha: String,
        by: String,
    },
    Retry {
        slug: String,
        pr: u64,
        sha: String,
        by: String,
    },
    Cancel {
        slug: String,
        pr: u64,
        sha: String,
        by: String,
    },
}

/// Asks GitHub what `plan` needs; with the comment to react to once done.
fn prepare(
    app: &App,
    client: &reqwest::blocking::Client,
    source: &Source,
    plan: Plan,
) -> (Action, Option<(String, u64)>) {
    let action = match plan {
        Plan::Ignore(why) => Action::Done(format!("ignored: {why}")),
        Plan::Run(commit) => Action::Run {
            versions: versions(app, client, source, &commit),
            commit,
            narrow: false,
            approve_before: None,
        },
        Plan::RunVersions { commit, versions } => Action::Run {
            versions: named_versions(app, &commit.slug, versions),
            commit,
            narrow: true,
            approve_before: None,
        },
        Plan::Approve {
            slug,
            pr,
            sha,
            before,
            by,
        } => Action::Approve {
            slug,
            pr,
            sha,
            before,
            by,
        },
        Plan::Close { slug, pr } => Action::Close { slug, pr },
        Plan::Rerun { slug, job, sha, by } => Action::Rerun { slug, job, sha, by },
        // Carried out on its own threads: a machine's boot must not hold
        // up the triggers behind it.
        Plan::WorkflowJob(job) => Action::Done(crate::actions::take(app, job)),
        Plan::Asked {
            slug,
            pr,
            by,
            needs,
            comment,
            ask,
        } => {
            let action = asked(app, client, source, &slug, pr, &by, needs, ask);
            if let Action::Done(why) = &action {
                tracing::info!("#{pr} of {slug}, asked by {by}: {why}");
            }
            return (action, comment.map(|id| (slug, id)));
        }
    };
    (action, None)
}

/// What `by` asked of pull request `pr`, if GitHub says their role is at
/// least `needs`; else only why not (nothing runs, nothing is posted).
#[expect(clippy::too_many_arguments, reason = "the fields of Plan::Asked")]
fn asked(
    app: &App,
    client: &reqwest::blocking::Client,
    source: &Source,
    slug: &str,
    pr: u64,
    by: &str,
    needs: Role,
    ask: Ask,
) -> Action {
    let Some(repo) = app.config.repo(slug) else {
        return Action::Done(format!("ignored: repository {slug} is not configured"));
    };
    // GitHub logins are letters, digits and `-` (`[bot]` for apps): nothing
    // that could change the URL it is put in.
    let login_ok = !by.is_empty()
        && by.len() <= 64
        && by
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_[]".contains(&b));
    if !login_ok {
        return Action::Done("ignored: the request's sender is no GitHub login".into());
    }
    let what = format!("asking GitHub what {by} may do in {slug}");
    let role = retry::retry(&source.policy, &what, || {
        let token = app.github.token(client, slug)?;
        github::permission(client, &source.api_url, &token, slug, by)
    });
    let role = match role {
        Ok(role) => role,
        Err(stop) => {
            return Action::Done(format!(
                "error: cannot ask GitHub what {by} may do: {}",
                stop
            ));
        }
    };
    if role < needs {
        return Action::Done(format!(
            "ignored: {by} ({}) may not do this on #{pr}: it takes {} access or more",
            role.as_str(),
            needs.as_str()
        ));
    }
    let by = by.to_owned();
    let slug = slug.to_owned();
    let ask = match ask {
        Ask::Approve { sha, before } => {
            return Action::Approve {
                slug,
                pr,
                sha,
                before,
                by,
            };
        }
        Ask::RunCommit { commit, versions } => {
            return Action::Run {
                versions: named_versions(app, &slug, versions),
                commit,
                narrow: true,
                approve_before: None,
            };
        }
        Ask::Run { versions, before } => Some((versions, before)),
        Ask::Retry => None,
        Ask::Cancel => {
            return match head(app, client, source, &slug, pr) {
                Ok((sha, _)) => Action::Cancel {
                    slug,
                    pr,
                    sha: sha.as_str().to_owned(),
                    by,
                },
                Err(why) => Action::Done(why),
            };
        }
    };
    let (sha, found) = match head(app, client, source, &slug, pr) {
        Ok(head) => head,
        Err(why) => return Action::Done(why),
    };
    let Some((versions, before)) = ask else {
        return Action::Retry {
            slug,
            pr,
            sha: sha.as_str().to_owned(),
            by,
        };
    };
    let clone_url = found.head.repo.as_ref().map_or_else(
        || format!("https://github.com/{slug}.git"),
        |r| r.clone_url.clone(),
    );
    // A fork's head: approved by the command if qci had it before the
    // comment (see `Ask::Run`), which the write tells.
    let fork = found
        .head
        .repo
        .as_ref()
        .is_none_or(|r| !r.full_name.eq_ignore_ascii_case(&slug));
    let commit = pull_request_commit(
        repo,
        pr,
        sha,
        PullRequestHead {
            title: &found.title,
            author: &found.user.login,
            git_ref: &found.head.git_ref,
            clone_url: &clone_url,
        },
        fork,
    );
    let versions = if versions.is_empty() {
        self::versions(app, client, source, &commit)
    } else {
        named_versions(app, &slug, versions)
    };
    Action::Run {
        commit,
        versions,
        narrow: true,
        // A command stored without its time approves no fork's head.
        approve_before: fork.then_some(before.unwrap_or(i64::MIN)),
    }
}

/// Pull request `pr`'s head commit and what GitHub says of
/// it, if it is open; else the delivery's outcome, saying why not.
fn head(
    app: &App,
    client: &reqwest::blocking::Client,
    source: &Source,
    slug: &str,
    pr: u64,
) -> Result<(CommitSha, github::PullRequest), String> {
    let what = format!("reading pull request #{pr} of {slug}");
    let found = retry::retry(&source.policy, &what, || {
        let token = app.github.token(client, slug)?;
        github::pull_request(client, &source.api_url, &token, slug, pr)
    })
    .map_err(|stop| format!("error: cannot read #{pr}: {}", stop))?;
    if found.state != "open" {
        return Err(format!("ignored: #{pr} is {}", found.state));
    }
    match CommitSha::parse(&found.head.sha) {
        Ok(sha) => Ok((sha, found)),
        Err(_) => Err(format!("error: #{pr}'s head is no commit id")),
    }
}

/// `wanted` as jobs of `slug`'s repository, each refused when no machine
/// of the pool runs it; `None` if the repository is no longer configured.
fn named_versions(app: &App, slug: &str, wanted: Vec<String>) -> Option<Vec<Version>> {
    let repo = app.config.repo(slug)?;
    Some(pool_versions(app, &repo.context, wanted))
}

/// One job per version of `wanted`, with its context; refused when no
/// machine of the pool runs it.
fn pool_versions(app: &App, context: &str, wanted: Vec<String>) -> Vec<Version> {
    let pool = app.executor.versions();
    let has = if pool.is_empty() {
        "none".to_owned()
    } else {
        pool.join(", ")
    };
    wanted
        .into_iter()
        .map(|v| Version {
            refused: (!pool.contains(&v))
                .then(|| format!("No machine of this qci host runs Qubes {v} (it has: {has})")),
            context: format!("{context}/qubes-{v}"),
            qubes: v,
        })
        .collect()
}

/// GitHub's Re-run of a check run: the job it names runs again, as the
/// operator's retry does (the old job stays in history), if it is a job of
/// ours on the check run's repository and commit. Returns the outcome.
fn rerun(
    conn: &rusqlite::Connection,
    delivery: &str,
    slug: &str,
    job: &str,
    sha: &str,
    by: &str,
    pool: &[String],
) -> Result<String, crate::store::StoreError> {
    let ignored = |why: String| Ok(format!("ignored: a re-run of {job}: {why}"));
    let Ok(id) = JobId::parse(job) else {
        return ignored("no qci job id".into());
    };
    let Some(old) = queue::get(conn, &id)? else {
        return ignored("no such job on this host".into());
    };
    if old.repo != slug || old.sha != sha {
        // Another host's (or another app's) check run with an id like ours.
        return ignored(format!(
            "the job is of {} at {}, the check run of {slug} at {sha}",
            old.repo, old.sha
        ));
    }
    Ok(match queue::retry(conn, &id, pool, Some(delivery))? {
        RetryOutcome::Queued(new) => format!("re-run by {by}: queued {new}"),
        RetryOutcome::NotFound => return ignored("no such job on this host".into()),
        RetryOutcome::NotFinal(state) => return ignored(format!("the job is still {state}")),
        RetryOutcome::NoMachine(qubes) => {
            return ignored(format!("no machine of this host runs Qubes {qubes}"));
        }
    })
}

/// Why a commit's `.qci.toml` gave no versions: each of its jobs ends as
/// `error` saying so. (GitHub's failures come worded by [`github`].)
#[derive(Debug, thiserror::Error)]
enum NoPipeline {
    #[error(transparent)]
    Invalid(#[from] PipelineError),
    #[error("{0}")]
    Unusable(String),
    #[error("CI error: cannot read .qci.toml: {0}")]
    Unreadable(#[source] GithubError),
    #[error("CI error: cannot read .qci.toml ({attempts} attempts): {last}")]
    GaveUp { attempts: u32, last: GithubError },
}

/// Job ids as a delivery's outcome lists them.
fn joined(jobs: &[JobId]) -> String {
    jobs.iter().map(JobId::as_str).collect::<Vec<_>>().join(" ")
}

/// The versions `commit` runs on, each with why it cannot, if it cannot;
/// `None` if its repository is no longer configured.
fn versions(
    app: &App,
    client: &reqwest::blocking::Client,
    source: &Source,
    commit: &Commit,
) -> Option<Vec<Version>> {
    let repo = app.config.repo(&commit.slug)?;
    let sha = commit.sha.as_str();
    let what = format!("reading .qci.toml of {} at {sha}", commit.slug);
    let read = retry::retry(&source.policy, &what, || {
        let token = app.github.token(client, &commit.slug)?;
        github::pipeline_file(client, &source.api_url, &token, &commit.slug, sha)
    });
    let asked = match read {
        Ok(PipelineFile::Missing) => Ok(repo.qubes.clone()),
        Ok(PipelineFile::Found(text)) => match Pipeline::parse(&text) {
            Ok(p) if p.qubes.is_empty() => Ok(repo.qubes.clone()),
            Ok(p) => Ok(p.qubes),
            Err(e) => Err(NoPipeline::Invalid(e)),
        },
        Ok(PipelineFile::Unusable(why)) => Err(NoPipeline::Unusable(why)),
        Err(Stop::Permanent(e)) => Err(NoPipeline::Unreadable(e)),
        Err(Stop::GaveUp { attempts, last, .. }) => Err(NoPipeline::GaveUp { attempts, last }),
    };
    let context = |v: &str| format!("{}/qubes-{v}", repo.context);
    Some(match asked {
        Ok(wanted) => pool_versions(app, &repo.context, wanted),
        Err(why) => {
            tracing::warn!("{what}: {why}");
            let why = clean_description(&why.to_string());
            repo.qubes
                .iter()
                .map(|v| Version {
                    qubes: v.clone(),
                    context: context(v),
                    refused: Some(why.clone()),
                })
                .collect()
        }
    })
}
