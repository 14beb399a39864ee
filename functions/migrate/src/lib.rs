//! Applies the database migrations in `migrations/`: as a command for ops, as a plain Lambda invoke, and as the
//! Lambda behind the `DatabaseMigrations` custom resource that CloudFormation runs on every deploy.
//!
//! The custom resource contract (docs/deploy.md, "Migrations"):
//! - `Create`/`Update`: apply what is pending, retrying the connection for up to [`Timing::connect_for`] (on the
//!   first deploy RDS Proxy may still be registering its target); answer SUCCESS with the versions applied.
//! - The database has migrations this binary does not know (a rollback to an older release): SUCCESS, nothing
//!   changed, a note in `Reason`.
//! - `Delete`: SUCCESS at once; the schema is never touched.
//! - Anything else (an error, a panic, a malformed request, running out of time): FAILED with the reason.
//!
//! Every event that carries a `ResponseURL` gets an answer there, before the invocation's deadline, with the same
//! [`PHYSICAL_RESOURCE_ID`] every time (a new one would make CloudFormation delete the "old" resource). Any other
//! event is an ops invoke: apply what is pending and return the report.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use aws_lambda_events::cloudformation::{
    CloudFormationCustomResourceRequest as Request, CloudFormationCustomResourceResponse as Response,
    CloudFormationCustomResourceResponseStatus as Status,
};
use clickpacer::config::{Config, DatabaseConfig, FunctionKind};
use clickpacer::postgres::{self, DbError, PgPool};
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::time::Instant;

/// The one physical id of the `DatabaseMigrations` resource.
pub const PHYSICAL_RESOURCE_ID: &str = "clickpacer-migrations";

/// CloudFormation rejects a custom resource response body larger than this.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// The time budget of one invocation.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long to keep trying to reach the database before answering FAILED.
    pub connect_for: Duration,
    /// Kept free before the invocation's deadline for sending the response.
    pub response_reserve: Duration,
    /// Attempts at the response PUT.
    pub response_attempts: u32,
}

impl Default for Timing {
    /// For the 300 s function timeout in template.yaml: about 4 minutes to reach the database, 20 s to answer.
    fn default() -> Self {
        Self { connect_for: Duration::from_secs(240), response_reserve: Duration::from_secs(20), response_attempts: 3 }
    }
}

