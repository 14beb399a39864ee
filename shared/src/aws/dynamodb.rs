//! DynamoDB: the click event log (key design in [`crate::domain::events`]).

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, PutRequest, ScalarAttributeType, TimeToLiveSpecification, WriteRequest,
};
use chrono::{DateTime, Utc};

use super::AwsError;
use crate::domain::events::{
    BatchEventPart, ClickEvent, ClickEventKind, EVENT_SHARDS, EventKeys, LogEntries, batch_partition,
};

pub use aws_sdk_dynamodb::types::AttributeValue as ItemValue;

pub const GSI_BY_CAMPAIGN: &str = "by_campaign";
pub const GSI_BY_PARTNER: &str = "by_partner";
pub const GSI_FAILURES: &str = "failures";
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// BatchWriteItem calls one flush keeps in flight.
pub const PUT_CONCURRENCY: usize = 8;

/// One event of the log: a click's (a failed attempt, a death; or, in a click's timeline, its batch's event that
/// names it), or a batch's (in a campaign's or partner's hour: ingested, released or delivered together).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineEvent {
    /// RFC 3339.
    pub at: String,
    pub campaign_id: String,
    /// The click, for a click's event (absent for a batch's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    /// For a batch's event: how many of its clicks it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clicks: Option<u32>,
    /// `ingested`, `released`, `delivered`, `failed` or `dead`.
    pub event: String,
    /// The delivery attempt of a failed or dead click (0 otherwise).
    pub attempt: u32,
    pub batch_id: i64,
    pub partner_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl TimelineEvent {
    /// The event an item of the log holds; `None` for an item that is not one.
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Self> {
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let number = |name: &str| item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<i64>().ok());
        Some(Self {
            at: text("at")?,
            campaign_id: text("campaign_id")?,
            click_id: text("click_id"),
            clicks: number("click_count").and_then(|n| u32::try_from(n).ok()),
            event: text("event")?,
            attempt: number("attempt").and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            batch_id: number("batch_id")?,
            partner_id: text("partner_id")?,
            detail: text("detail"),
        })
    }
}

#[derive(Clone)]
pub struct DynamoEventLog {
    client: Client,
    table: String,
}

/// Outcome of an idempotent put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// The same event was already logged (a retry or a redelivery).
    AlreadyLogged,
}

