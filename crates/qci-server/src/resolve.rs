//! The resolver: carries out each trigger (a delivery that asks for
//! something) in the order the deliveries came. A push or a pull request
//! becomes one job per Qubes version, each with its own status context;
//! the versions are the `qubes` of the commit's own `.qci.toml`, read
//! through GitHub's contents API, or the repository's configured ones when
//! the commit has no such file (or names none).
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

use crate::app::App;
use crate::github::{self, GithubError, PipelineFile};
use crate::queue::{self, RetryOutcome, Trigger, Version};
use crate::webhook::{Commit, Plan};
use qci_core::JobId;
use qci_core::pipeline::{Pipeline, PipelineError};
use qci_core::retry::{self, RetryPolicy, Stop};
use qci_core::status::clean_description;
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
    let plan = serde_json::from_str::<Plan>(&trigger.plan);
    let versions = match &plan {
        Ok(Plan::Run(commit)) => versions(app, client, source, commit),
        _ => None,
    };
    let pool = app.executor.versions();
    let stop = app.store.write_blocking(move |conn| {
        let mut stop = Vec::new();
        let outcome = match plan {
            Err(e) => format!("error: the stored request cannot be read: {e}"),
            Ok(Plan::Ignore(why)) => format!("ignored: {why}"),
            Ok(Plan::Run(commit)) => match versions {
                None => format!("ignored: repository {} is not configured", commit.slug),
                Some(versions) => {
                    let queued = queue::run_commit(conn, &trigger, &commit, &versions)?;
                    stop = queued.stop;
                    format!("queued {}", joined(&queued.jobs))
                }
            },
            Ok(Plan::Approve {
                slug,
                pr,
                sha,
                before,
                by,
            }) => {
                let approved = queue::approve(conn, &slug, pr, sha.as_deref(), before, &by)?;
                format!("approved by {by}: {}", joined(&approved))
            }
            Ok(Plan::Close { slug, pr }) => {
                let dropped = queue::close_pr(conn, &slug, pr)?;
                format!("pull request closed: dropped {}", joined(&dropped))
            }
            Ok(Plan::Rerun { slug, job, sha, by }) => {
                rerun(conn, &trigger.delivery, &slug, &job, &sha, &by, &pool)?
            }
        };
        queue::trigger_done(conn, &trigger, &outcome)?;
        Ok(stop)
    })?;
    for job in &stop {
        app.running.cancel(job);
    }
    Ok(())
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
        Ok(wanted) => {
            let pool = app.executor.versions();
            let has = if pool.is_empty() {
                "none".to_owned()
            } else {
                pool.join(", ")
            };
            wanted
                .into_iter()
                .map(|v| Version {
                    refused: (!pool.contains(&v)).then(|| {
                        format!("No machine of this qci host runs Qubes {v} (it has: {has})")
                    }),
                    context: context(&v),
                    qubes: v,
                })
                .collect()
        }
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