/// The Lambda context's deadline (wall clock) as an [`Instant`].
pub fn deadline_in(deadline: SystemTime) -> Instant {
    Instant::now() + deadline.duration_since(SystemTime::now()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// The database side

/// What applying the migrations did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Migrations applied by this run, in order: `(version, name)`.
    pub applied: Vec<(i32, String)>,
    /// Versions applied in the database that this binary does not know (a rollback to an older release); when
    /// not empty, nothing was applied.
    pub unknown: Vec<i32>,
    /// How many migrations this binary knows.
    pub known: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("could not reach the database ({attempts} attempt{} in {waited_s} s): {last}", if *attempts == 1 { "" } else { "s" })]
    Unreachable { attempts: u32, waited_s: u64, last: String },
    #[error(
        "the database has migrations this release does not know ({unknown}) but lacks some it knows ({pending}): \
         the histories diverged; nothing changed"
    )]
    Diverged { unknown: String, pending: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Applies the migrations. PostgreSQL in production ([`PgSchema`]); a fake in the unit tests.
pub trait Schema: Send + Sync {
    /// Applies what is pending; keeps trying to reach the database until `connect_until`.
    fn apply(&self, connect_until: Instant) -> impl Future<Output = Result<Outcome, MigrateError>> + Send;
}

/// The real database, from `DATABASE_URL`.
pub struct PgSchema {
    database: Result<DatabaseConfig, String>,
    /// Longest wait for one connection attempt (an unroutable address would otherwise wait for the OS).
    pub attempt_timeout: Duration,
}

impl PgSchema {
    pub fn new(database: DatabaseConfig) -> Self {
        Self { database: Ok(database), attempt_timeout: Duration::from_secs(10) }
    }

    /// Keeps a configuration error to report it per request: a Lambda that fails at init never answers
    /// CloudFormation.
    pub fn from_process_env() -> Self {
        match Config::from_process_env(FunctionKind::Migrate) {
            Ok(config) => Self::new(config.database),
            Err(e) => Self { database: Err(e.to_string()), attempt_timeout: Duration::from_secs(10) },
        }
    }
}

impl Schema for PgSchema {
    async fn apply(&self, connect_until: Instant) -> Result<Outcome, MigrateError> {
        let database = self.database.as_ref().map_err(|e| MigrateError::Config(e.clone()))?;
        // A pool per run: nothing half-used survives a run cut short, and dropping it closes the connections.
        let pool = postgres::build_pool(database)?;
        let in_database = wait_for_database(&pool, connect_until, self.attempt_timeout).await?;
        let known = postgres::known_migrations();
        let known_versions: BTreeSet<i32> = known.iter().map(|(v, _)| *v).collect();
        let unknown: Vec<i32> = in_database.iter().copied().filter(|v| !known_versions.contains(v)).collect();
        if !unknown.is_empty() {
            // Refinery would refuse too (a missing version); tell a rollback (everything known is applied) from
            // diverged histories (something known is missing), which must not pass.
            let in_database: BTreeSet<i32> = in_database.into_iter().collect();
            let pending: Vec<String> =
                known.iter().filter(|(v, _)| !in_database.contains(v)).map(|(v, n)| label(*v, n)).collect();
            if !pending.is_empty() {
                return Err(MigrateError::Diverged { unknown: versions(&unknown), pending: pending.join(", ") });
            }
            return Ok(Outcome { applied: Vec::new(), unknown, known: known.len() });
        }
        let applied = postgres::migrate(&pool).await?;
        for (version, name) in &applied {
            tracing::info!(version, name, "migration applied");
        }
        Ok(Outcome { applied, unknown: Vec::new(), known: known.len() })
    }
}

/// Reads the applied versions, retrying until `until` (at least one attempt); the first read doubles as the
/// connection check.
async fn wait_for_database(pool: &PgPool, until: Instant, attempt_timeout: Duration) -> Result<Vec<i32>, MigrateError> {
    let start = Instant::now();
    let mut attempts = 0;
    let mut pause = Duration::from_secs(1);
    loop {
        attempts += 1;
        let last = match tokio::time::timeout(attempt_timeout, postgres::applied_migrations(pool)).await {
            Ok(Ok(applied)) => return Ok(applied),
            Ok(Err(e)) => with_cause(&e),
            Err(_) => format!("no connection within {} s", attempt_timeout.as_secs()),
        };
        if Instant::now() + pause >= until {
            return Err(MigrateError::Unreachable { attempts, waited_s: start.elapsed().as_secs(), last });
        }
        tracing::warn!(attempts, error = %last, "database not reachable yet; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// `cargo run -p migrate -- status`: one line per migration, known or found in the database.
pub async fn status(pool: &PgPool) -> Result<Vec<String>, DbError> {
    let applied: BTreeSet<i32> = postgres::applied_migrations(pool).await?.into_iter().collect();
    let known = postgres::known_migrations();
    let mut lines: Vec<String> = known
        .iter()
        .map(|(v, n)| format!("{}\t{}", label(*v, n), if applied.contains(v) { "applied" } else { "pending" }))
        .collect();
    let known: BTreeSet<i32> = known.iter().map(|(v, _)| *v).collect();
    lines.extend(applied.difference(&known).map(|v| format!("V{v}\tapplied, unknown to this release")));
    Ok(lines)
}

/// The JSON a plain invoke or the command prints.
pub fn report(outcome: &Outcome) -> Value {
    let mut report = json!({
        "applied": outcome.applied.iter().map(|(v, n)| label(*v, n)).collect::<Vec<_>>(),
        "known": outcome.known,
    });
    if !outcome.unknown.is_empty() {
        report["note"] = json!(summary(outcome));
    }
    report
}

/// The error and, for a connection failure, its I/O cause (tokio-postgres prints "error connecting to server" and
/// keeps the reason, e.g. "Connection refused", in its source).
fn with_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut root = error;
    while let Some(source) = root.source() {
        root = source;
    }
    match root.downcast_ref::<std::io::Error>() {
        Some(io) if !std::ptr::addr_eq(root, error) => format!("{error}: {io}"),
        _ => error.to_string(),
    }
}

fn label(version: i32, name: &str) -> String {
    format!("V{version}__{name}")
}

fn versions(versions: &[i32]) -> String {
    versions.iter().map(|v| format!("V{v}")).collect::<Vec<_>>().join(", ")
}

/// One sentence for the logs and CloudFormation's `Reason`.
fn summary(outcome: &Outcome) -> String {
    if !outcome.unknown.is_empty() {
        format!(
            "the database has migrations this release does not know ({}), as after a rollback to an older release: \
             nothing changed",
            versions(&outcome.unknown)
        )
    } else if outcome.applied.is_empty() {
        format!("schema up to date: nothing pending ({} migrations known)", outcome.known)
    } else {
        let applied: Vec<String> = outcome.applied.iter().map(|(v, n)| label(*v, n)).collect();
        format!("applied {} of {} migrations: {}", applied.len(), outcome.known, applied.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The CloudFormation side

/// Sends the response body to the pre-signed `ResponseURL`. HTTP in production ([`HttpResponder`]); a recorder in
/// the unit tests.
pub trait Responder: Send + Sync {
    /// One attempt; the caller retries.
    fn put(&self, url: &str, body: &str) -> impl Future<Output = Result<(), String>> + Send;
}

pub struct HttpResponder {
    client: reqwest::Client,
}

impl HttpResponder {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("ClickPacer-migrate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }
}

impl Responder for HttpResponder {
    async fn put(&self, url: &str, body: &str) -> Result<(), String> {
        // An empty content type, as AWS's cfn-response sends: a signature-v2 pre-signed URL signs it.
        let sent = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "")
            .body(body.to_owned())
            .send()
            .await
            // The URL carries a signature: keep it out of errors and logs.
            .map_err(|e| e.without_url().to_string())?;
        let status = sent.status();
        if status.is_success() {
            return Ok(());
        }
        let text = sent.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", truncate(&text, 300)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// A plain invoke failed.
    #[error("{0}")]
    Migrate(String),
    /// The response never reached CloudFormation; failing the invocation lets Lambda's asynchronous retry run
    /// everything again (migrations are idempotent) and answer.
    #[error("could not send the {status} response to CloudFormation: {error}")]
    Undelivered { status: &'static str, error: String },
}

/// One Lambda invocation. Returns the response body sent to CloudFormation, or the plain invoke's report.
pub async fn handle(
    event: Value,
    schema: &impl Schema,
    responder: &impl Responder,
    deadline: Instant,
    timing: &Timing,
) -> Result<Value, HandleError> {
    let Some(url) = event.get("ResponseURL").and_then(Value::as_str).map(str::to_owned) else {
        return match run(schema, deadline, timing).await {
            Ok(outcome) => {
                tracing::info!(summary = summary(&outcome), "migrations done");
                Ok(report(&outcome))
            }
            Err(reason) => Err(HandleError::Migrate(reason)),
        };
    };
    let response = answer(event, schema, deadline, timing).await;
    let status = match response.status {
        Status::Success => "SUCCESS",
        _ => "FAILED",
    };
    tracing::info!(
        status,
        request_id = response.request_id,
        logical_resource_id = response.logical_resource_id,
        reason = response.reason.as_deref().unwrap_or_default(),
        "custom resource response"
    );
    let body = encode(response);
    deliver(responder, &url, &body, deadline, timing)
        .await
        .map_err(|error| HandleError::Undelivered { status, error })?;
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The response to a custom resource request; never fails (a failure is a FAILED response).
async fn answer(event: Value, schema: &impl Schema, deadline: Instant, timing: &Timing) -> Response {
    // Kept from the raw event, to answer even a request that does not parse.
    let raw = |field: &str| event.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (stack_id, request_id, logical_id) = (raw("StackId"), raw("RequestId"), raw("LogicalResourceId"));
    let physical_id = Some(raw("PhysicalResourceId")).filter(|id| !id.is_empty());
    let mut response = Response::default();
    response.stack_id = stack_id;
    response.request_id = request_id;
    response.logical_resource_id = logical_id;
    response.physical_resource_id = PHYSICAL_RESOURCE_ID.to_owned();

    let (status, reason) = match serde_json::from_value::<Request>(event) {
        Ok(Request::Create(_) | Request::Update(_)) => match run(schema, deadline, timing).await {
            Ok(outcome) => {
                let applied: Vec<String> = outcome.applied.iter().map(|(v, n)| label(*v, n)).collect();
                response.data.insert("applied".to_owned(), applied.join(","));
                (Status::Success, summary(&outcome))
            }
            Err(reason) => (Status::Failed, reason),
        },
        Ok(Request::Delete(_)) => {
            // Answer with the id being deleted (ours, unless the resource predates the constant).
            if let Some(id) = physical_id {
                response.physical_resource_id = id;
            }
            (Status::Success, "nothing to do: migrations are forward-only and the schema stays".to_owned())
        }
        Ok(_) => (Status::Failed, "unsupported request type".to_owned()),
        Err(e) => (Status::Failed, format!("not a valid custom resource request: {e}")),
    };
    response.status = status;
    response.reason = Some(reason);
    response
}

/// Applies the migrations within the invocation's time, a panic included: the error is the reason to report.
async fn run(schema: &impl Schema, deadline: Instant, timing: &Timing) -> Result<Outcome, String> {
    let now = Instant::now();
    let work_until = deadline.checked_sub(timing.response_reserve).unwrap_or(now).max(now);
    let connect_until = (now + timing.connect_for).min(work_until);
    let applying = AssertUnwindSafe(schema.apply(connect_until)).catch_unwind();
    match tokio::time::timeout_at(work_until, applying).await {
        Ok(Ok(Ok(outcome))) => Ok(outcome),
        Ok(Ok(Err(e))) => Err(with_cause(&e)),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the migrate function panicked: {message}"))
        }
        Err(_) => Err("migrations did not finish within the function's time; an unfinished migration is rolled \
                       back and applied by the next deploy"
            .to_owned()),
    }
}

async fn deliver(
    responder: &impl Responder,
    url: &str,
    body: &str,
    deadline: Instant,
    timing: &Timing,
) -> Result<(), String> {
    let attempts = timing.response_attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match tokio::time::timeout_at(deadline, responder.put(url, body)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => return Err(format!("no answer before the invocation's deadline (attempt {attempt})")),
        }
        tracing::warn!(attempt, error = last, "sending the custom resource response failed");
        let pause = Duration::from_millis(500 * u64::from(attempt));
        if attempt == attempts || Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Err(last)
}

/// The response body, made to fit [`MAX_RESPONSE_BYTES`]: the reason is cut first (keeping its start), then long
/// data values are summarised, then the reason goes.
pub fn encode(mut response: Response) -> String {
    const KEEP_REASON: usize = 512;
    for step in 0..3 {
        let body = to_json(&response);
        let Some(over) = body.len().checked_sub(MAX_RESPONSE_BYTES).filter(|over| *over > 0) else {
            return body;
        };
        match step {
            0 => shorten_reason(&mut response, over, KEEP_REASON),
            1 => {
                for value in response.data.values_mut() {
                    if value.len() > 200 {
                        let items = value.split(',').count();
                        *value = format!("{} ({items} items)", truncate(value, 200));
                    }
                }
            }
            _ => shorten_reason(&mut response, over, 0),
        }
    }
    to_json(&response)
}

fn to_json(response: &Response) -> String {
    // Strings and a map of strings: serialising cannot fail.
    serde_json::to_string(response).unwrap_or_default()
}

/// Cuts `over` bytes (and room for the ellipsis) off the reason, keeping at least `keep` bytes.
fn shorten_reason(response: &mut Response, over: usize, keep: usize) {
    if let Some(reason) = response.reason.as_mut() {
        let target = reason.len().saturating_sub(over + '…'.len_utf8()).max(keep);
        if target < reason.len() {
            *reason = truncate(reason, target);
        }
    }
}

/// At most `max` bytes of `text` (on a character boundary), with an ellipsis when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    use super::*;

    enum Behaviour {
        Apply(Outcome),
        Fail(String),
        Panic,
        Hang,
    }

    struct FakeSchema {
        behaviour: Behaviour,
        calls: AtomicUsize,
    }

    impl FakeSchema {
        fn new(behaviour: Behaviour) -> Self {
            Self { behaviour, calls: AtomicUsize::new(0) }
        }
    }

    impl Schema for FakeSchema {
        async fn apply(&self, _: Instant) -> Result<Outcome, MigrateError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match &self.behaviour {
                Behaviour::Apply(outcome) => Ok(outcome.clone()),
                Behaviour::Fail(reason) => Err(MigrateError::Config(reason.clone())),
                Behaviour::Panic => panic!("boom"),
                Behaviour::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(Outcome::default())
                }
            }
        }
    }

    #[derive(Default)]
    struct Recorder {
        puts: Mutex<Vec<(String, String)>>,
        failures: AtomicU32,
    }

    impl Recorder {
        fn failing(times: u32) -> Self {
            Self { failures: AtomicU32::new(times), ..Self::default() }
        }

        fn bodies(&self) -> Vec<Value> {
            self.puts.lock().unwrap().iter().map(|(_, body)| serde_json::from_str(body).unwrap()).collect()
        }
    }

    impl Responder for Recorder {
        async fn put(&self, url: &str, body: &str) -> Result<(), String> {
            self.puts.lock().unwrap().push((url.to_owned(), body.to_owned()));
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err("HTTP 503".to_owned());
            }
            Ok(())
        }
    }

    const URL: &str = "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x?X-Amz-Signature=s";

    fn request(kind: &str) -> Value {
        let mut event = json!({
            "RequestType": kind,
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:clickpacer-MigrateFunction",
            "ResponseURL": URL,
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/clickpacer/1b2c",
            "RequestId": "5d2a0c7e-7d0a-4a63-9d43-0b5c1f1e0e11",
            "ResourceType": "Custom::DatabaseMigrations",
            "LogicalResourceId": "DatabaseMigrations",
            "ResourceProperties": {"ServiceToken": "arn", "MigrateVersion": "7"},
        });
        if kind != "Create" {
            event["PhysicalResourceId"] = json!(PHYSICAL_RESOURCE_ID);
        }
        if kind == "Update" {
            event["OldResourceProperties"] = json!({"ServiceToken": "arn", "MigrateVersion": "6"});
        }
        event
    }

    fn applied(versions: &[(i32, &str)]) -> Behaviour {
        Behaviour::Apply(Outcome {
            applied: versions.iter().map(|(v, n)| (*v, (*n).to_owned())).collect(),
            unknown: Vec::new(),
            known: 6,
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    async fn answer_to(event: Value, schema: &FakeSchema) -> Value {
        let recorder = Recorder::default();
        let returned = handle(event, schema, &recorder, soon(), &Timing::default()).await.unwrap();
        let puts = recorder.puts.lock().unwrap().clone();
        assert_eq!(puts.len(), 1, "exactly one response");
        assert_eq!(puts[0].0, URL);
        assert!(puts[0].1.len() <= MAX_RESPONSE_BYTES);
        let body: Value = serde_json::from_str(&puts[0].1).unwrap();
        assert_eq!(returned, body);
        for (field, expected) in [
            ("StackId", "arn:aws:cloudformation:us-east-1:123456789012:stack/clickpacer/1b2c"),
            ("RequestId", "5d2a0c7e-7d0a-4a63-9d43-0b5c1f1e0e11"),
            ("LogicalResourceId", "DatabaseMigrations"),
        ] {
            assert_eq!(body[field], expected, "{field}");
        }
        body
    }

    #[tokio::test]
    async fn create_applies_and_answers_success_with_the_versions() {
        let schema = FakeSchema::new(applied(&[(1, "initial_schema"), (2, "upload_rejects")]));
        let body = answer_to(request("Create"), &schema).await;
        assert_eq!(schema.calls.load(Ordering::SeqCst), 1);
        assert_eq!(body["Status"], "SUCCESS");
        assert_eq!(body["PhysicalResourceId"], PHYSICAL_RESOURCE_ID);
        assert_eq!(body["Data"], json!({"applied": "V1__initial_schema,V2__upload_rejects"}));
        assert_eq!(body["Reason"], "applied 2 of 6 migrations: V1__initial_schema, V2__upload_rejects");
    }

    #[tokio::test]
    async fn update_keeps_the_physical_id_constant() {
        let mut event = request("Update");
        event["PhysicalResourceId"] = json!("something-else");
        let schema = FakeSchema::new(applied(&[]));
        let body = answer_to(event, &schema).await;
        assert_eq!(body["Status"], "SUCCESS");
        assert_eq!(body["PhysicalResourceId"], PHYSICAL_RESOURCE_ID);
        assert_eq!(body["Data"], json!({"applied": ""}));
        assert_eq!(body["Reason"], "schema up to date: nothing pending (6 migrations known)");
    }

    #[tokio::test]
    async fn delete_answers_success_without_touching_the_database() {
        let schema = FakeSchema::new(Behaviour::Panic);
        let body = answer_to(request("Delete"), &schema).await;
        assert_eq!(schema.calls.load(Ordering::SeqCst), 0);
        assert_eq!(body["Status"], "SUCCESS");
        assert_eq!(body["PhysicalResourceId"], PHYSICAL_RESOURCE_ID);
        assert_eq!(body["Data"], json!({}));
    }

    #[tokio::test]
    async fn unknown_later_migrations_answer_success_with_a_note() {
        let schema = FakeSchema::new(Behaviour::Apply(Outcome { applied: Vec::new(), unknown: vec![7, 8], known: 6 }));
        let body = answer_to(request("Update"), &schema).await;
        assert_eq!(body["Status"], "SUCCESS");
        assert_eq!(body["Data"], json!({"applied": ""}));
        let reason = body["Reason"].as_str().unwrap();
        assert!(reason.contains("does not know (V7, V8)") && reason.contains("nothing changed"), "{reason}");
    }

    #[tokio::test]
    async fn a_failure_answers_failed_with_the_reason() {
        let schema = FakeSchema::new(Behaviour::Fail("DATABASE_URL is not set".into()));
        let body = answer_to(request("Create"), &schema).await;
        assert_eq!(body["Status"], "FAILED");
        assert_eq!(body["PhysicalResourceId"], PHYSICAL_RESOURCE_ID);
        assert_eq!(body["Reason"], "configuration: DATABASE_URL is not set");
    }

    #[tokio::test]
    async fn a_panic_answers_failed() {
        let body = answer_to(request("Update"), &FakeSchema::new(Behaviour::Panic)).await;
        assert_eq!(body["Status"], "FAILED");
        assert_eq!(body["Reason"], "the migrate function panicked: boom");
    }

    #[tokio::test]
    async fn running_out_of_time_answers_failed_before_the_deadline() {
        let recorder = Recorder::default();
        let timing = Timing { response_reserve: Duration::from_millis(200), ..Timing::default() };
        let deadline = Instant::now() + Duration::from_millis(500);
        handle(request("Create"), &FakeSchema::new(Behaviour::Hang), &recorder, deadline, &timing).await.unwrap();
        assert!(Instant::now() < deadline);
        let body = &recorder.bodies()[0];
        assert_eq!(body["Status"], "FAILED");
        assert!(body["Reason"].as_str().unwrap().contains("did not finish"));
    }

    #[tokio::test]
    async fn a_malformed_request_still_gets_an_answer() {
        let mut event = request("Bogus");
        event.as_object_mut().unwrap().remove("ResourceType");
        let schema = FakeSchema::new(applied(&[]));
        let body = answer_to(event, &schema).await;
        assert_eq!(schema.calls.load(Ordering::SeqCst), 0);
        assert_eq!(body["Status"], "FAILED");
        assert!(body["Reason"].as_str().unwrap().starts_with("not a valid custom resource request"));
    }

    #[tokio::test]
    async fn a_plain_invoke_returns_the_report_and_sends_nothing() {
        let recorder = Recorder::default();
        let schema = FakeSchema::new(applied(&[(6, "click_ids_without_campaign_check")]));
        let report = handle(json!({}), &schema, &recorder, soon(), &Timing::default()).await.unwrap();
        assert_eq!(report, json!({"applied": ["V6__click_ids_without_campaign_check"], "known": 6}));
        assert!(recorder.puts.lock().unwrap().is_empty());

        let schema = FakeSchema::new(Behaviour::Fail("no".into()));
        let error = handle(json!({"any": 1}), &schema, &recorder, soon(), &Timing::default()).await.unwrap_err();
        assert_eq!(error.to_string(), "configuration: no");
    }

    #[tokio::test]
    async fn a_long_reason_is_cut_to_fit_4_kb() {
        let long = format!("\"quoted\" é{}", "x€".repeat(3000));
        let body = answer_to(request("Create"), &FakeSchema::new(Behaviour::Fail(long))).await;
        let reason = body["Reason"].as_str().unwrap();
        assert!(reason.starts_with("configuration: \"quoted\" é") && reason.ends_with('…'));
        assert!(to_json_len(&body) <= MAX_RESPONSE_BYTES);
        assert!(to_json_len(&body) > MAX_RESPONSE_BYTES - 16, "cut no more than needed");
    }

    #[tokio::test]
    async fn a_long_list_of_applied_migrations_is_summarised() {
        let names: Vec<(i32, String)> = (1..=200).map(|v| (v, format!("a_rather_long_migration_name_{v}"))).collect();
        let outcome = Outcome { applied: names, unknown: Vec::new(), known: 200 };
        let body = answer_to(request("Create"), &FakeSchema::new(Behaviour::Apply(outcome))).await;
        assert_eq!(body["Status"], "SUCCESS");
        let data = body["Data"]["applied"].as_str().unwrap();
        assert!(data.starts_with("V1__a_rather_long_migration_name_1,") && data.ends_with("(200 items)"), "{data}");
    }

    fn to_json_len(body: &Value) -> usize {
        serde_json::to_string(body).unwrap().len()
    }

    #[tokio::test]
    async fn the_response_is_retried_and_a_lost_one_fails_the_invocation() {
        let schema = FakeSchema::new(applied(&[]));
        let recorder = Recorder::failing(1);
        handle(request("Delete"), &schema, &recorder, soon(), &Timing::default()).await.unwrap();
        assert_eq!(recorder.puts.lock().unwrap().len(), 2);

        let recorder = Recorder::failing(10);
        let error = handle(request("Delete"), &schema, &recorder, soon(), &Timing::default()).await.unwrap_err();
        assert_eq!(recorder.puts.lock().unwrap().len(), 3);
        assert_eq!(error.to_string(), "could not send the SUCCESS response to CloudFormation: HTTP 503");
    }

    #[test]
    fn truncate_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("héllo", 10), "héllo");
    }
}
