//! SQS: the click queue between the pacer and the bridge.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::AwsError;

/// SendMessageBatch takes at most this many entries per call.
pub const MAX_BATCH_ENTRIES: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Unique within one call; reported back for entries that failed.
    pub id: String,
    pub body: String,
    /// Per-message delay (0..=900 s): how releases are spread within a minute.
    pub delay_seconds: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    pub id: String,
    /// True when SQS blames the request (retrying it unchanged cannot succeed).
    pub sender_fault: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub receive_count: u32,
}

/// A queue's messages by kind (SQS's approximate counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueCounts {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted (being worked on, or waiting out a visibility timeout).
    pub in_flight: u64,
    /// Sent with a delay that has not run out.
    pub delayed: u64,
}

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self { client, url: url.into() }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends up to [`MAX_BATCH_ENTRIES`] messages in one call and returns the entries that failed, so the
    /// caller retries only those.
    pub async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<FailedEntry>, AwsError> {
        fail::fail_point!("sqs::send", |_| Err(injected("sqs SendMessageBatch")));
        batch_size_ok("sqs SendMessageBatch", messages.len())?;
        let entries = messages
            .iter()
            .map(|m| {
                SendMessageBatchRequestEntry::builder()
                    .id(&m.id)
                    .message_body(&m.body)
                    .delay_seconds(m.delay_seconds)
                    .build()
                    .map_err(|e| AwsError { operation: "sqs SendMessageBatch entry", message: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sqs SendMessageBatch", e))?;
        Ok(failed_entries(out.failed()))
    }

    pub async fn receive(&self, max: i32, wait_seconds: i32) -> Result<Vec<ReceivedMessage>, AwsError> {
        self.receive_hidden_for(max, wait_seconds, None).await
    }

    /// [`Self::receive`], with the messages hidden for `visibility_s` instead of the queue's visibility timeout.
    pub async fn receive_hidden_for(
        &self,
        max: i32,
        wait_seconds: i32,
        visibility_s: Option<i32>,
    ) -> Result<Vec<ReceivedMessage>, AwsError> {
        fail::fail_point!("sqs::receive", |_| Err(injected("sqs ReceiveMessage")));
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_seconds)
            .set_visibility_timeout(visibility_s)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sqs ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| ReceivedMessage {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    /// Makes a received message visible again in `seconds`.
    pub async fn hide_for(&self, receipt_handle: &str, seconds: i32) -> Result<(), AwsError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sqs ChangeMessageVisibility", e))?;
        Ok(())
    }

    pub async fn delete(&self, receipt_handle: &str) -> Result<(), AwsError> {
        fail::fail_point!("sqs::delete", |_| Err(injected("sqs DeleteMessage")));
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sqs DeleteMessage", e))?;
        Ok(())
    }

    /// Deletes up to [`MAX_BATCH_ENTRIES`] received messages in one call (as Lambda's event source does after a
    /// partial batch response) and returns the entries that failed (their ids are the handles' indexes), which
    /// simply come back after their visibility timeout.
    pub async fn delete_batch(&self, receipt_handles: &[&str]) -> Result<Vec<FailedEntry>, AwsError> {
        fail::fail_point!("sqs::delete", |_| Err(injected("sqs DeleteMessageBatch")));
        batch_size_ok("sqs DeleteMessageBatch", receipt_handles.len())?;
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*handle)
                    .build()
                    .map_err(|e| AwsError { operation: "sqs DeleteMessageBatch entry", message: e.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sqs DeleteMessageBatch", e))?;
        Ok(failed_entries(out.failed()))
    }

    /// The queue's ARN (for redrive policies and bucket notifications).
    pub async fn arn(&self) -> Result<String, AwsError> {
        queue_arn(&self.client, &self.url).await
    }

    /// Messages in the queue by kind.
    pub async fn counts(&self) -> Result<QueueCounts, AwsError> {
        let names = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("sqs GetQueueAttributes", e))?;
        let attributes = out.attributes().cloned().unwrap_or_default();
        let count = |name: &QueueAttributeName| attributes.get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(QueueCounts { visible: count(&names[0]), in_flight: count(&names[1]), delayed: count(&names[2]) })
    }

    /// Messages in the queue: visible, in flight and delayed.
    pub async fn depth(&self) -> Result<u64, AwsError> {
        let counts = self.counts().await?;
        Ok(counts.visible + counts.in_flight + counts.delayed)
    }

    /// Creates (or finds) a queue; with `dead_letter` set, messages received `max_receives` times move there.
    pub async fn create(
        client: &Client,
        name: &str,
        visibility_timeout_s: u32,
        dead_letter: Option<(&str, u32)>,
    ) -> Result<Self, AwsError> {
        let mut request = client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::VisibilityTimeout, visibility_timeout_s.to_string());
        if let Some((dlq_url, max_receives)) = dead_letter {
            let arn = queue_arn(client, dlq_url).await?;
            let policy = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receives });
            request = request.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        let out = request.send().await.map_err(|e| AwsError::from_sdk("sqs CreateQueue", e))?;
        Ok(Self::new(client.clone(), out.queue_url().unwrap_or_default()))
    }
}

async fn queue_arn(client: &Client, url: &str) -> Result<String, AwsError> {
    Ok(client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("sqs GetQueueAttributes", e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .unwrap_or_default())
}

/// The error a failpoint injects (the chaos runner's "SQS is failing").
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(operation: &'static str) -> AwsError {
    AwsError { operation, message: "injected failure (failpoint)".into() }
}

/// A batch call takes 1 to [`MAX_BATCH_ENTRIES`] entries; refused before the call otherwise.
fn batch_size_ok(operation: &'static str, entries: usize) -> Result<(), AwsError> {
    if entries == 0 || entries > MAX_BATCH_ENTRIES {
        return Err(AwsError { operation, message: format!("takes 1 to {MAX_BATCH_ENTRIES} entries, got {entries}") });
    }
    Ok(())
}

/// The entries a batch call reports as failed.
fn failed_entries(failed: &[BatchResultErrorEntry]) -> Vec<FailedEntry> {
    failed
        .iter()
        .map(|f| FailedEntry {
            id: f.id().to_owned(),
            sender_fault: f.sender_fault(),
            message: format!("{}: {}", f.code(), f.message().unwrap_or_default()),
        })
        .collect()
}
