//! Applies the database migrations in `migrations/` (the logic is in `lib.rs`).
//!
//! - As a command (ops, local scripts): `cargo run -p migrate` applies what is pending;
//!   `cargo run -p migrate -- status` lists what is applied and what is pending.
//! - As a Lambda: the `DatabaseMigrations` custom resource's requests are answered on CloudFormation's
//!   `ResponseURL`; any other event applies what is pending and returns the report.
//!
//! Both read `DATABASE_URL` like every function.

use clickpacer::config::{Config, FunctionKind};
use clickpacer::postgres;
use lambda_runtime::{LambdaEvent, service_fn};
use migrate::{HttpResponder, PgSchema, Schema, Timing};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clickpacer::telemetry::init();

    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        // A configuration error is reported per request (FAILED to CloudFormation), not at init.
        let schema = PgSchema::from_process_env();
        let responder = HttpResponder::new()?;
        let timing = Timing::default();
        let (schema, responder, timing) = (&schema, &responder, &timing);
        return lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            let deadline = migrate::deadline_in(event.context.deadline());
            migrate::handle(event.payload, schema, responder, deadline, timing)
                .await
                .map_err(lambda_runtime::Error::from)
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e));
    }

    let config = Config::from_process_env(FunctionKind::Migrate)?;
    match std::env::args().nth(1).as_deref() {
        None | Some("up") => {
            // One connection attempt: an operator sees a wrong URL at once.
            let outcome = PgSchema::new(config.database).apply(tokio::time::Instant::now()).await?;
            println!("{}", migrate::report(&outcome));
        }
        Some("status") => {
            let pool = postgres::build_pool(&config.database)?;
            for line in migrate::status(&pool).await? {
                println!("{line}");
            }
        }
        Some(other) => anyhow::bail!("unknown command {other:?}: use `up` (the default) or `status`"),
    }
    Ok(())
}
