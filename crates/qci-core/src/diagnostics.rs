//! Diagnostics for every qci binary: `tracing` to stderr, never stdout,
//! which carries the product's output (the live log, tar streams).

/// Sends diagnostics at `default` level and above to stderr; `QCI_LOG`
/// (an `EnvFilter` directive such as `debug` or `qci_vm=trace`) overrides it.
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QCI_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}
