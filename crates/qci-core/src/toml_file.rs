//! Reading a settings file in TOML. Every side of qci has one (dom0's
//! `dom0.toml`, the dev VM's `config.toml`, the host's `HOST.toml`); the
//! errors name the file, and toml's own message names the line and key.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TomlFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

/// Reads and parses `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, TomlFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(source) => Err(TomlFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads and parses `path`, or `None` when there is no such file: for
/// settings whose absence means the defaults.
pub fn read_optional<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, TomlFileError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Ok(text) => parse(path, &text).map(Some),
        Err(source) => Err(TomlFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, TomlFileError> {
    toml::from_str(text).map_err(|source| TomlFileError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}
