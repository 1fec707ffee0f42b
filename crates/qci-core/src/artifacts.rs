//! The files a job leaves behind, as dom0 hands them to whoever reads them
//! (the host through the guest channel, `qci run --local`, a person in
//! dom0): one plain tar archive per job, `ARTIFACT_DIR/JOB.tar`.
//!
//! The archive holds only directories and regular files, under
//! [`FILES_DIR`], at the paths they had in the workspace, and one list,
//! [`REPORTS_LIST`], of the paths under `files/` that `.qci.toml`'s
//! `reports` named (JUnit XML), one per line. Its reader must still treat
//! every byte as hostile: the steps ran as dom0's user, with sudo, and could
//! have written the archive themselves.

use crate::JobId;

/// Where the collected files sit in the archive.
pub const FILES_DIR: &str = "files";
/// The archive entry that lists the test reports among the files.
pub const REPORTS_LIST: &str = "reports";

/// `JOB.tar`: the archive's name in dom0's artifact directory.
pub fn archive_name(job: &JobId) -> String {
    format!("{job}.tar")
}

/// The most patterns `[artifacts]` may hold, `paths` and `reports` together.
pub const MAX_PATTERNS: usize = 32;
/// The longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;

/// `.qci.toml`'s `[artifacts]`: what dom0 collects after the last step.
/// Empty (no `[artifacts]`): nothing is collected and no archive is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// Files or directories to collect (a directory with all below it).
    pub paths: Vec<Pattern>,
    /// JUnit XML reports: collected too, and listed in [`REPORTS_LIST`].
    pub reports: Vec<Pattern>,
}

impl ArtifactSpec {
    /// Checks every pattern and their number. The file comes from the dev
    /// VM, so a pattern that could reach outside the workspace is refused
    /// here rather than trusted to the walk.
    pub fn new(paths: &[String], reports: &[String]) -> Result<Self, PatternError> {
        let count = paths.len() + reports.len();
        if count > MAX_PATTERNS {
            return Err(PatternError::TooMany(count));
        }
        let parse = |list: &[String]| -> Result<Vec<Pattern>, PatternError> {
            list.iter().map(|p| Pattern::parse(p)).collect()
        };
        Ok(Self {
            paths: parse(paths)?,
            reports: parse(reports)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.reports.is_empty()
    }

    /// Every pattern, `paths` then `reports`.
    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.paths.iter().chain(&self.reports)
    }
}

/// Why a pattern of `[artifacts]` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("artifacts: pattern {0:?} is empty")]
    Empty(String),
    #[error("artifacts: pattern {0:?} is absolute; patterns are relative to the workspace")]
    Absolute(String),
    #[error("artifacts: pattern {0:?} has a `..` component")]
    DotDot(String),
    #[error("artifacts: pattern {0:?} has an empty or `.` component")]
    EmptyComponent(String),
    #[error("artifacts: pattern {0:?} has a NUL or control character")]
    Control(String),
    #[error("artifacts: pattern {0:?} is longer than {MAX_PATTERN_BYTES} bytes")]
    TooLong(String),
    #[error("artifacts: {0} patterns; at most {MAX_PATTERNS} in all")]
    TooMany(usize),
}

/// One component of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    /// `**`: any number of directories, none included.
    AnyDirs,
    /// A name with `*` (any characters) and `?` (one character).
    Glob(String),
}

/// A relative, `/`-separated path pattern: `*` is any characters but `/`,
/// `?` one character, `**` as a whole component any number of directories.
/// A trailing `/` matches directories only. A pattern that matches a
/// directory collects it and everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    components: Vec<Component>,
    dir_only: bool,
}

