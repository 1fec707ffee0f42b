//! Webhooks GitHub sent while qci could not take them, asked for again.
//!
//! GitHub does not redeliver a webhook that failed: a push that arrived
//! while `qci serve` was stopped, crashing or short of disk is lost unless
//! someone asks. So on start, and each time storage recovers, qci lists its
//! hook's recent deliveries and asks GitHub to redeliver each one whose
//! `guid` (the `X-GitHub-Delivery` header) it never recorded:
//! - App mode: the App's hook, `GET /app/hook/deliveries` and `POST
//!   /app/hook/deliveries/ID/attempts`, with the App's JWT;
//! - token mode: each configured repository's webhook whose URL is ours
//!   (`GET /repos/O/R/hooks`), through `/repos/O/R/hooks/ID/deliveries`,
//!   with the token, which then needs admin access to the repository
//!   (classic `repo` scope, or the fine-grained "Webhooks" permission,
//!   read and write): without it, this says so once and the rest goes on.
//!
//! Only deliveries of the last `redeliver_within` are looked at (GitHub
//! keeps 3 days), newest first, page by page (`Link: rel="next"`). A
//! delivery that qci answered 4xx (a forged or malformed one) is not asked
//! for again: it would be refused the same way. A redelivery keeps its
//! guid, so one asked twice (two scans close together) is still taken
//! once: the webhook handler records each guid once.

use crate::app::App;
use crate::github::{self, GithubError};
use crate::store::StoreError;
use qci_core::retry::{self, Failure, RetryPolicy, Stop};
use reqwest::blocking::Client;
use reqwest::header::{HeaderValue, LINK};
use rusqlite::OptionalExtension;
use serde::Deserialize;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// What the redeliverer needs from the config.
pub struct Source {
    pub api_url: String,
    /// The URL GitHub delivers to: a repository's hook is found by it.
    pub webhook_url: String,
    /// Token mode: the repositories whose hooks are looked at.
    pub repos: Vec<String>,
    /// How far back deliveries are looked at; zero: never.
    pub within: Duration,
    pub policy: RetryPolicy,
}

/// Why the deliveries could not be looked at or asked for.
#[derive(Debug, thiserror::Error)]
pub enum RedeliveryError {
    /// Refused for good, or tried until the budget ran out.
    #[error(transparent)]
    Github(#[from] Stop<GithubError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One delivery in GitHub's list (it has more fields).
#[derive(Debug, Deserialize)]
struct Delivery {
    id: u64,
    guid: String,
    delivered_at: String,
    /// The answer GitHub got; 0 when it got none (no connection).
    status_code: u16,
}

/// A repository webhook (`GET /repos/O/R/hooks`).
#[derive(Deserialize)]
struct RepoHook {
    id: u64,
    #[serde(default)]
    config: HookConfig,
}

#[derive(Default, Deserialize)]
struct HookConfig {
    #[serde(default)]
    url: Option<String>,
}

/// Pages of 100 deliveries looked at, at most, per hook.
const MAX_PAGES: usize = 100;

/// A hook whose deliveries are listed at `url` (`.../deliveries`).
struct Hook {
    url: String,
    /// The repository whose token reads it, or none: the App's JWT.
    repo: Option<String>,
}

/// Starts the redeliverer on its own thread: a scan now (the server
/// already listens, so what GitHub redelivers is taken), then one after
/// each recovery of storage.
pub fn spawn(app: App, source: Source) -> std::io::Result<()> {
    if source.within.is_zero() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("qci-redeliver".into())
        .spawn(move || run(&app, &source))?;
    Ok(())
}

fn run(app: &App, source: &Source) {
    let client = match github::client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot set up the HTTP client for redeliveries: {e}");
            return;
        }
    };
    loop {
        let seen = app.store.health.recoveries();
        match redeliver_missed(app, &client, source) {
            Ok(0) => tracing::debug!("no webhook delivery to ask for again"),
            Ok(n) => tracing::info!("asked GitHub to redeliver {n} webhook deliveries qci missed"),
            Err(e) => tracing::warn!("cannot look for webhook deliveries qci missed: {e}"),
        }
        while app
            .store
            .health
            .wait_recovery(seen, Duration::from_secs(3600))
            == seen
        {}
    }
}

/// One scan of every hook: how many deliveries were asked for again.
fn redeliver_missed(app: &App, client: &Client, source: &Source) -> Result<usize, RedeliveryError> {
    let since = SystemTime::now()
        .checked_sub(source.within)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut asked = 0;
    for hook in hooks(app, client, source)? {
        let deliveries = list(app, client, source, &hook, since)?;
        for id in missed(app, deliveries)? {
            let url = format!("{}/{id}/attempts", hook.url);
            retry::retry(&source.policy, "asking for a redelivery", || {
                let reply = github::authorized(client.post(&url), &auth(app, client, &hook)?)
                    .send()
                    .map_err(|e| github::unanswered(&url, e))?;
                if reply.status().is_success() {
                    return Ok(());
                }
                Err(github::refused(&url, &reply))
            })?;
            asked += 1;
        }
    }
    Ok(asked)
}

