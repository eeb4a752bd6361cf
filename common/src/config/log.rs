//! The `[log]` section: log format and filter.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `info,chat_service=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError(format!("key `log.level`: {e}")));
        }
        Ok(())
    }
}
