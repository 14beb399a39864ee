//! The one configuration loader.
//!
//! Every function is configured only by environment variables, the same ones `template.yaml` sets. Each
//! function has a typed config built from an [`Env`] once at cold start; a missing or invalid variable is an
//! error that names it. [`FunctionKind::required_vars`] is the single list the SAM template test checks.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::ingest::IngestLimits;

/// The variable names, pinned: `template.yaml`, the local runner and the scripts all use these.
pub mod vars {
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const DATABASE_POOL_SIZE: &str = "DATABASE_POOL_SIZE";
    pub const CLICK_QUEUE_URL: &str = "CLICK_QUEUE_URL";
    pub const EVENTS_TABLE: &str = "EVENTS_TABLE";
    /// The bucket click files are uploaded to (the API hands out upload links into it).
    pub const UPLOAD_BUCKET: &str = "UPLOAD_BUCKET";
    /// The click queue's dead-letter queue (the API shows its depth).
    pub const DEAD_LETTER_QUEUE_URL: &str = "DEAD_LETTER_QUEUE_URL";
    /// Local use only: lets partner URLs resolve to private and loopback addresses (the partner simulator).
    pub const ALLOW_PRIVATE_PARTNERS: &str = "ALLOW_PRIVATE_PARTNERS";
    pub const SLICER_WRITERS: &str = "SLICER_WRITERS";
    pub const SLICER_MAX_OBJECT_BYTES: &str = "SLICER_MAX_OBJECT_BYTES";
    pub const SLICER_MAX_DECOMPRESSED_BYTES: &str = "SLICER_MAX_DECOMPRESSED_BYTES";
    pub const SLICER_MAX_ROWS: &str = "SLICER_MAX_ROWS";
    pub const SLICER_MAX_ROW_BYTES: &str = "SLICER_MAX_ROW_BYTES";
    /// Log filter (`tracing` directives); in Lambda, `AWS_LAMBDA_LOG_LEVEL` takes precedence.
    pub const RUST_LOG: &str = "RUST_LOG";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {name} is not set")]
    Missing { name: &'static str },
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// A source of variables: the process environment in production, a map in tests.
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() }
    }

    /// A set, non-blank variable; blank counts as missing because SAM renders an unset parameter as "".
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing { name })
    }

    pub fn optional(&self, name: &'static str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    pub fn parsed_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => {
                raw.parse().map_err(|e: T::Err| ConfigError::Invalid { name, reason: format!("{raw:?}: {e}") })
            }
        }
    }
}

/// How to reach PostgreSQL.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: usize,
}

impl fmt::Debug for DatabaseConfig {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig").field("pool_size", &self.pool_size).finish_non_exhaustive()
    }
}

impl DatabaseConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.required(vars::DATABASE_URL)?;
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::Invalid {
                name: vars::DATABASE_URL,
                reason: "not a PostgreSQL connection string (postgres://user@host:port/db)".into(),
            });
        }
        // One small pool per execution environment: a Lambda serves one event at a time, so a few
        // connections cover the handler's concurrent queries without exhausting RDS Proxy.
        let pool_size = env.parsed_or(vars::DATABASE_POOL_SIZE, 4usize)?;
        if pool_size == 0 {
            return Err(ConfigError::Invalid { name: vars::DATABASE_POOL_SIZE, reason: "must be at least 1".into() });
        }
        Ok(Self { url, pool_size })
    }
}

/// Which deployable unit is loading its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    Slicer,
    Pacer,
    Bridge,
    Api,
    Migrate,
}

impl FunctionKind {
    pub const ALL: [FunctionKind; 5] = [Self::Slicer, Self::Pacer, Self::Bridge, Self::Api, Self::Migrate];

    /// Variables the function refuses to start without.
    pub fn required_vars(self) -> &'static [&'static str] {
        use vars::*;
        match self {
            Self::Slicer | Self::Migrate => &[DATABASE_URL],
            Self::Pacer => &[DATABASE_URL, CLICK_QUEUE_URL],
            Self::Bridge => &[DATABASE_URL, CLICK_QUEUE_URL, EVENTS_TABLE],
            Self::Api => &[DATABASE_URL, CLICK_QUEUE_URL, DEAD_LETTER_QUEUE_URL, EVENTS_TABLE, UPLOAD_BUCKET],
        }
    }
}

/// Configuration every function reads, with the parts a given function does not need left empty.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub click_queue_url: Option<String>,
    pub dead_letter_queue_url: Option<String>,
    pub events_table: Option<String>,
    pub upload_bucket: Option<String>,
    pub allow_private_partners: bool,
    pub slicer: SlicerConfig,
}

/// The slicer's own settings (all optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicerConfig {
    /// Connections writing one upload's chunks at once (at most `DATABASE_POOL_SIZE`); `None`: the default.
    pub writers: Option<usize>,
    pub limits: IngestLimits,
}

