//! The integration-test harness, shared by every crate's tests.
//!
//! Tests talk to real services: the PostgreSQL server in `DATABASE_URL` and the AWS endpoint in
//! `AWS_ENDPOINT_URL` (a moto server), both started by `scripts/test`. Each test gets its own database (with
//! migrations applied) and its own bucket, queue and table names, so tests run in parallel without
//! interfering.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use deadpool_postgres::Pool;

use crate::aws::dynamodb::DynamoEventLog;
use crate::aws::s3::S3Objects;
use crate::aws::sqs::SqsQueue;
use crate::config::DatabaseConfig;
use crate::postgres;

/// Test databases are named with this prefix; `scripts/test` drops leftovers before a run.
pub const TEST_DATABASE_PREFIX: &str = "cp_test_";

fn required_env(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("{name} is not set: run the tests with scripts/test, which starts PostgreSQL and the local AWS endpoint")
    })
}

/// A short unique suffix for names (databases, buckets, queues, tables).
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub pool: Pool,
    pub config: DatabaseConfig,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin = DatabaseConfig { url: required_env("DATABASE_URL"), pool_size: 1 };
        let name = format!("{TEST_DATABASE_PREFIX}{}", unique_suffix());
        {
            let admin_pool = postgres::build_pool(&admin).expect("admin pool");
            let client = admin_pool.get().await.expect("connect to the PostgreSQL in DATABASE_URL");
            client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        }
        let mut url = url::Url::parse(&admin.url).expect("DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        let config = DatabaseConfig { url: url.to_string(), pool_size: 8 };
        let pool = postgres::build_pool(&config).expect("test pool");
        postgres::migrate(&pool).await.expect("migrations apply");
        Self { pool, config, name }
    }

    pub async fn client(&self) -> deadpool_postgres::Object {
        self.pool.get().await.expect("test database connection")
    }
}

/// The local AWS endpoint, with credentials and region fixed so nothing reaches real AWS.
pub struct TestAws {
    pub sdk: SdkConfig,
}

impl TestAws {
    pub async fn new() -> Self {
        let endpoint = required_env("AWS_ENDPOINT_URL");
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "clickpacer-tests"))
            .load()
            .await;
        Self { sdk }
    }

    /// An S3 client on the local endpoint (no bucket of its own).
    pub fn objects(&self) -> S3Objects {
        S3Objects::new(crate::aws::s3_client(&self.sdk))
    }

    /// A new, empty bucket.
    pub async fn bucket(&self) -> (S3Objects, String) {
        let objects = S3Objects::new(crate::aws::s3_client(&self.sdk));
        let bucket = format!("clickpacer-test-{}", unique_suffix());
        objects.create_bucket(&bucket).await.expect("create test bucket");
        (objects, bucket)
    }

    /// A new click queue with its own dead-letter queue (moved there after `max_receives` receives).
    pub async fn queue_with_dead_letter(&self, visibility_timeout_s: u32, max_receives: u32) -> (SqsQueue, SqsQueue) {
        let client = crate::aws::sqs_client(&self.sdk);
        let name = format!("clickpacer-test-{}", unique_suffix());
        let dead = SqsQueue::create(&client, &format!("{name}-dlq"), 30, None).await.expect("create test DLQ");
        let queue = SqsQueue::create(&client, &name, visibility_timeout_s, Some((dead.url(), max_receives)))
            .await
            .expect("create test queue");
        (queue, dead)
    }

    /// A new event table with the production key design, GSIs and TTL.
    pub async fn events_table(&self) -> DynamoEventLog {
        let client = crate::aws::dynamodb_client(&self.sdk);
        let table = format!("clickpacer-test-{}", unique_suffix());
        DynamoEventLog::create_table(&client, &table).await.expect("create test events table")
    }
}
