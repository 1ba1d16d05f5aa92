//! Sets up tracing: plain text without colours when stderr is not a terminal (journald),
//! JSON when configured, and a filter that keeps dependencies quiet unless asked.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

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
/// the libraries at `warn`; anything else is a list of `target=level` directives with a
/// default level (`warn,drover=debug,aws_config=info`), used as given. A filter by targets,
/// not tracing's `EnvFilter`: that one also matches spans and fields by regular
/// expressions, nothing here asks for that, and its regex engine was 0.3 MiB of the binary
/// (3.7 %), which an idle drover keeps resident.
pub fn filter_for(level: &str) -> Result<Targets, String> {
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
    directive
        .parse::<Targets>()
        .map_err(|e| format!("{level:?}: {e}"))
}

/// Installs the global subscriber. `RUST_LOG`, when set and valid, replaces `log.level`.
pub fn init(config: &Settings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .or_else(|| filter_for(&config.level).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match config.format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                lines
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .flatten_event(true)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                lines
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter),
            )
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
        assert!(filter_for("warn,drover=loud").is_err());
    }

    #[test]
    fn a_plain_level_is_drovers_and_the_libraries_stay_at_warn() {
        use tracing::Level;
        let filter = filter_for("debug").expect("a filter");
        assert!(filter.would_enable("drover::sources::queue", &Level::DEBUG));
        assert!(!filter.would_enable("drover::sources::queue", &Level::TRACE));
        assert!(!filter.would_enable("aws_config::imds", &Level::INFO));
        assert!(filter.would_enable("aws_config::imds", &Level::WARN));
        let given = filter_for("error,aws_smithy_runtime=debug").expect("a filter");
        assert!(given.would_enable("aws_smithy_runtime::client", &Level::DEBUG));
        assert!(!given.would_enable("drover", &Level::WARN));
    }
}
