//! Lambda entry point (HTTP API, payload 2.0): wiring only.

use clickpacer::config::{Config, FunctionKind};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Api)?;
    let pool = clickpacer::postgres::build_pool(&config.database)?;
    lambda_http::run(api::router(pool)).await
}
