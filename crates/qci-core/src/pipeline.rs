//! The steps a project asks for, from `.qci.toml` at the top of its tree.
//! The file comes from the dev VM, so it is parsed strictly and bounded.

use crate::artifacts::ArtifactSpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The file name looked for at the top of the exported tree.
pub const FILE_NAME: &str = ".qci.toml";
/// A pipeline file larger than this is refused unread (by dom0, and by the
/// host reading it through GitHub for its Qubes versions).
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// The most Qubes versions a pipeline may name.
pub const MAX_QUBES_VERSIONS: usize = 16;
/// Used when a step names no timeout.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// An ordered list of steps; the first failure stops the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub steps: Vec<Step>,
    /// Qubes versions the project wants to run on: the host runs one job
    /// per version, each with its own status context. Empty: the host's
    /// own choice for the repository.
    pub qubes: Vec<String>,
    /// What dom0 collects after the last step (`[artifacts]`); empty when
    /// the file declares none.
    pub artifacts: ArtifactSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Shown in the log as `[name]`: `[A-Za-z0-9_.-]`, at most 32 characters.
    pub name: String,
    /// Run with `sh -c` in the workspace.
    pub command: String,
    pub timeout: Duration,
    /// Added to the step's environment after `CI=true`.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    qubes: Vec<String>,
    steps: Vec<RawStep>,
    #[serde(default)]
    artifacts: RawArtifacts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifacts {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    reports: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    command: String,
    /// A human duration: `90s`, `30m`, `2h`.
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read {FILE_NAME}: {0}")]
    Read(#[from] std::io::Error),
    #[error("{FILE_NAME} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("{FILE_NAME} is not valid: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("{FILE_NAME}: {0}")]
    Invalid(String),
}

impl Step {
    /// The step as statuses name it: its command when that is one line of
    /// at most 32 characters (`make dev`), else its name, which is short
    /// and says what the step is when its command is a script.
    pub fn label(&self) -> &str {
        let command = self.command.trim();
        if command.chars().count() <= 32 && !command.contains('\n') && !command.is_empty() {
            command
        } else {
            &self.name
        }
    }
}

impl PipelineError {
    /// The error on one line, for a status description: a TOML error's
    /// full text spans several lines (the line it found and a caret under
    /// the fault), which a description would squash into one. This keeps
    /// the message and where it is.
    pub fn summary(&self) -> String {
        let Self::Toml(e) = self else {
            return self.to_string();
        };
        let text = e.to_string();
        let at = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("TOML parse error at "));
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match at {
            Some(at) => format!("{FILE_NAME} is not valid: {message} ({at})"),
            None => format!("{FILE_NAME} is not valid: {message}"),
        }
    }
}

impl Pipeline {
    /// `make clone`, `make dev`, `make test`: what SecureDrop Workstation runs.
    pub fn default_steps() -> Self {
        let step = |name: &str| Step {
            name: name.to_owned(),
            command: format!("make {name}"),
            timeout: DEFAULT_STEP_TIMEOUT,
            env: BTreeMap::new(),
        };
        Self {
            steps: vec![step("clone"), step("dev"), step("test")],
            qubes: Vec::new(),
            artifacts: ArtifactSpec::default(),
        }
    }

