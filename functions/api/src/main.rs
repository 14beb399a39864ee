//! Lambda entry point (HTTP API, payload 2.0): wiring only.

use api::{AppState, Queues};
use clickpacer::aws::dynamodb::DynamoEventLog;
use clickpacer::aws::s3::S3Objects;
use clickpacer::aws::sqs::SqsQueue;
use clickpacer::config::{Config, FunctionKind};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Api)?;
    let pool = clickpacer::postgres::build_pool(&config.database)?;
    let sdk = clickpacer::aws::load_sdk_config().await;
    let objects = S3Objects::new(clickpacer::aws::s3_client(&sdk));
    let sqs = clickpacer::aws::sqs_client(&sdk);
    let queues = Queues {
        click: SqsQueue::new(sqs.clone(), config.click_queue_url()?),
        dead_letter: SqsQueue::new(sqs, config.dead_letter_queue_url()?),
    };
    let events = DynamoEventLog::new(clickpacer::aws::dynamodb_client(&sdk), config.events_table()?);
    let allow_private_partners = config.allow_private_partners;
    let transport = bridge::HttpTransport::new(allow_private_partners)?;
    let upload_bucket = config.upload_bucket()?.to_owned();
    let state = AppState {
        pool,
        objects,
        upload_bucket,
        queues: Some(queues),
        events: Some(events),
        transport,
        allow_private_partners,
    };
    lambda_http::run(api::router(state)).await
}