impl SlicerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = IngestLimits::default();
        let limits = IngestLimits {
            max_object_bytes: env.parsed_or(vars::SLICER_MAX_OBJECT_BYTES, defaults.max_object_bytes)?,
            max_decompressed_bytes: env
                .parsed_or(vars::SLICER_MAX_DECOMPRESSED_BYTES, defaults.max_decompressed_bytes)?,
            max_rows: env.parsed_or(vars::SLICER_MAX_ROWS, defaults.max_rows)?,
            max_row_bytes: env.parsed_or(vars::SLICER_MAX_ROW_BYTES, defaults.max_row_bytes)?,
        };
        for (name, zero) in [
            (vars::SLICER_MAX_OBJECT_BYTES, limits.max_object_bytes == 0),
            (vars::SLICER_MAX_DECOMPRESSED_BYTES, limits.max_decompressed_bytes == 0),
            (vars::SLICER_MAX_ROWS, limits.max_rows == 0),
            (vars::SLICER_MAX_ROW_BYTES, limits.max_row_bytes == 0),
        ] {
            if zero {
                return Err(ConfigError::Invalid { name, reason: "must be at least 1".into() });
            }
        }
        let writers =
            env.optional(vars::SLICER_WRITERS).map(|_| env.parsed_or(vars::SLICER_WRITERS, 1usize)).transpose()?;
        Ok(Self { writers, limits })
    }
}

impl Config {
    /// Loads and validates what `kind` needs; fails on the first missing or invalid variable, by name.
    pub fn load(env: &Env, kind: FunctionKind) -> Result<Self, ConfigError> {
        for name in kind.required_vars() {
            env.required(name)?;
        }
        Ok(Self {
            database: DatabaseConfig::from_env(env)?,
            click_queue_url: env.optional(vars::CLICK_QUEUE_URL),
            dead_letter_queue_url: env.optional(vars::DEAD_LETTER_QUEUE_URL),
            upload_bucket: env.optional(vars::UPLOAD_BUCKET),
            events_table: env.optional(vars::EVENTS_TABLE),
            allow_private_partners: env.parsed_or(vars::ALLOW_PRIVATE_PARTNERS, false)?,
            slicer: SlicerConfig::from_env(env)?,
        })
    }

    /// Convenience for `main.rs`: the process environment.
    pub fn from_process_env(kind: FunctionKind) -> Result<Self, ConfigError> {
        Self::load(&Env::from_process(), kind)
    }

    pub fn click_queue_url(&self) -> Result<&str, ConfigError> {
        self.click_queue_url.as_deref().ok_or(ConfigError::Missing { name: vars::CLICK_QUEUE_URL })
    }

    pub fn dead_letter_queue_url(&self) -> Result<&str, ConfigError> {
        self.dead_letter_queue_url.as_deref().ok_or(ConfigError::Missing { name: vars::DEAD_LETTER_QUEUE_URL })
    }

    pub fn upload_bucket(&self) -> Result<&str, ConfigError> {
        self.upload_bucket.as_deref().ok_or(ConfigError::Missing { name: vars::UPLOAD_BUCKET })
    }

    pub fn events_table(&self) -> Result<&str, ConfigError> {
        self.events_table.as_deref().ok_or(ConfigError::Missing { name: vars::EVENTS_TABLE })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: (&str, &str) = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/clickpacer");

    #[test]
    fn missing_variable_is_named() {
        let env = Env::from_pairs([DB]);
        let err = Config::load(&env, FunctionKind::Pacer).unwrap_err();
        assert_eq!(err, ConfigError::Missing { name: "CLICK_QUEUE_URL" });
        assert_eq!(err.to_string(), "environment variable CLICK_QUEUE_URL is not set");
    }

    #[test]
    fn blank_counts_as_missing() {
        let env = Env::from_pairs([("DATABASE_URL", "  ")]);
        assert_eq!(
            Config::load(&env, FunctionKind::Slicer).unwrap_err(),
            ConfigError::Missing { name: "DATABASE_URL" }
        );
    }

    #[test]
    fn slicer_limits_have_defaults_and_are_named_when_invalid() {
        let config = Config::load(&Env::from_pairs([DB]), FunctionKind::Slicer).unwrap();
        assert_eq!(config.slicer, SlicerConfig { writers: None, limits: IngestLimits::default() });
        let env = Env::from_pairs([DB, ("SLICER_MAX_ROWS", "1000"), ("SLICER_WRITERS", "3")]);
        let config = Config::load(&env, FunctionKind::Slicer).unwrap();
        assert_eq!((config.slicer.limits.max_rows, config.slicer.writers), (1000, Some(3)));
        let env = Env::from_pairs([DB, ("SLICER_MAX_DECOMPRESSED_BYTES", "0")]);
        let err = Config::load(&env, FunctionKind::Slicer).unwrap_err().to_string();
        assert!(err.contains("SLICER_MAX_DECOMPRESSED_BYTES"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql://nope")]);
        let err = Config::load(&env, FunctionKind::Slicer).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { name: "DATABASE_URL", .. }), "{err}");

        let env = Env::from_pairs([DB, ("DATABASE_POOL_SIZE", "many")]);
        let err = Config::load(&env, FunctionKind::Slicer).unwrap_err();
        assert!(err.to_string().contains("DATABASE_POOL_SIZE"), "{err}");
    }

    #[test]
    fn full_config_loads_for_every_function() {
        let env = Env::from_pairs([
            DB,
            ("CLICK_QUEUE_URL", "http://localhost:5000/123/clicks"),
            ("DEAD_LETTER_QUEUE_URL", "http://localhost:5000/123/clicks-dlq"),
            ("EVENTS_TABLE", "events"),
            ("UPLOAD_BUCKET", "uploads"),
        ]);
        for kind in FunctionKind::ALL {
            let config = Config::load(&env, kind).unwrap();
            assert_eq!(config.database.pool_size, 4);
        }
        assert!(!format!("{:?}", Config::load(&env, FunctionKind::Api).unwrap()).contains("postgres://"));
    }
}