    /// Reads `.qci.toml` from `tree`, or gives the default steps without one.
    /// A symlinked pipeline file is refused: it could point anywhere in dom0.
    pub fn load(tree: &Path) -> Result<Self, PipelineError> {
        let path = tree.join(FILE_NAME);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default_steps()),
            Err(e) => return Err(e.into()),
        };
        if !meta.is_file() {
            return Err(PipelineError::Invalid("not a regular file".into()));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(PipelineError::TooLarge);
        }
        Self::parse(&std::fs::read_to_string(&path)?)
    }

    pub fn parse(text: &str) -> Result<Self, PipelineError> {
        let raw: RawPipeline = toml::from_str(text)?;
        if raw.steps.is_empty() {
            return Err(PipelineError::Invalid("no steps".into()));
        }
        let mut steps = Vec::with_capacity(raw.steps.len());
        for s in raw.steps {
            let name_ok = !s.name.is_empty()
                && s.name.len() <= 32
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !name_ok {
                return Err(PipelineError::Invalid(format!(
                    "step name {:?} must be 1 to 32 characters of A-Z a-z 0-9 _ . -",
                    s.name
                )));
            }
            if steps.iter().any(|t: &Step| t.name == s.name) {
                return Err(PipelineError::Invalid(format!(
                    "step {:?} appears twice",
                    s.name
                )));
            }
            let timeout = match &s.timeout {
                None => DEFAULT_STEP_TIMEOUT,
                Some(t) => parse_duration(t).map_err(|e| {
                    PipelineError::Invalid(format!("step {:?}: timeout {t:?}: {e}", s.name))
                })?,
            };
            if timeout.is_zero() {
                return Err(PipelineError::Invalid(format!(
                    "step {:?}: timeout is zero",
                    s.name
                )));
            }
            if let Some(bad) = s.env.keys().find(|k| !valid_env_name(k)) {
                return Err(PipelineError::Invalid(format!(
                    "step {:?}: bad environment variable name {bad:?}",
                    s.name
                )));
            }
            steps.push(Step {
                name: s.name,
                command: s.command,
                timeout,
                env: s.env,
            });
        }
        // Each version is a job and a commit status: a pull request from
        // anyone must not be able to ask for thousands.
        if raw.qubes.len() > MAX_QUBES_VERSIONS {
            return Err(PipelineError::Invalid(format!(
                "qubes: at most {MAX_QUBES_VERSIONS} versions"
            )));
        }
        let mut qubes: Vec<String> = Vec::with_capacity(raw.qubes.len());
        for version in raw.qubes {
            if !valid_qubes_version(&version) {
                return Err(PipelineError::Invalid(format!(
                    "qubes: {:?} is not a Qubes version such as \"4.2\"",
                    crate::status::cut_bytes(&version, 32)
                )));
            }
            if !qubes.contains(&version) {
                qubes.push(version);
            }
        }
        let artifacts = ArtifactSpec::new(&raw.artifacts.paths, &raw.artifacts.reports)
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        Ok(Self {
            steps,
            qubes,
            artifacts,
        })
    }
}

/// A Qubes version as qci names it (`4.2`, `4.3rc1`): letters, digits and
/// dots, at most 16. It becomes part of job ids and status contexts.
pub fn valid_qubes_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 16
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.')
}