impl DynamoEventLog {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Writes one event unless an item with its key exists: retries and redeliveries never duplicate it.
    pub async fn put(&self, event: &ClickEvent) -> Result<PutOutcome, AwsError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(event)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(PutOutcome::Written),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                Ok(PutOutcome::AlreadyLogged)
            }
            Err(e) => Err(AwsError::from_sdk("dynamodb PutItem", e)),
        }
    }

    /// Writes entries with BatchWriteItem (25 items per call), sending back UnprocessedItems until none remain or
    /// the attempts run out. Keys are derived from the entries, so writing one twice leaves one item.
    pub async fn put_batch(&self, entries: &LogEntries) -> Result<(), AwsError> {
        use futures::{StreamExt, TryStreamExt};
        let items: Vec<HashMap<String, AttributeValue>> = entries
            .batches
            .iter()
            .flat_map(|b| b.parts())
            .map(|part| batch_item(&part))
            .chain(entries.clicks.iter().map(item))
            .collect();
        // Calls of 25 items (BatchWriteItem's limit), several in flight: one after another, a few thousand
        // items would take a round trip each.
        futures::stream::iter(items.chunks(25))
            .map(|chunk| self.put_chunk(chunk))
            .buffer_unordered(PUT_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn put_chunk(&self, chunk: &[HashMap<String, AttributeValue>]) -> Result<(), AwsError> {
        // The chaos runner's "the event log is throttling us".
        fail::fail_point!("dynamodb::put", |_| Err(AwsError {
            operation: "dynamodb BatchWriteItem",
            message: "ProvisionedThroughputExceededException (injected by a failpoint)".into(),
        }));
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item.clone()))
                    .build()
                    .map(|put| WriteRequest::builder().put_request(put).build())
                    .map_err(|e| AwsError { operation: "dynamodb PutRequest", message: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        let mut attempt = 0u32;
        while !requests.is_empty() {
            attempt += 1;
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("dynamodb BatchWriteItem", e))?;
            requests = out.unprocessed_items().and_then(|items| items.get(&self.table)).cloned().unwrap_or_default();
            if requests.is_empty() {
                break;
            }
            if attempt >= 6 {
                return Err(AwsError {
                    operation: "dynamodb BatchWriteItem",
                    message: format!("{} items still unprocessed after {attempt} attempts", requests.len()),
                });
            }
            // Throttled: back off before sending the rest again.
            tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
        }
        Ok(())
    }

    /// A campaign's events in one UTC hour (`"2026-03-29T01"`), oldest first.
    pub async fn campaign_hour(
        &self,
        campaign_id: &str,
        hour: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        self.query_shards(GSI_BY_CAMPAIGN, "campaign_hour", &format!("{campaign_id}#{hour}")).await
    }

    /// A partner's events in one UTC hour, oldest first.
    pub async fn partner_hour(
        &self,
        partner_id: &str,
        hour: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        self.query_shards(GSI_BY_PARTNER, "partner_hour", &format!("{partner_id}#{hour}")).await
    }

    /// One click's events, oldest first: its batch's items that name it (`batch_id`'s partition), and its own
    /// from the UTC days `days` (`"2026-03-29"`; its partition of each day, the shard being its id's).
    pub async fn click_events(
        &self,
        campaign_id: &str,
        click_id: &str,
        batch_id: i64,
        days: &[String],
    ) -> Result<Vec<TimelineEvent>, AwsError> {
        let named = self.click_items(batch_partition(batch_id), "contains(clicks, :click)", click_id).await?;
        let mut events: Vec<TimelineEvent> = named
            .into_iter()
            .map(|e| TimelineEvent { click_id: Some(click_id.to_owned()), clicks: None, ..e })
            .collect();
        let shard = crate::domain::events::shard_of(click_id);
        for day in days {
            let own = format!("{campaign_id}#{day}#{shard:02}");
            events.extend(self.click_items(own, "click_id = :click", click_id).await?);
        }
        events.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(events)
    }

    /// The events of partition `pk` that `filter` (with `:click` bound to `click_id`) keeps.
    async fn click_items(&self, pk: String, filter: &str, click_id: &str) -> Result<Vec<TimelineEvent>, AwsError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .filter_expression(filter)
            .expression_attribute_values(":pk", AttributeValue::S(pk))
            .expression_attribute_values(":click", AttributeValue::S(click_id.to_owned()));
        Ok(self.all_pages(query).await?.iter().filter_map(TimelineEvent::from_item).collect())
    }

    /// Failed and dead events of one UTC day (`"2026-03-29"`), oldest first.
    pub async fn failures_on(&self, day: &str) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        self.query_shards(GSI_FAILURES, "failure_day", day).await
    }

    /// The items under `<prefix>#<shard>` of every shard of an index, queried together and merged by `sk`.
    async fn query_shards(
        &self,
        index: &str,
        key: &str,
        prefix: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        use futures::{StreamExt, TryStreamExt};
        let shards: Vec<Vec<HashMap<String, AttributeValue>>> = futures::stream::iter(0..EVENT_SHARDS)
            .map(|shard| async move { self.query_index(index, key, &format!("{prefix}#{shard:02}")).await })
            .buffer_unordered(PUT_CONCURRENCY)
            .try_collect()
            .await?;
        let mut items: Vec<_> = shards.into_iter().flatten().collect();
        let sort_key = |item: &HashMap<String, AttributeValue>| item.get("sk").and_then(|v| v.as_s().ok()).cloned();
        items.sort_by_key(sort_key);
        Ok(items)
    }

    async fn query_index(
        &self,
        index: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#k = :v")
            .expression_attribute_names("#k", key)
            .expression_attribute_values(":v", AttributeValue::S(value.to_owned()));
        self.all_pages(query).await
    }

    /// Every item a query returns, page after page.
    async fn all_pages(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, AwsError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("dynamodb Query", e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// Creates the table as `template.yaml` declares it (used locally and by tests; SAM creates it in AWS).
    pub async fn create_table(client: &Client, table: &str) -> Result<Self, AwsError> {
        let string_attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set")
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("name and type are set")
        };
        let gsi = |name: &str, hash: &str| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(hash, KeyType::Hash))
                .key_schema(key("sk", KeyType::Range))
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .expect("name, keys and projection are set")
        };
        let result = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string_attr("pk"))
            .attribute_definitions(string_attr("sk"))
            .attribute_definitions(string_attr("campaign_hour"))
            .attribute_definitions(string_attr("partner_hour"))
            .attribute_definitions(string_attr("failure_day"))
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .global_secondary_indexes(gsi(GSI_BY_CAMPAIGN, "campaign_hour"))
            .global_secondary_indexes(gsi(GSI_BY_PARTNER, "partner_hour"))
            .global_secondary_indexes(gsi(GSI_FAILURES, "failure_day"))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {
                return Ok(Self::new(client.clone(), table));
            }
            Err(e) => return Err(AwsError::from_sdk("dynamodb CreateTable", e)),
        }
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .expect("name and flag are set"),
            )
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("dynamodb UpdateTimeToLive", e))?;
        Ok(Self::new(client.clone(), table))
    }
}

