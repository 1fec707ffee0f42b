//! How the host authenticates to GitHub, chosen by the config: a personal
//! token (token mode: commit statuses) or a GitHub App (App mode: check
//! runs, installation tokens). Every caller that talks to GitHub (the
//! outbox, the resolver, permission checks, redelivery) asks this for the
//! header to send, per repository, each time it sends: an App's token may
//! have been refreshed since the last request, in the middle of a job too.

use crate::github_app::{AppError, GithubApp};
use reqwest::blocking::Client;
use reqwest::header::HeaderValue;
use std::sync::Arc;

/// The host's GitHub credential.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `github_token`: one personal token for every repository.
    Token(HeaderValue),
    /// `[server.github_app]`: an installation token per repository.
    App(Arc<GithubApp>),
}

impl Credentials {
    /// The `Authorization` header for a request about `repo` (`OWNER/REPO`).
    pub fn token(&self, client: &Client, repo: &str) -> Result<HeaderValue, AppError> {
        match self {
            Self::Token(token) => Ok(token.clone()),
            Self::App(app) => app.token_for(client, repo),
        }
    }

    /// The header for a request about organization `org` itself (its
    /// runners): its installation's token in App mode.
    pub fn token_for_org(&self, client: &Client, org: &str) -> Result<HeaderValue, AppError> {
        match self {
            Self::Token(token) => Ok(token.clone()),
            Self::App(app) => app.token_for_org(client, org),
        }
    }

    /// The App, in App mode.
    pub fn app(&self) -> Option<&Arc<GithubApp>> {
        match self {
            Self::App(app) => Some(app),
            Self::Token(_) => None,
        }
    }
}