/// How a path stands with a pattern (see [`Pattern::matches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// The path itself matches.
    pub here: bool,
    /// Something below the path (a directory) could match.
    pub below: bool,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong(
                crate::status::cut_bytes(text, 32).into_owned(),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(PatternError::Control(text.to_owned()));
        }
        if text.is_empty() {
            return Err(PatternError::Empty(text.to_owned()));
        }
        if text.starts_with('/') {
            return Err(PatternError::Absolute(text.to_owned()));
        }
        let (body, dir_only) = match text.strip_suffix('/') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let mut components = Vec::new();
        for part in body.split('/') {
            match part {
                ".." => return Err(PatternError::DotDot(text.to_owned())),
                "" | "." => return Err(PatternError::EmptyComponent(text.to_owned())),
                // `**/**` is `**`: fewer states for the matcher.
                "**" if components.last() == Some(&Component::AnyDirs) => {}
                "**" => components.push(Component::AnyDirs),
                glob => components.push(Component::Glob(glob.to_owned())),
            }
        }
        Ok(Self {
            text: text.to_owned(),
            components,
            dir_only,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `path` (its components, from the workspace's top) matches,
    /// and whether anything below it could: the walk descends only into
    /// directories where that is so. Runs the pattern as a small automaton,
    /// so its cost is the pattern's length times the path's, whatever the
    /// `**`s.
    pub fn matches(&self, path: &[&str], is_dir: bool) -> Match {
        let n = self.components.len();
        // states[j]: the first j components match the path so far.
        let mut states = vec![false; n + 1];
        states[0] = true;
        self.close(&mut states);
        for name in path {
            let mut next = vec![false; n + 1];
            for j in (0..n).filter(|&j| states[j]) {
                match &self.components[j] {
                    Component::AnyDirs => next[j] = true,
                    Component::Glob(g) if glob_matches(g, name) => next[j + 1] = true,
                    Component::Glob(_) => {}
                }
            }
            self.close(&mut next);
            states = next;
        }
        Match {
            here: states[n] && (is_dir || !self.dir_only),
            below: is_dir && states[..n].iter().any(|&s| s),
        }
    }

    /// A `**` may match no directory: its state also reaches the next.
    fn close(&self, states: &mut [bool]) {
        for j in 0..self.components.len() {
            if states[j] && self.components[j] == Component::AnyDirs {
                states[j + 1] = true;
            }
        }
    }
}

/// `*` and `?` within one name, by characters. Backtracks to the last `*`
/// only, so it is linear in practice and quadratic at worst.
fn glob_matches(glob: &str, name: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let s: Vec<char> = name.chars().collect();
    let (mut gi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, si));
                gi += 1;
            }
            Some(&c) if c == '?' || c == s[si] => {
                gi += 1;
                si += 1;
            }
            _ => match star {
                Some((sg, ss)) => {
                    gi = sg + 1;
                    si = ss + 1;
                    star = Some((sg, ss + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pattern: &str, path: &str, is_dir: bool) -> (bool, bool) {
        let parts: Vec<&str> = path.split('/').collect();
        let m = Pattern::parse(pattern).unwrap().matches(&parts, is_dir);
        (m.here, m.below)
    }

    #[test]
    fn globs_match_within_one_name() {
        assert!(glob_matches("*.log", "build.log"));
        assert!(glob_matches("*.log", ".log"));
        assert!(!glob_matches("*.log", "build.log.1"));
        assert!(glob_matches("a?c", "abc"));
        assert!(
            glob_matches("a?c", "aéc"),
            "? is one character, not one byte"
        );
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*a*b*", "xxaxxbxx"));
        assert!(!glob_matches("*a*b*", "xxbxxaxx"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn patterns_match_paths_and_say_where_to_look() {
        // (pattern, path, is a directory) → (matches here, could match below)
        let cases = [
            ("*.log", "build.log", false, (true, false)),
            ("*.log", "sub/build.log", false, (false, false)),
            ("*.log", "sub", true, (false, false)),
            ("test-results/", "test-results", true, (true, false)),
            ("test-results/", "test-results", false, (false, false)),
            ("test-results", "test-results", false, (true, false)),
            ("test-results/*.xml", "test-results", true, (false, true)),
            (
                "test-results/*.xml",
                "test-results/a.xml",
                false,
                (true, false),
            ),
            (
                "test-results/*.xml",
                "test-results/x/a.xml",
                false,
                (false, false),
            ),
            ("**/*.xml", "a.xml", false, (true, false)),
            ("**/*.xml", "a/b/c/d.xml", false, (true, false)),
            ("**/*.xml", "a/b", true, (false, true)),
            ("a/**/z", "a/z", false, (true, false)),
            ("a/**/z", "a/b/c/z", false, (true, false)),
            ("a/**/z", "b/z", false, (false, false)),
            ("a/**/z", "b", true, (false, false)),
            ("a/**", "a/b/c", false, (true, false)),
            ("a/**", "a", true, (true, true)),
            ("**/**/*.log", "x/y.log", false, (true, false)),
        ];
        for (pattern, path, is_dir, expected) in cases {
            assert_eq!(at(pattern, path, is_dir), expected, "{pattern} at {path}");
        }
    }

    #[test]
    fn many_double_stars_cost_no_more_than_their_length() {
        let pattern = "**/a/".repeat(50) + "b";
        let path: Vec<&str> = std::iter::repeat_n("a", 64).collect();
        let started = std::time::Instant::now();
        let m = Pattern::parse(&pattern).unwrap().matches(&path, true);
        assert_eq!((m.here, m.below), (false, true));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn refuses_patterns_that_could_leave_the_workspace_or_are_malformed() {
        let long = "a".repeat(257);
        let cases = [
            ("", PatternError::Empty(String::new())),
            ("/etc/passwd", PatternError::Absolute("/etc/passwd".into())),
            (
                "logs/../../etc/*",
                PatternError::DotDot("logs/../../etc/*".into()),
            ),
            ("..", PatternError::DotDot("..".into())),
            ("a//b", PatternError::EmptyComponent("a//b".into())),
            ("./a", PatternError::EmptyComponent("./a".into())),
            ("a\0b", PatternError::Control("a\0b".into())),
            ("a\nb", PatternError::Control("a\nb".into())),
            (&long, PatternError::TooLong(format!("{}…", "a".repeat(29)))),
        ];
        for (text, refusal) in cases {
            assert_eq!(Pattern::parse(text), Err(refusal), "{text:?}");
        }
        assert!(Pattern::parse(&"a".repeat(256)).is_ok());
        let many: Vec<String> = (0..20).map(|i| format!("{i}.log")).collect();
        assert_eq!(
            ArtifactSpec::new(&many, &many[..13]),
            Err(PatternError::TooMany(33))
        );
        assert_eq!(
            PatternError::DotDot("logs/../../etc/*".into()).to_string(),
            "artifacts: pattern \"logs/../../etc/*\" has a `..` component"
        );
    }
}
