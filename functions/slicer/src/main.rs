//! Lambda entry point: wiring only.

use clickpacer::aws::s3::S3Objects;
use clickpacer::config::{Config, FunctionKind};
use lambda_runtime::{LambdaEvent, service_fn};
use slicer::{Deadline, Slicer, SlicerSettings};

/// Headroom before the Lambda deadline for the last commit and the report.
const LAMBDA_RESERVE: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Slicer)?;
    let sdk = clickpacer::aws::load_sdk_config().await;
    let defaults = SlicerSettings::default();
    let settings = SlicerSettings {
        reserve: LAMBDA_RESERVE,
        writers: config.slicer.writers.unwrap_or(defaults.writers),
        limits: config.slicer.limits,
        ..defaults
    };
    let slicer = Slicer {
        pool: clickpacer::postgres::build_pool(&config.database)?,
        objects: S3Objects::new(clickpacer::aws::s3_client(&sdk)),
        settings,
    };
    let slicer = &slicer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<aws_lambda_events::event::s3::S3Event>| async move {
        let budget = Deadline(event.context.deadline());
        slicer::handle_event(slicer, event.payload, &budget).await.map_err(lambda_runtime::Error::from)
    }))
    .await
}
