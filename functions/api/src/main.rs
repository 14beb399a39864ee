//! Lambda entry point (HTTP API, payload 2.0): wiring only.

use aws_lambda_events::event::apigw::ApiGatewayV2httpRequest;
use clickpacer::config::{Config, FunctionKind};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Api)?;
    let pool = clickpacer::postgres::build_pool(&config.database)?;
    let pool = &pool;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<ApiGatewayV2httpRequest>| async move {
        Ok::<_, lambda_runtime::Error>(api::handle(pool, &event.payload).await)
    }))
    .await
}
