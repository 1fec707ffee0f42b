//! What a qrexec service receives from qrexec: its argument and the calling
//! domain. Qubes passes the argument as `$1` only when it is non-empty, and in
//! `QREXEC_SERVICE_ARGUMENT` whenever the call named one (reference §5).

use std::ffi::OsString;

/// The facts qrexec gives a service about the call that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCall {
    /// The argument after `+`, possibly empty.
    pub argument: String,
    /// The calling qube (`QREXEC_REMOTE_DOMAIN`); `None` when run by hand.
    pub remote_domain: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceCallError {
    #[error("service argument is not valid UTF-8")]
    NotUtf8,
    #[error("service argument {arg:?} disagrees with QREXEC_SERVICE_ARGUMENT {env:?}")]
    Mismatch { arg: String, env: String },
}

impl ServiceCall {
    /// Reads the call from this process's arguments (after the program name
    /// and subcommand) and environment.
    pub fn from_env(args: &[OsString]) -> Result<Self, ServiceCallError> {
        Self::from_parts(
            args.first().cloned(),
            std::env::var_os("QREXEC_SERVICE_ARGUMENT"),
            std::env::var_os("QREXEC_REMOTE_DOMAIN"),
        )
    }

    fn from_parts(
        arg: Option<OsString>,
        env_arg: Option<OsString>,
        remote: Option<OsString>,
    ) -> Result<Self, ServiceCallError> {
        let text = |s: OsString| s.into_string().map_err(|_| ServiceCallError::NotUtf8);
        let arg = arg.map(text).transpose()?;
        let env_arg = env_arg.map(text).transpose()?;
        let argument = match (arg, env_arg) {
            (Some(a), Some(e)) if a != e => {
                return Err(ServiceCallError::Mismatch { arg: a, env: e });
            }
            (Some(a), _) => a,
            (None, Some(e)) => e,
            (None, None) => String::new(),
        };
        let remote_domain = remote.map(text).transpose()?.filter(|d| !d.is_empty());
        Ok(Self {
            argument,
            remote_domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_from_argv_or_env() {
        let c =
            ServiceCall::from_parts(Some("J1".into()), Some("J1".into()), Some("sd-dev".into()))
                .unwrap();
        assert_eq!(c.argument, "J1");
        assert_eq!(c.remote_domain.as_deref(), Some("sd-dev"));
        // qrexec leaves $1 out for an empty argument.
        let c = ServiceCall::from_parts(None, Some("".into()), None).unwrap();
        assert_eq!(c.argument, "");
        assert_eq!(c.remote_domain, None);
    }

    #[test]
    fn disagreeing_sources_are_refused() {
        let e = ServiceCall::from_parts(Some("a".into()), Some("b".into()), None).unwrap_err();
        assert!(matches!(e, ServiceCallError::Mismatch { .. }));
    }
}