/// Parses a human duration (`90s`, `30m`, `2h`, `1h 30m`), the one form
/// every qci configuration file uses.
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_make_clone_dev_test() {
        let p = Pipeline::default_steps();
        let cmds: Vec<_> = p.steps.iter().map(|s| s.command.as_str()).collect();
        assert_eq!(cmds, ["make clone", "make dev", "make test"]);
    }

    #[test]
    fn parses_steps_in_order_with_timeouts_and_env() {
        let p = Pipeline::parse(
            r#"
            qubes = ["4.2"]
            [[steps]]
            name = "lint"
            command = "make lint"
            timeout = "90s"
            env = { RUST_LOG = "debug" }
            [[steps]]
            name = "test"
            command = "make test"
            "#,
        )
        .unwrap();
        assert_eq!(p.steps[0].name, "lint");
        assert_eq!(p.steps[0].timeout, Duration::from_secs(90));
        assert_eq!(p.steps[0].env["RUST_LOG"], "debug");
        assert_eq!(p.steps[1].timeout, DEFAULT_STEP_TIMEOUT);
        assert_eq!(p.qubes, ["4.2"]);
        let twice = Pipeline::parse(
            "qubes = [\"4.3\", \"4.2\", \"4.3\"]\n[[steps]]\nname = \"a\"\ncommand = \"x\"",
        )
        .unwrap();
        assert_eq!(twice.qubes, ["4.3", "4.2"], "in order, once each");
    }

    #[test]
    fn refuses_bad_names_durations_and_fields() {
        let steps_a = "[[steps]]\nname = \"a\"\ncommand = \"x\"";
        let seventeen = format!("qubes = [{}]\n{steps_a}", vec!["\"4.2\""; 17].join(", "));
        let cases: [(&str, &str); 9] = [
            (
                "[[steps]]\nname = \"a b\"\ncommand = \"x\"",
                ".qci.toml: step name \"a b\" must be 1 to 32 characters of A-Z a-z 0-9 _ . -",
            ),
            (
                "[[steps]]\nname = \"a\"\ncommand = \"x\"\ntimeout = \"soon\"",
                ".qci.toml: step \"a\": timeout \"soon\": expected number at 0",
            ),
            (
                "[[steps]]\nname = \"a\"\ncommand = \"x\"\nshell = \"bash\"",
                ".qci.toml is not valid: unknown field `shell`, expected one of `name`, \
                 `command`, `timeout`, `env` (line 4, column 1)",
            ),
            (
                "[[steps]]\nname = \"a\"\ncommand = \"x\"\nenv = { \"A=B\" = \"1\" }",
                ".qci.toml: step \"a\": bad environment variable name \"A=B\"",
            ),
            (
                "[[steps]]\nname = \"a\"\ncommand = \"x\"\n[[steps]]\nname = \"a\"\ncommand = \"y\"",
                ".qci.toml: step \"a\" appears twice",
            ),
            ("steps = []", ".qci.toml: no steps"),
            (
                "qubes = [\"4.2; reboot\"]\n[[steps]]\nname = \"a\"\ncommand = \"x\"",
                ".qci.toml: qubes: \"4.2; reboot\" is not a Qubes version such as \"4.2\"",
            ),
            (
                "qubes = [\"\"]\n[[steps]]\nname = \"a\"\ncommand = \"x\"",
                ".qci.toml: qubes: \"\" is not a Qubes version such as \"4.2\"",
            ),
            (&seventeen, ".qci.toml: qubes: at most 16 versions"),
        ];
        for (bad, refusal) in cases {
            match Pipeline::parse(bad) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(e) => assert_eq!(e.summary(), refusal, "{bad:?}"),
            }
        }
    }

    #[test]
    fn artifacts_are_parsed_and_bad_patterns_refused_naming_them() {
        let steps = "[[steps]]\nname = \"a\"\ncommand = \"x\"\n";
        let p = Pipeline::parse(&format!(
            "{steps}[artifacts]\npaths = [\"test-results/\", \"*.log\"]\nreports = [\"test-results/*.xml\"]\n"
        ))
        .unwrap();
        let texts = |v: &[crate::artifacts::Pattern]| {
            v.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(texts(&p.artifacts.paths), ["test-results/", "*.log"]);
        assert_eq!(texts(&p.artifacts.reports), ["test-results/*.xml"]);
        assert!(Pipeline::parse(steps).unwrap().artifacts.is_empty());
        let cases = [
            (
                "[artifacts]\npaths = [\"logs/../../etc/*\"]",
                ".qci.toml: artifacts: pattern \"logs/../../etc/*\" has a `..` component",
            ),
            (
                "[artifacts]\nreports = [\"/etc/qci/dom0.toml\"]",
                ".qci.toml: artifacts: pattern \"/etc/qci/dom0.toml\" is absolute; \
                 patterns are relative to the workspace",
            ),
            (
                "[artifacts]\npaths = [\"\"]",
                ".qci.toml: artifacts: pattern \"\" is empty",
            ),
            (
                "[artifacts]\nfiles = [\"a\"]",
                ".qci.toml is not valid: unknown field `files`, expected `paths` or \
                 `reports` (line 5, column 1)",
            ),
        ];
        for (bad, refusal) in cases {
            match Pipeline::parse(&format!("{steps}{bad}")) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(e) => assert_eq!(e.summary(), refusal, "{bad:?}"),
            }
        }
    }

    #[test]
    fn a_step_is_labelled_by_a_short_command_or_else_its_name() {
        let step = |command: &str| Step {
            name: "unit".into(),
            command: command.into(),
            timeout: DEFAULT_STEP_TIMEOUT,
            env: BTreeMap::new(),
        };
        assert_eq!(step("make dev").label(), "make dev");
        assert_eq!(step(&"x".repeat(32)).label(), "x".repeat(32));
        assert_eq!(step(&"x".repeat(33)).label(), "unit");
        assert_eq!(step("make a\nmake b").label(), "unit");
        assert_eq!(step("\nmake test\n").label(), "make test");
        assert_eq!(
            step(&"é".repeat(32)).label(),
            "é".repeat(32),
            "characters, not bytes"
        );
        assert_eq!(step(" ").label(), "unit");
        assert!(
            Pipeline::default_steps()
                .steps
                .iter()
                .all(|s| s.label() == s.command)
        );
    }

    #[test]
    fn a_toml_error_keeps_its_lines_and_sums_up_on_one() {
        let err = Pipeline::parse("[[steps]]\nname = \"a\"\ncommand = \"x\"\nshell = \"bash\"\n")
            .unwrap_err();
        let full = err.to_string();
        assert!(full.lines().count() > 2, "{full}");
        assert!(full.contains("shell = \"bash\""), "{full}");
        let summary = err.summary();
        assert!(!summary.contains('\n'), "{summary}");
        assert!(
            summary.starts_with(".qci.toml is not valid: unknown field `shell`")
                && summary.ends_with("(line 4, column 1)"),
            "{summary}"
        );
        let invalid = PipelineError::Invalid("no steps".into());
        assert_eq!(invalid.summary(), invalid.to_string());
    }
}
