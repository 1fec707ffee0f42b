//! Job ids travel as qrexec service arguments and become file names on both
//! sides, so every side validates them the same way before any use.

use std::fmt;
use std::str::FromStr;

/// A job id: 1 to 64 characters of `[A-Za-z0-9_.-]`, not starting with `.`
/// or `-`. Holding one proves it is safe as a file name and as a qrexec
/// argument (no separators, no option-like or hidden names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobIdError {
    #[error("invalid job id: empty")]
    Empty,
    #[error("invalid job id: longer than 64 characters")]
    TooLong,
    #[error("invalid job id {0:?}: must not start with '.' or '-'")]
    BadStart(String),
    #[error("invalid job id {0:?}: only A-Z a-z 0-9 _ . - are allowed")]
    BadChar(String),
}

impl JobId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, JobIdError> {
        if s.is_empty() {
            return Err(JobIdError::Empty);
        }
        // Checked first, so the errors below quote at most 64 bytes of
        // input that may be hostile and huge.
        if s.len() > Self::MAX_LEN {
            return Err(JobIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(JobIdError::BadChar(s.to_owned()));
        }
        if s.starts_with(['.', '-']) {
            return Err(JobIdError::BadStart(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The longest prefix [`JobId::generate`] takes: with the 17-digit
    /// stamp, a pid (at most 10 digits) and two dashes, the id stays within
    /// [`JobId::MAX_LEN`].
    pub const MAX_PREFIX_LEN: usize = 20;

    /// A new id `PREFIX-YYYYMMDDhhmmssmmm-PID` (UTC, milliseconds): the one
    /// way the CLI names a job, sortable and unique per machine.
    ///
    /// The prefix is part of qci's own code, never outside data (hence
    /// `&'static str`): 1 to [`JobId::MAX_PREFIX_LEN`] ASCII letters and
    /// digits, starting with a letter, so the id is valid by construction.
    ///
    /// # Panics
    ///
    /// On a prefix that breaks that rule: a bug in the caller, found by its
    /// first run.
    pub fn generate(prefix: &'static str) -> Self {
        assert!(
            Self::is_prefix(prefix),
            "job id prefix {prefix:?}: 1 to {} ASCII letters and digits, starting with a letter",
            Self::MAX_PREFIX_LEN
        );
        let stamp: String = crate::log::timestamp(std::time::SystemTime::now())
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        Self(format!("{prefix}-{stamp}-{}", std::process::id()))
    }

    fn is_prefix(prefix: &str) -> bool {
        (1..=Self::MAX_PREFIX_LEN).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for JobId {
    type Err = JobIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The server's job ids.
impl JobId {
    /// `SEQ-qVERSION`: the host's queue sequence number and the Qubes
    /// version, unique on one host and readable in a URL. Fails only for a
    /// version that is not one (see `pipeline::valid_qubes_version`).
    pub fn for_queue(seq: u64, qubes: &str) -> Result<Self, JobIdError> {
        Self::parse(&format!("{seq}-q{qubes}"))
    }
}

/// Lookups by an id as asked (a URL's path) or as held take either.
impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in [
            "a",
            "JOB-1",
            "local_20261122.1",
            "x".repeat(64).as_str(),
            "9",
        ] {
            assert_eq!(JobId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn generated_ids_are_prefix_stamp_pid_and_valid() {
        let id = JobId::generate("local");
        let parts: Vec<&str> = id.as_str().split('-').collect();
        assert_eq!(parts[0], "local");
        assert_eq!(parts[1].len(), 17, "{id}");
        assert!(parts[1].bytes().all(|b| b.is_ascii_digit()), "{id}");
        assert_eq!(parts[2], std::process::id().to_string());
        assert_eq!(JobId::parse(id.as_str()), Ok(id.clone()));
        let longest = JobId::generate("x2345678901234567890");
        assert_eq!(JobId::parse(longest.as_str()), Ok(longest.clone()));
    }

    #[test]
    fn generate_takes_only_plain_prefixes() {
        for bad in ["", "-x", "1x", "a.b", "a-b", "x23456789012345678901"] {
            assert!(!JobId::is_prefix(bad), "{bad:?}");
        }
        assert!(JobId::is_prefix("run"));
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(JobId::parse(""), Err(JobIdError::Empty));
        assert_eq!(JobId::parse(&"x".repeat(65)), Err(JobIdError::TooLong));
        for bad in [".hidden", "-rf", ".."] {
            assert_eq!(JobId::parse(bad), Err(JobIdError::BadStart(bad.into())));
        }
        for bad in ["a/b", "a b", "a+b", "é", "a\0", "../x"] {
            assert_eq!(JobId::parse(bad), Err(JobIdError::BadChar(bad.into())));
        }
    }

    #[test]
    fn a_queue_id_is_its_sequence_and_qubes_version() {
        assert_eq!(JobId::for_queue(17, "4.2").unwrap().as_str(), "17-q4.2");
        assert_eq!(
            JobId::for_queue(1, "4.2 beta"),
            Err(JobIdError::BadChar("1-q4.2 beta".into()))
        );
    }
}
