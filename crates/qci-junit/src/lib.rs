//! STUB: the types of the JUnit reader, so its users build before it lands.
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub cases: Vec<TestCase>,
}
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub skipped: usize,
}
impl Report {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in &self.cases {
            match t.outcome {
                Outcome::Passed => c.passed += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Errored => c.errored += 1,
                Outcome::Skipped => c.skipped += 1,
            }
        }
        c
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub name: String,
    pub classname: String,
    pub outcome: Outcome,
    pub duration: Option<Duration>,
    pub message: Option<String>,
    pub details: Option<String>,
    pub output: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Passed,
    Failed,
    Errored,
    Skipped,
}
impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored => "errored",
            Self::Skipped => "skipped",
        }
    }
}
#[derive(Debug, thiserror::Error)]
#[error("unknown outcome {0:?}")]
pub struct UnknownOutcome(pub String);
impl std::str::FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "passed" => Self::Passed,
            "failed" => Self::Failed,
            "errored" => Self::Errored,
            "skipped" => Self::Skipped,
            _ => return Err(UnknownOutcome(s.into())),
        })
    }
}
