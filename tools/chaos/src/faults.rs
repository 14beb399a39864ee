//! The faults: what each does to the running system, chosen from the round's seeded generator.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clickpacer::config::Env;
use partner_sim::Behaviour;
use tokio::process::{Child, Command};

use crate::Role;

/// Every kind of fault a round may inject; the run reports how often each was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL of a worker at a random moment.
    KillWorker,
    /// A pacer crash between its claim's commit and its SQS send.
    CrashAfterClaim,
    /// A pacer crash after SendMessageBatch, before marking the batches queued.
    CrashAfterSend,
    /// A bridge crash between a partner's answer and its recording (also mid-delivery, after k of n clicks).
    CrashAfterPartnerAnswer,
    /// SQS SendMessageBatch, ReceiveMessage and DeleteMessage failing at the adapter.
    SqsErrors,
    /// DynamoDB throttling the event log at the adapter.
    DynamoThrottling,
    /// `pg_ctl restart -m immediate`.
    PostgresRestart,
    /// Every backend of the database terminated mid-transaction.
    BackendsTerminated,
    /// 30 % of a partner's requests answered 500.
    Partner5xx,
    /// 429 with `Retry-After` in seconds.
    Partner429Seconds,
    /// 429 with `Retry-After` as an HTTP date.
    Partner429Date,
    /// Answers slower than the partner's timeout.
    PartnerTimeout,
    /// Requests accepted, then the connection reset before the answer.
    PartnerReset,
    /// A partner that never answers.
    PartnerHang,
    /// 200 with a body that does not match the partner's success pattern.
    PartnerWrongBody,
    /// A partner slow enough that a bridge invocation outlives its function timeout.
    BridgeTimeout,
    /// The same S3 event delivered again, some copies at once.
    DuplicateEvents,
    /// An object overwritten between its event and its read.
    ObjectOverwritten,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        Self::KillWorker,
        Self::CrashAfterClaim,
        Self::CrashAfterSend,
        Self::CrashAfterPartnerAnswer,
        Self::SqsErrors,
        Self::DynamoThrottling,
        Self::PostgresRestart,
        Self::BackendsTerminated,
        Self::Partner5xx,
        Self::Partner429Seconds,
        Self::Partner429Date,
        Self::PartnerTimeout,
        Self::PartnerReset,
        Self::PartnerHang,
        Self::PartnerWrongBody,
        Self::BridgeTimeout,
        Self::DuplicateEvents,
        Self::ObjectOverwritten,
    ];

    /// Whether the fault is injected when a round's files are dropped (the others while it runs).
    pub fn at_upload(self) -> bool {
        matches!(self, Self::DuplicateEvents | Self::ObjectOverwritten)
    }

    /// The faults injected while a round runs.
    pub fn running() -> Vec<FaultKind> {
        Self::ALL.into_iter().filter(|k| !k.at_upload()).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::KillWorker => "kill",
            Self::CrashAfterClaim => "crash-after-claim",
            Self::CrashAfterSend => "crash-after-send",
            Self::CrashAfterPartnerAnswer => "crash-after-answer",
            Self::SqsErrors => "sqs-errors",
            Self::DynamoThrottling => "dynamodb-throttling",
            Self::PostgresRestart => "pg-restart",
            Self::BackendsTerminated => "pg-terminate",
            Self::Partner5xx => "partner-5xx",
            Self::Partner429Seconds => "partner-429-s",
            Self::Partner429Date => "partner-429-date",
            Self::PartnerTimeout => "partner-timeout",
            Self::PartnerReset => "partner-reset",
            Self::PartnerHang => "partner-hang",
            Self::PartnerWrongBody => "partner-wrong-body",
            Self::BridgeTimeout => "bridge-timeout",
            Self::DuplicateEvents => "duplicate-events",
            Self::ObjectOverwritten => "object-overwritten",
        }
    }

    /// The failpoints a worker of `role` is started with for this fault (`FAILPOINTS` syntax), if any.
    pub fn failpoints(self, role: Role) -> Option<&'static str> {
        match (self, role) {
            (Self::CrashAfterClaim, Role::Pacer) => Some("pacer::after_claim=40%panic"),
            (Self::CrashAfterSend, Role::Pacer) => Some("pacer::after_send=40%panic"),
            (Self::CrashAfterPartnerAnswer, Role::Bridge) => Some("bridge::after_partner_answer=3%panic"),
            (Self::SqsErrors, _) => Some("sqs::send=25%return;sqs::receive=25%return;sqs::delete=25%return"),
            (Self::DynamoThrottling, Role::Bridge) => Some("dynamodb::put=60%return"),
            _ => None,
        }
    }

    /// The role whose worker carries this fault's failpoints.
    pub fn role(self) -> Option<Role> {
        match self {
            Self::CrashAfterClaim | Self::CrashAfterSend => Some(Role::Pacer),
            Self::CrashAfterPartnerAnswer | Self::DynamoThrottling => Some(Role::Bridge),
            // SQS errors hit any worker; the other faults need none.
            _ => None,
        }
    }

    /// How a partner answers under this fault (`healthy` is its behaviour otherwise).
    pub fn partner_behaviour(self, healthy: &Behaviour) -> Option<Behaviour> {
        let b = healthy.clone();
        Some(match self {
            Self::Partner5xx => Behaviour { error_rate: 0.3, ..b },
            Self::Partner429Seconds => Behaviour { status_override: Some(429), retry_after_s: 1, ..b },
            Self::Partner429Date => {
                Behaviour { status_override: Some(429), retry_after_s: 2, retry_after_as_date: true, ..b }
            }
            Self::PartnerTimeout => Behaviour { latency_ms: 1_500, ..b },
            Self::PartnerReset => Behaviour { reset_rate: 0.3, ..b },
            Self::PartnerHang => Behaviour { latency_ms: 3_600_000, ..b },
            Self::PartnerWrongBody => Behaviour { body: "DENIED".into(), ..b },
            Self::BridgeTimeout => Behaviour { latency_ms: 700, ..b },
            _ => return None,
        })
    }
}

