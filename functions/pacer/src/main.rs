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
    let function_name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "pacer".into());
    let function_name = &function_name;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| async move {
        let now = chrono::Utc::now();
        let summary = pacer::run_once(pacer, now).await.map_err(lambda_runtime::Error::from)?;
        // Lambda forwards stdout to CloudWatch Logs, where the EMF line becomes the lag metric.
        println!("{}", pacer::lag_metric_line(&summary, function_name, now));
        Ok::<_, lambda_runtime::Error>(summary)
    }))
    .await
}
