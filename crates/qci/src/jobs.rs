//! `qci jobs list|cancel|retry`: the operators' view of a running
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

pub fn run(config: &Path, url: Option<&str>, command: &JobsCommand) -> ExitCode {
    match try_run(config, url, command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qci: {e}");
            ExitCode::CiError
        }
    }
}

fn try_run(config: &Path, url: Option<&str>, command: &JobsCommand) -> Result<ExitCode, String> {
    let config = HostConfig::load(config).map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
    let (method, path) = match command {
        JobsCommand::List => (reqwest::Method::GET, "/api/jobs".to_owned()),
        JobsCommand::Cancel { job } => (reqwest::Method::POST, format!("/api/jobs/{job}/cancel")),
        JobsCommand::Retry { job } => (reqwest::Method::POST, format!("/api/jobs/{job}/retry")),
    };
    let mut request = client.request(method, format!("{base}{path}"));
    if !matches!(command, JobsCommand::List) {
        let token = config
            .server
            .admin_token
            .as_ref()
            .ok_or("the host config has no server.admin_token, which cancel and retry need")?
            .read()
            .map_err(|e| e.to_string())?;
        request = request.bearer_auth(token);
        if let Ok(user) = std::env::var("USER") {
            request = request.header("X-QCI-User", user);
        }
    }
    let reply = request
        .send()
        .map_err(|e| format!("cannot reach qci serve at {base}: {}", e.without_url()))?;
    let status = reply.status();
    let body = reply.text().unwrap_or_default();
    if !status.is_success() {
        eprintln!(
            "qci: {} (HTTP {})",
            out::remote_err(body.trim()),
            status.as_u16()
        );
        return Ok(if status.is_client_error() {
            ExitCode::BadInput
        } else {
            ExitCode::CiError
        });
    }
    let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
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
        JobsCommand::Cancel { job } => outln!("qci: job {job} canceled"),
        JobsCommand::Retry { job } => outln!(
            "qci: job {job} queued again as {}",
            out::remote(value["queued"].as_str().unwrap_or("?"))
        ),
    }
    Ok(ExitCode::Success)
}