/// One worker process.
pub struct Worker {
    pub role: Role,
    pub child: Child,
    /// The failpoints it was started with.
    pub armed: Option<&'static str>,
}

/// How workers are started: this binary, the shared names, a log file each.
pub struct WorkerLauncher {
    pub binary: PathBuf,
    pub prefix: String,
    pub database_url: String,
    pub logs: PathBuf,
    pub started: u32,
}

impl WorkerLauncher {
    pub fn spawn(&mut self, role: Role, failpoints: Option<&'static str>) -> anyhow::Result<Worker> {
        self.started += 1;
        let log = std::fs::File::create(self.logs.join(format!("{}-{}.log", role.name(), self.started)))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["worker", "--role", role.name(), "--prefix", &self.prefix])
            .env("DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match failpoints {
            Some(points) => command.env("FAILPOINTS", points),
            None => command.env_remove("FAILPOINTS"),
        };
        Ok(Worker { role, child: command.spawn()?, armed: failpoints })
    }
}

/// How to restart PostgreSQL, when the runner owns the cluster (`scripts/chaos` says where it is).
#[derive(Debug, Clone)]
pub struct PostgresControl {
    pub pg_ctl: PathBuf,
    pub data: PathBuf,
    /// Run `pg_ctl` as this user (PostgreSQL refuses to run as root).
    pub run_as: Option<String>,
}

impl PostgresControl {
    pub fn from_env(env: &Env) -> Option<Self> {
        let bindir = env.optional("CLICKPACER_PG_BINDIR")?;
        let data = env.optional("CLICKPACER_PG_DATA")?;
        Some(Self {
            pg_ctl: PathBuf::from(bindir).join("pg_ctl"),
            data: PathBuf::from(data),
            run_as: env.optional("CLICKPACER_PG_USER"),
        })
    }

    /// `pg_ctl restart -m immediate`: every connection dies, uncommitted work is lost, the server comes back.
    pub async fn restart_immediate(&self) -> anyhow::Result<()> {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&self.pg_ctl);
                c
            }
            None => Command::new(&self.pg_ctl),
        };
        // The server log stays where the scripts keep it, beside the data directory.
        let log = self.data.parent().map(|p| p.join("server.log")).unwrap_or_else(|| "server.log".into());
        let status = command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(log)
            .args(["restart", "-m", "immediate", "-w", "-t", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "pg_ctl restart failed: {status}");
        Ok(())
    }
}

/// How long a partner fault lasts.
pub const PARTNER_FAULT_FOR: Duration = Duration::from_secs(3);
