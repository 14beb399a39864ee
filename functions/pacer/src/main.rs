//! Lambda entry point (EventBridge Scheduler, every minute): wiring only.

use clickpacer::aws::sqs::SqsQueue;
use clickpacer::config::{Config, FunctionKind};
use lambda_runtime::{LambdaEvent, service_fn};
use pacer::{Pacer, PacerSettings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Pacer)?;
    let sdk = clickpacer::aws::load_sdk_config().await;
    let pacer = Pacer {
        pool: clickpacer::postgres::build_pool(&config.database)?,
        queue: SqsQueue::new(clickpacer::aws::sqs_client(&sdk), config.click_queue_url()?),
        settings: PacerSettings::default(),
    };
    let pacer = &pacer;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        pacer::run_once(pacer, chrono::Utc::now()).await.map_err(lambda_runtime::Error::from)
    }))
    .await
}
