//! The dev VM's own settings, `~/.qci/config.toml`. Every key is optional;
//! a missing file means the defaults, and an unknown key is refused (a typo
//! must not silently keep the default).

use crate::paths::Paths;
use qci_core::toml_file::{self, TomlFileError};
use serde::Deserialize;

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

impl Settings {
    /// A missing file means the defaults.
    pub fn load(paths: &Paths) -> Result<Self, TomlFileError> {
        Ok(toml_file::read_optional(&paths.settings())?.unwrap_or_default())
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
