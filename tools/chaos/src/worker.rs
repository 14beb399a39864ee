//! A worker process: one function's trigger loop from the local runner, with the chaos timing. A failpoint armed
//! through `FAILPOINTS` (e.g. `pacer::after_claim=20%panic`) crashes the whole process where it fires, as a
//! killed Lambda would stop: the panic hook aborts.

use clickpacer::config::DatabaseConfig;
use local::{Names, Pipeline};

use crate::{Role, timing};

pub async fn run(role: Role, prefix: &str, database: &DatabaseConfig) -> anyhow::Result<()> {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("worker crashed: {info}");
        std::process::abort();
    }));
    let _failpoints = fail::FailScenario::setup();
    let sdk = clickpacer::aws::load_sdk_config().await;
    let pipeline = Pipeline::start(&sdk, database, Names::with_prefix(prefix), timing()).await?;
    tracing::info!(role = role.name(), "worker started");
    match role {
        Role::Slicer => pipeline.upload_loop().await,
        Role::Pacer => pipeline.pacer_loop().await,
        Role::Bridge => pipeline.bridge_loop().await,
    }
    Ok(())
}