/// The hooks to look at: the App's, or each repository's that names ours.
fn hooks(app: &App, client: &Client, source: &Source) -> Result<Vec<Hook>, RedeliveryError> {
    let api = source.api_url.trim_end_matches('/');
    if app.github.app().is_some() {
        return Ok(vec![Hook {
            url: format!("{api}/app/hook/deliveries"),
            repo: None,
        }]);
    }
    let mut found = Vec::new();
    for repo in &source.repos {
        let url = format!("{api}/repos/{repo}/hooks");
        let listing = Hook {
            url: url.clone(),
            repo: Some(repo.clone()),
        };
        let hooks: Vec<RepoHook> = match get_json(app, client, source, &listing, &url) {
            Ok((hooks, _)) => hooks,
            // Most often a token without access to the hooks: said, and the
            // other repositories are still looked at.
            Err(e) => {
                tracing::warn!("cannot list the webhooks of {repo} to find missed deliveries: {e}");
                continue;
            }
        };
        match hooks
            .iter()
            .find(|h| h.config.url.as_deref() == Some(source.webhook_url.as_str()))
        {
            Some(hook) => found.push(Hook {
                url: format!("{url}/{}/deliveries", hook.id),
                repo: Some(repo.clone()),
            }),
            None => tracing::warn!(
                "{repo} has no webhook to {}: no missed delivery can be asked for",
                source.webhook_url
            ),
        }
    }
    Ok(found)
}

/// The hook's deliveries since `since`, newest first, page after page.
fn list(
    app: &App,
    client: &Client,
    source: &Source,
    hook: &Hook,
    since: SystemTime,
) -> Result<Vec<Delivery>, RedeliveryError> {
    let mut all = Vec::new();
    let mut next = Some(format!("{}?per_page=100", hook.url));
    // Bounded whatever the server answers: 10,000 deliveries at most.
    for _ in 0..MAX_PAGES {
        let Some(url) = next.take() else { break };
        let (page, link): (Vec<Delivery>, _) = get_json(app, client, source, hook, &url)?;
        let listed = page.len();
        let recent: Vec<Delivery> = page
            .into_iter()
            .take_while(|d| {
                humantime::parse_rfc3339_weak(&d.delivered_at).is_ok_and(|at| at >= since)
            })
            .collect();
        // A page that reaches past the window is the last one looked at.
        if recent.len() == listed {
            next = link;
        }
        all.extend(recent);
    }
    Ok(all)
}

/// GET `url` as JSON, with the `Link` header's `rel="next"`.
fn get_json<T: serde::de::DeserializeOwned>(
    app: &App,
    client: &Client,
    source: &Source,
    hook: &Hook,
    url: &str,
) -> Result<(T, Option<String>), RedeliveryError> {
    let answer = retry::retry(&source.policy, "listing webhook deliveries", || {
        let reply = github::authorized(client.get(url), &auth(app, client, hook)?)
            .send()
            .map_err(|e| github::unanswered(url, e))?;
        if !reply.status().is_success() {
            return Err(github::refused(url, &reply));
        }
        // Absolute as GitHub sends it; a relative one is read as a browser would.
        let next = reply
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page)
            .and_then(|next| reply.url().join(&next).ok())
            .map(String::from);
        Ok((github::read_json(url, reply)?, next))
    })?;
    Ok(answer)
}

/// The credential for `hook`: the App's JWT, or the repository's token.
fn auth(app: &App, client: &Client, hook: &Hook) -> Result<HeaderValue, Failure<GithubError>> {
    match (&hook.repo, app.github.app()) {
        (None, Some(github_app)) => Ok(github_app.jwt()?),
        (Some(repo), _) => Ok(app.github.token(client, repo)?),
        (None, None) => Err(Failure::Permanent(GithubError::NoToken(
            "the App's hook needs App mode".into(),
        ))),
    }
}

/// The `rel="next"` URL of a `Link` header, as GitHub pages its lists.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// The deliveries to ask for again: one attempt (the newest) per guid that
/// qci never recorded, unless qci refused it (4xx).
fn missed(app: &App, deliveries: Vec<Delivery>) -> Result<Vec<u64>, RedeliveryError> {
    let refused: HashSet<&str> = deliveries
        .iter()
        .filter(|d| (400..500).contains(&d.status_code))
        .map(|d| d.guid.as_str())
        .collect();
    // Newest first: the first of each guid is its newest attempt.
    let mut looked_at = HashSet::new();
    let newest: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| !refused.contains(d.guid.as_str()) && looked_at.insert(d.guid.as_str()))
        .collect();
    // One read for the whole listing.
    let recorded: Vec<bool> = app.store.read_blocking(|conn| {
        let mut known = conn.prepare_cached("SELECT 1 FROM deliveries WHERE id = ?1")?;
        newest
            .iter()
            .map(|d| Ok(known.query_row([&d.guid], |_| Ok(())).optional()?.is_some()))
            .collect()
    })?;
    let mut ids = Vec::new();
    for (d, recorded) in newest.into_iter().zip(recorded) {
        if !recorded {
            tracing::info!(
                delivery = d.guid.as_str(),
                "a webhook delivery qci missed (GitHub got HTTP {}): asking for it again",
                d.status_code
            );
            ids.push(d.id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::next_page;

    #[test]
    fn the_next_page_is_read_from_githubs_link_header() {
        let link = "<https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_12077215967>; rel=\"next\", \
                    <https://api.github.com/app/hook/deliveries?per_page=2>; rel=\"first\"";
        assert_eq!(
            next_page(link).as_deref(),
            Some("https://api.github.com/app/hook/deliveries?per_page=2&cursor=v1_12077215967")
        );
        assert_eq!(
            next_page("<https://api.github.com/x?page=1>; rel=\"prev\""),
            None
        );
        assert_eq!(next_page(""), None);
    }
}
