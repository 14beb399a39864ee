//! Structured logging.
//!
//! Lambda functions log JSON when the function's log format is JSON (`AWS_LAMBDA_LOG_FORMAT=JSON`, set by
//! `template.yaml`), so CloudWatch Logs Insights can query fields; locally the same call prints readable text.
//! The level comes from `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`.

/// What a terminal shows when `RUST_LOG` does not say: warnings and errors. A person watching the local runner
/// reads its table and the lines it prints; per-message detail is there with `RUST_LOG=info` (or `debug`).
pub const TERMINAL_DEFAULT_FILTER: &str = "warn";

/// The log filter for a terminal: `RUST_LOG` when set, else [`TERMINAL_DEFAULT_FILTER`].
pub fn terminal_filter(env: &crate::config::Env) -> String {
    env.optional(crate::config::vars::RUST_LOG).unwrap_or_else(|| TERMINAL_DEFAULT_FILTER.to_owned())
}

/// Installs a subscriber for a person at a terminal (the local runner): readable text on stderr, filtered by
/// [`terminal_filter`]. A filter that does not parse falls back to the default rather than hide warnings.
pub fn init_terminal(env: &crate::config::Env) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(terminal_filter(env)).unwrap_or_else(|_| EnvFilter::new(TERMINAL_DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Installs the global subscriber once; later calls are harmless (tests and the local runner call it freely).
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // A subscriber may already be set (e.g. by a test harness); keep it rather than panic.
        if tracing::dispatcher::has_been_set() {
            return;
        }
        lambda_runtime::tracing::init_default_subscriber();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    #[test]
    fn a_terminal_shows_warnings_unless_rust_log_says_otherwise() {
        assert_eq!(terminal_filter(&Env::from_pairs([])), "warn");
        assert_eq!(terminal_filter(&Env::from_pairs([("RUST_LOG", " ")])), "warn");
        assert_eq!(terminal_filter(&Env::from_pairs([("RUST_LOG", "info,bridge=debug")])), "info,bridge=debug");
    }
}
