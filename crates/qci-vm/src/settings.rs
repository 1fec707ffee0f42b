//! The dev VM's own settings, `~/.qci/config.toml`. Every key is optional;
//! a missing file means the defaults, and an unknown key is refused (a typo
//! must not silently keep the default).

use crate::paths::Paths;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How many finished jobs' workspaces `begin` keeps (newest first), so
    /// the last runs can be looked at; older ones are removed.
    #[serde(default = "default_keep")]
    pub keep_workspaces: usize,
}

fn default_keep() -> usize {
    3
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            keep_workspaces: default_keep(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl Settings {
    pub fn load(paths: &Paths) -> Result<Self, SettingsError> {
        let path = paths.settings();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|source| SettingsError::Toml { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(SettingsError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_the_file_and_typos_refused() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths {
            home: home.path().to_owned(),
        };
        assert_eq!(Settings::load(&paths).unwrap().keep_workspaces, 3);
        std::fs::create_dir_all(home.path().join(".qci")).unwrap();
        std::fs::write(paths.settings(), "keep_workspaces = 0\n").unwrap();
        assert_eq!(Settings::load(&paths).unwrap().keep_workspaces, 0);
        std::fs::write(paths.settings(), "keep_workspace = 1\n").unwrap();
        let err = Settings::load(&paths).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
