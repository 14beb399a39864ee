//! Lambda entry point: SQS events from the click queue (with ReportBatchItemFailures) and the schedule's outbox
//! flush. Wiring only.

use bridge::{Bridge, BridgeSettings, Deadline, HttpTransport, SystemClock};
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::sqs::SqsQueue;
use clickpacer::config::{Config, FunctionKind};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Bridge)?;
    let sdk = clickpacer::aws::load_sdk_config().await;
    let sqs = clickpacer::aws::sqs_client(&sdk);
    let bridge = Bridge {
        pool: clickpacer::postgres::build_pool(&config.database)?,
        transport: HttpTransport::new(config.allow_private_partners)?,
        clock: SystemClock,
        click_queue: SqsQueue::new(sqs, config.click_queue_url()?),
        events: DynamoEventLog::new(clickpacer::aws::dynamodb_client(&sdk), config.events_table()?),
        settings: BridgeSettings::default(),
        partner_slots: Default::default(),
    };
    let bridge = &bridge;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| async move {
        bridge::handle_invocation(bridge, event.payload, &Deadline(event.context.deadline()))
            .await
            .map_err(lambda_runtime::Error::from)
    }))
    .await
}
