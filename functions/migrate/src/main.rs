//! Applies the database migrations in `migrations/`.
//!
//! - As a command (ops, local scripts): `cargo run -p migrate` applies what is pending;
//!   `cargo run -p migrate -- status` lists what is applied and what is pending.
//! - As a Lambda (invoked on deploy): any event applies what is pending and returns the versions applied.
//!
//! Both read `DATABASE_URL` like every function.

use clickpacer::config::{Config, FunctionKind};
use clickpacer::postgres::{self, PgPool};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    clickpacer::telemetry::init();
    let config = Config::from_process_env(FunctionKind::Migrate)?;
    let pool = postgres::build_pool(&config.database)?;

    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        let pool = &pool;
        return lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
            apply(pool).await.map_err(lambda_runtime::Error::from)
        }))
        .await
        .map_err(|e| anyhow::anyhow!(e));
    }

    match std::env::args().nth(1).as_deref() {
        None | Some("up") => {
            let report = apply(&pool).await?;
            println!("{report}");
        }
        Some("status") => {
            let applied = postgres::applied_migrations(&pool).await?;
            for (version, name) in postgres::known_migrations() {
                let state = if applied.contains(&version) { "applied" } else { "pending" };
                println!("V{version}__{name}\t{state}");
            }
        }
        Some(other) => anyhow::bail!("unknown command {other:?}: use `up` (the default) or `status`"),
    }
    Ok(())
}

async fn apply(pool: &PgPool) -> Result<Value, postgres::DbError> {
    let applied = postgres::migrate(pool).await?;
    for (version, name) in &applied {
        tracing::info!(version, name, "migration applied");
    }
    Ok(json!({
        "applied": applied.iter().map(|(v, n)| format!("V{v}__{n}")).collect::<Vec<_>>(),
        "known": postgres::known_migrations().len(),
    }))
}