/// What every item holds: its keys, whose event it is, what and when.
struct ItemBase<'a> {
    keys: &'a EventKeys,
    campaign_id: &'a str,
    partner_id: &'a str,
    batch_id: i64,
    kind: ClickEventKind,
    at: DateTime<Utc>,
}

impl ItemBase<'_> {
    fn item(&self) -> HashMap<String, AttributeValue> {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        let keys = self.keys;
        let mut item = HashMap::from([
            ("pk".to_owned(), s(&keys.pk)),
            ("sk".to_owned(), s(&keys.sk)),
            ("campaign_hour".to_owned(), s(&keys.campaign_hour)),
            ("partner_hour".to_owned(), s(&keys.partner_hour)),
            ("campaign_id".to_owned(), s(self.campaign_id)),
            ("partner_id".to_owned(), s(self.partner_id)),
            ("batch_id".to_owned(), AttributeValue::N(self.batch_id.to_string())),
            ("event".to_owned(), s(self.kind.as_str())),
            ("at".to_owned(), s(&self.at.to_rfc3339())),
            (TTL_ATTRIBUTE.to_owned(), AttributeValue::N(keys.expires_at.to_string())),
        ]);
        if let Some(day) = &keys.failure_day {
            item.insert("failure_day".to_owned(), s(day));
        }
        item
    }
}

fn item(event: &ClickEvent) -> HashMap<String, AttributeValue> {
    let keys = event.keys();
    let mut item = ItemBase {
        keys: &keys,
        campaign_id: event.campaign_id.as_str(),
        partner_id: event.partner_id.as_str(),
        batch_id: event.batch_id,
        kind: event.kind,
        at: event.at,
    }
    .item();
    item.insert("click_id".to_owned(), AttributeValue::S(event.click_id.as_str().to_owned()));
    item.insert("attempt".to_owned(), AttributeValue::N(event.attempt.to_string()));
    if let Some(detail) = &event.detail {
        item.insert("detail".to_owned(), AttributeValue::S(detail.clone()));
    }
    item
}

/// One part of a batch's event: its clicks as a string set.
fn batch_item(part: &BatchEventPart<'_>) -> HashMap<String, AttributeValue> {
    let event = part.event;
    let mut item = ItemBase {
        keys: &part.keys,
        campaign_id: event.campaign_id.as_str(),
        partner_id: event.partner_id.as_str(),
        batch_id: event.batch_id,
        kind: event.kind,
        at: event.at,
    }
    .item();
    item.insert("clicks".to_owned(), AttributeValue::Ss(part.clicks.iter().map(|c| c.as_str().to_owned()).collect()));
    item.insert("click_count".to_owned(), AttributeValue::N(part.clicks.len().to_string()));
    item
}
