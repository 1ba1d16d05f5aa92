//! Sets up tracing: plain text without colours when stderr is not a terminal (journald),
//! JSON when configured, and a filter that keeps dependencies quiet unless asked.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One plain line an event, for journald.
    Text,
    Json,
}

/// The logging settings (`[log]`), as the config built them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: LogFormat,
    /// A tracing filter: a plain level applies to drover, anything else is used as given.
    pub level: String,
}

/// Turns `log.level` into a filter. A plain level (`debug`) applies to drover and leaves
/// the libraries at `warn`; anything else is a full filter directive, used as given.
pub fn filter_for(level: &str) -> Result<EnvFilter, String> {
    let level = level.trim();
    let directive = match level.to_ascii_lowercase().as_str() {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => format!("warn,drover={level}"),
        _ if level.contains('=') => level.to_string(),
        _ => {
            return Err(format!(
                "{level:?} is not a level (trace, debug, info, warn, error, off) or a filter like \"warn,drover=debug\""
            ))
        }
    };
    EnvFilter::try_new(&directive).map_err(|e| format!("{level:?}: {e}"))
}

/// Installs the global subscriber. `RUST_LOG`, when set, replaces `log.level`.
pub fn init(config: &Settings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| filter_for(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_levels_and_directives() {
        assert!(filter_for("debug").is_ok());
        assert!(filter_for("INFO").is_ok());
        assert!(filter_for("warn,drover=trace").is_ok());
        assert!(filter_for("loud").is_err());
    }
}
