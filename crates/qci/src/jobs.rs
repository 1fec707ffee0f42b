//! `qci jobs list|tests|cancel|retry`: the operators' view of a running
//! `qci serve`, through its job API (the operator token from the host config).

use crate::out::{self, outln};
use clap::Subcommand;
use qci_core::ExitCode;
use qci_server::HostConfig;
use std::path::Path;
use std::time::Duration;

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Running, queued and recent jobs.
    List,
    /// A job's tests: the failed ones first, with their messages and since
    /// when they fail, then the counts, the flaky ones and the job's files.
    Tests {
        /// The job's id, as `qci jobs list` shows it.
        job: String,
    },
    /// End a queued or running job as canceled (its machine is powered off).
    Cancel {
        /// The job's id, as `qci jobs list` shows it.
        job: String,
    },
    /// Queue a finished job again (a new job on the same commit and context).
    Retry {
        /// The job's id, as `qci jobs list` shows it.
        job: String,
    },
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a jobs command failed. Only the server's refusal of a request can be
/// the caller's fault (exit 2); the rest, a broken host config included, is
/// the CI's (exit 3).
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Config(#[from] qci_server::config::ConfigError),
    #[error(transparent)]
    Client(reqwest::Error),
    #[error("the host config has no server.admin_token, which cancel and retry need")]
    NoToken,
    #[error("cannot reach qci serve at {base}: {source}")]
    Unreachable {
        base: String,
        source: reqwest::Error,
    },
    /// The server said no; `body` is its answer as stderr may show it.
    #[error("{body} (HTTP {})", .status.as_u16())]
    Refused {
        status: reqwest::StatusCode,
        body: String,
    },
    #[error(transparent)]
    Reply(#[from] serde_json::Error),
}

impl JobsError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Refused { status, .. } if status.is_client_error() => ExitCode::BadInput,
            _ => ExitCode::CiError,
        }
    }
}

pub fn run(config: &Path, url: Option<&str>, command: &JobsCommand) -> Result<ExitCode, JobsError> {
    let config = HostConfig::load(config)?;
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(JobsError::Client)?;
    let (method, path) = match command {
        JobsCommand::List => (reqwest::Method::GET, "/api/jobs".to_owned()),
        JobsCommand::Tests { job } => (reqwest::Method::GET, format!("/api/jobs/{job}/tests")),
        JobsCommand::Cancel { job } => (reqwest::Method::POST, format!("/api/jobs/{job}/cancel")),
        JobsCommand::Retry { job } => (reqwest::Method::POST, format!("/api/jobs/{job}/retry")),
    };
    let mut request = client.request(method, format!("{base}{path}"));
    if !matches!(command, JobsCommand::List | JobsCommand::Tests { .. }) {
        let token = config
            .server
            .admin_token
            .as_ref()
            .ok_or(JobsError::NoToken)?
            .read()?;
        request = request.bearer_auth(token);
        if let Ok(user) = std::env::var("USER") {
            request = request.header("X-QCI-User", user);
        }
    }
    let reply = request.send().map_err(|e| JobsError::Unreachable {
        base: base.clone(),
        source: e.without_url(),
    })?;
    let status = reply.status();
    let body = reply.text().unwrap_or_default();
    if !status.is_success() {
        return Err(JobsError::Refused {
            status,
            body: out::remote_err(body.trim()).into_owned(),
        });
    }
    let value: serde_json::Value = serde_json::from_str(&body)?;
    match command {
        JobsCommand::List => {
            for (title, key) in [("live", "live"), ("recent", "recent")] {
                let jobs = value[key].as_array().cloned().unwrap_or_default();
                outln!("{title} ({}):", jobs.len());
                for job in jobs {
                    let s = |k: &str| out::remote(job[k].as_str().unwrap_or_default()).into_owned();
                    let sha = s("sha");
                    outln!(
                        "  {:<14} {:<9} {} {} {} {}",
                        s("id"),
                        s("state"),
                        s("repo"),
                        s("git_ref"),
                        sha.get(..12).unwrap_or(&sha),
                        s("description")
                    );
                }
            }
        }
        JobsCommand::Tests { job } => print_tests(job, &value),
        JobsCommand::Cancel { job } => outln!("qci: job {job} canceled"),
        JobsCommand::Retry { job } => outln!(
            "qci: job {job} queued again as {}",
            out::remote(value["queued"].as_str().unwrap_or("?"))
        ),
    }
    Ok(ExitCode::Success)
}

/// `qci jobs tests`: what `/jobs/JOB` shows of the tests, on a terminal.
fn print_tests(job: &str, value: &serde_json::Value) {
    let s = |v: &serde_json::Value, k: &str| {
        out::remote(v[k].as_str().unwrap_or_default()).into_owned()
    };
    let tests = &value["tests"];
    if tests.is_null() {
        outln!("job {job}: no test reports");
    } else {
        outln!("job {job}: {}", s(tests, "headline"));
        for f in tests["failing"].as_array().into_iter().flatten() {
            let name = match s(f, "classname") {
                c if c.is_empty() => s(f, "name"),
                c => format!("{c}::{}", s(f, "name")),
            };
            outln!("  {:<8} {name}", s(f, "outcome"));
            let message = s(f, "message");
            if !message.is_empty() {
                outln!("           {message}");
            }
            outln!("           {}", s(f, "history"));
            let flaky = s(f, "flaky_text");
            if !flaky.is_empty() {
                outln!("           {flaky}");
            }
        }
        let flaky = tests["flaky"].as_array().cloned().unwrap_or_default();
        if !flaky.is_empty() {
            outln!("flaky tests that passed here:");
            for f in flaky {
                outln!(
                    "  {}::{}  {}",
                    s(&f, "classname"),
                    s(&f, "name"),
                    s(&f, "flaky_text")
                );
            }
        }
    }
    let artifacts = value["artifacts"].as_array().cloned().unwrap_or_default();
    if !artifacts.is_empty() {
        outln!("artifacts:");
        for a in artifacts {
            outln!(
                "  {} ({} bytes)",
                s(&a, "path"),
                a["bytes"].as_u64().unwrap_or(0)
            );
        }
    }
}
