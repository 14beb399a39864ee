//! Structured logging.
//!
//! Lambda functions log JSON when the function's log format is JSON (`AWS_LAMBDA_LOG_FORMAT=JSON`, set by
//! `template.yaml`), so CloudWatch Logs Insights can query fields; locally the same call prints readable text.
//! The level comes from `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`.

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
