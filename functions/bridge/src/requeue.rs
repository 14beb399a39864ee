//! Sending a release message back to the click queue, delayed, for clicks that must wait, with the batch's queued
//! lease pushed past the delay so no pacer takes it back meanwhile.

use clickpacer::aws::sqs::{OutgoingMessage, SqsQueue};
use clickpacer::postgres::bridge as repo;
use clickpacer::release::ReleaseMessage;

use crate::{Bridge, BridgeError, Clock};

/// Sends the release message back to the click queue with a delay (SQS allows up to 15 minutes; a longer wait
/// comes back and is delayed again).
pub(crate) async fn requeue<T, C: Clock>(
    bridge: &Bridge<T, C>,
    db: &impl tokio_postgres::GenericClient,
    release: &ReleaseMessage,
    delay: chrono::Duration,
) -> Result<(), BridgeError> {
    // Rounded up: a pause of 0.4 s must not come back at once and spin through the queue until it ends.
    let seconds = ((delay.num_milliseconds() + 999) / 1000).clamp(0, 900) as i32;
    let body = serde_json::to_string(release).unwrap_or_default();
    send_one(&bridge.click_queue, &release.batch_id.to_string(), body, seconds).await?;
    // The copy is on its way: the batch's queued lease covers its delay. Should this fail, the lease from this
    // pass still runs, and a pacer taking the batch back early only makes the copy stale.
    let until = bridge.clock.now() + chrono::Duration::seconds(seconds.into()) + queued_lease(bridge);
    if let Err(e) = repo::extend_queued_lease(db, release.batch_id, release.fence, until).await {
        tracing::warn!(batch_id = release.batch_id, error = %e, "queued lease not extended");
    }
    Ok(())
}

pub(crate) fn queued_lease<T, C>(bridge: &Bridge<T, C>) -> chrono::Duration {
    chrono::Duration::from_std(bridge.settings.queued_lease).unwrap_or(chrono::Duration::hours(1))
}

pub(crate) async fn send_one(queue: &SqsQueue, id: &str, body: String, delay_seconds: i32) -> Result<(), BridgeError> {
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(80).collect();
    let failed = queue.send_batch(&[OutgoingMessage { id, body, delay_seconds }]).await?;
    match failed.first() {
        None => Ok(()),
        Some(f) => {
            Err(clickpacer::aws::AwsError { operation: "sqs SendMessageBatch", message: f.message.clone() }.into())
        }
    }
}
