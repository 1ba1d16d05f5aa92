//! Loads drover's configuration from the TOML file, `DROVER_<SECTION>_<KEY>` variables and
//! `--set` flags, and validates all of it before anything talks to the network.
//!
//! Precedence is flag > environment > file > default. The three layers are merged as TOML
//! tables and deserialized once, so a wrong type is reported the same way wherever it came
//! from. Values from the environment and flags are strings; they are turned into TOML values
//! by the type the key has in [`KEYS`], never by guessing (a generic "looks like a number"
//! guess would turn an all-digit secret into an integer).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::labels::HostLabels;
use crate::lifecycle::{LaunchHook, LifecycleResult};
use crate::logging::LogFormat;
use crate::pager::WebhookEvents;
use crate::rancher::ApiVersion;
use crate::secret::{loose_mode_warning, Secret, Source};

/// Where the config file is when neither `--config` nor `DROVER_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/drover.toml";

/// The type of a key, which decides how a string from the environment becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Str,
    Bool,
    /// A whole number (`reaper.max_per_sweep`).
    Int,
    /// A `key=value&key=value` list (the `CATTLE_HOST_LABELS` form) or a TOML inline table.
    Labels,
}

/// Every key drover knows, as `(section, key, kind)`.
const KEYS: &[(&str, &str, KeyKind)] = &[
    ("rancher", "url", KeyKind::Str),
    ("rancher", "project_id", KeyKind::Str),
    ("rancher", "access_key", KeyKind::Str),
    ("rancher", "secret_key", KeyKind::Str),
    ("rancher", "secret_key_file", KeyKind::Str),
    ("rancher", "secret_key_ssm", KeyKind::Str),
    ("rancher", "api_version", KeyKind::Str),
    ("rancher", "ca_file", KeyKind::Str),
    ("rancher", "request_timeout", KeyKind::Str),
    ("agent", "image", KeyKind::Str),
    ("agent", "labels", KeyKind::Labels),
    ("agent", "agent_ip", KeyKind::Str),
    ("agent", "privileged", KeyKind::Bool),
    ("agent", "register_timeout", KeyKind::Str),
    ("lifecycle", "queue_url", KeyKind::Str),
    ("lifecycle", "hook_name", KeyKind::Str),
    ("lifecycle", "imds_poll", KeyKind::Str),
    ("lifecycle", "drain_timeout", KeyKind::Str),
    ("lifecycle", "on_failure", KeyKind::Str),
    ("lifecycle", "evacuate", KeyKind::Bool),
    ("lifecycle", "on_sigterm", KeyKind::Str),
    ("lifecycle", "handle_peers", KeyKind::Bool),
    ("lifecycle", "launch_hook_name", KeyKind::Str),
    ("reaper", "enabled", KeyKind::Bool),
    ("reaper", "interval", KeyKind::Str),
    ("reaper", "max_per_sweep", KeyKind::Int),
    ("reaper", "dry_run", KeyKind::Bool),
    ("pager", "pagerduty_routing_key", KeyKind::Str),
    ("pager", "pagerduty_routing_key_file", KeyKind::Str),
    ("pager", "pagerduty_routing_key_ssm", KeyKind::Str),
    ("pager", "pagerduty_url", KeyKind::Str),
    ("pager", "webhook_url", KeyKind::Str),
    ("pager", "webhook_events", KeyKind::Str),
    ("metrics", "textfile", KeyKind::Str),
    ("state", "dir", KeyKind::Str),
    ("log", "format", KeyKind::Str),
    ("log", "level", KeyKind::Str),
];

const SECTIONS: &[&str] = &[
    "rancher",
    "agent",
    "lifecycle",
    "reaper",
    "metrics",
    "pager",
    "state",
    "log",
];

/// A configuration problem: always names the key (or the file) and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config key {key}{origin}: {reason}")]
    Key {
        key: String,
        origin: Origin,
        reason: String,
    },
    #[error("{flag}: {reason}")]
    Flag { flag: String, reason: String },
}

impl ConfigError {
    /// The error with every control character it quotes (from a TOML key, a variable's
    /// name, a `--set` argument) written as an escape, so that it stays one line.
    fn one_line(self) -> ConfigError {
        match self {
            ConfigError::File { path, reason } => ConfigError::File {
                path,
                reason: escape_controls(reason),
            },
            ConfigError::Key {
                key,
                origin,
                reason,
            } => ConfigError::Key {
                key: escape_controls(key),
                origin: match origin {
                    Origin::Env(var) => Origin::Env(escape_controls(var)),
                    other => other,
                },
                reason: escape_controls(reason),
            },
            ConfigError::Flag { flag, reason } => ConfigError::Flag {
                flag: escape_controls(flag),
                reason: escape_controls(reason),
            },
        }
    }
}

fn escape_controls(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Where a bad value came from, so that the message points at the right place.
#[derive(Debug, Clone, Default)]
pub enum Origin {
    #[default]
    Unknown,
    Env(String),
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Unknown => Ok(()),
            Origin::Env(var) => write!(f, " (from {var})"),
            Origin::Flag => write!(f, " (from --set)"),
        }
    }
}

fn key_error(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        origin: Origin::Unknown,
        reason: reason.into(),
    }
}

/// The address the agent registers with (`CATTLE_AGENT_IP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentIp {
    LocalIpv4,
    PublicIpv4,
    Literal(std::net::Ipv4Addr),
}

/// What SIGTERM means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSigterm {
    Auto,
    Deregister,
    Exit,
}

impl OnSigterm {
    /// The config's own word for it (`lifecycle.on_sigterm`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnSigterm::Auto => "auto",
            OnSigterm::Deregister => "deregister",
            OnSigterm::Exit => "exit",
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (which may not exist: then every key came from elsewhere).
    pub path: PathBuf,
    pub rancher: crate::rancher::Settings,
    pub agent: AgentConfig,
    pub lifecycle: LifecycleConfig,
    pub reaper: ReaperConfig,
    pub metrics: MetricsConfig,
    pub pager: crate::pager::Settings,
    pub state: StateConfig,
    pub log: crate::logging::Settings,
    /// Non-fatal findings (loose file modes) to log once logging is set up.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub image: String,
    pub labels: HostLabels,
    pub agent_ip: AgentIp,
    pub privileged: bool,
    pub register_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    pub queue_url: Option<String>,
    pub hook_name: Option<String>,
    /// `None` when polling is off (`"0s"`).
    pub imds_poll: Option<Duration>,
    pub drain_timeout: Duration,
    pub on_failure: LifecycleResult,
    pub evacuate: bool,
    pub on_sigterm: OnSigterm,
    pub handle_peers: bool,
    pub launch_hook: LaunchHook,
}

/// `[reaper]`: taking out the hosts whose instances died without a clean stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaperConfig {
    pub enabled: bool,
    /// The environment as a whole is swept about once per interval.
    pub interval: Duration,
    pub max_per_sweep: usize,
    pub dry_run: bool,
}

/// `[metrics]`: the node_exporter textfile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where the textfile goes; `None`: no metrics.
    pub textfile: Option<PathBuf>,
}

/// The most take-outs `reaper.max_per_sweep` allows: a bound on the work one sweep starts.
const MAX_PER_SWEEP_LIMIT: u32 = 1000;

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: PathBuf,
}

// The raw, merged layers as serde sees them. Every field is optional so that "missing"
// is reported by validation with the key's name, not by serde.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rancher: RawRancher,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    lifecycle: RawLifecycle,
    #[serde(default)]
    reaper: RawReaper,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    pager: RawPager,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRancher {
    url: Option<String>,
    project_id: Option<String>,
    access_key: Option<String>,
    secret_key: Option<SecretString>,
    secret_key_file: Option<PathBuf>,
    secret_key_ssm: Option<String>,
    api_version: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    image: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    agent_ip: Option<String>,
    privileged: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    register_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifecycle {
    queue_url: Option<String>,
    hook_name: Option<String>,
    #[serde(default, with = "humantime_serde")]
    imds_poll: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    on_failure: Option<String>,
    evacuate: Option<bool>,
    on_sigterm: Option<String>,
    handle_peers: Option<bool>,
    launch_hook_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReaper {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    max_per_sweep: Option<u32>,
    dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPager {
    pagerduty_routing_key: Option<SecretString>,
    pagerduty_routing_key_file: Option<PathBuf>,
    pagerduty_routing_key_ssm: Option<String>,
    pagerduty_url: Option<String>,
    webhook_url: Option<String>,
    webhook_events: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

/// The inputs to loading: where the file is, the environment, and `--set KEY=VALUE` flags.
pub struct Sources<'a> {
    pub path: PathBuf,
    /// Whether the path was given explicitly (then a missing file is an error).
    pub path_explicit: bool,
    pub env: Vec<(String, String)>,
    pub overrides: &'a [String],
}

impl Config {
    /// Reads and validates everything; the error names the key and the reason.
    pub fn load(sources: Sources<'_>) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        read_file_layer(&sources.path, sources.path_explicit, &mut warnings)
            .and_then(|file| Config::from_layers(file, sources, warnings))
            .map_err(ConfigError::one_line)
    }

    /// [`Config::load`] with the file's text given rather than read from `sources.path`.
    pub(crate) fn load_text(text: &str, sources: Sources<'_>) -> Result<Config, ConfigError> {
        parse_file_layer(text, &sources.path)
            .and_then(|file| Config::from_layers(file, sources, Vec::new()))
            .map_err(ConfigError::one_line)
    }

    /// Merges the environment and the flags over the file's table, then validates.
    fn from_layers(
        mut merged: toml::Table,
        sources: Sources<'_>,
        warnings: Vec<String>,
    ) -> Result<Config, ConfigError> {
        let mut origins: BTreeMap<String, Origin> = BTreeMap::new();

        for (var, value) in &sources.env {
            let Some(rest) = var.strip_prefix("DROVER_") else {
                continue;
            };
            // DROVER_CONFIG and anything outside the known sections belong to others.
            let Some(section) = SECTIONS
                .iter()
                .find(|s| rest.to_ascii_lowercase().starts_with(&format!("{s}_")))
            else {
                continue;
            };
            let key = rest[section.len() + 1..].to_ascii_lowercase();
            let origin = Origin::Env(var.clone());
            set_layer_value(&mut merged, section, &key, value, &origin)?;
            origins.insert(format!("{section}.{key}"), origin);
        }

        for item in sources.overrides {
            let Some((dotted, value)) = item.split_once('=') else {
                return Err(ConfigError::Flag {
                    flag: format!("--set {item}"),
                    reason: "expected SECTION.KEY=VALUE".into(),
                });
            };
            let Some((section, key)) = dotted
                .trim()
                .split_once('.')
                .filter(|(section, key)| !section.is_empty() && !key.is_empty())
            else {
                // Only the part before `=`: the value may be a secret set the wrong way.
                return Err(ConfigError::Flag {
                    flag: format!("--set {dotted}=…"),
                    reason: "expected SECTION.KEY=VALUE".into(),
                });
            };
            set_layer_value(&mut merged, section, key, value, &Origin::Flag)?;
            origins.insert(format!("{section}.{key}"), Origin::Flag);
        }

        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|err| {
                let path = err.path().to_string();
                let inner = err.into_inner();
                let msg = inner.to_string();
                // deny_unknown_fields reports the unknown name in the message.
                if let Some(field) = unknown_field_name(&msg) {
                    // The path already ends with the unknown key (serde_path_to_error puts
                    // it there): name it once, and an empty one as TOML writes it.
                    let parent = match path.strip_suffix(field.as_str()) {
                        Some(rest) if rest.is_empty() || rest.ends_with('.') => {
                            rest.trim_end_matches('.')
                        }
                        _ if path == "." => "",
                        _ => path.as_str(),
                    };
                    let field = if field.is_empty() {
                        "\"\"".to_string()
                    } else {
                        field
                    };
                    let key = if parent.is_empty() {
                        field
                    } else {
                        format!("{parent}.{field}")
                    };
                    return key_error(key, "unknown key");
                }
                let origin = origins.get(&path).cloned().unwrap_or_default();
                // serde's messages quote the offending value: never for a secret.
                let reason = if path.ends_with("secret_key") || path.ends_with("routing_key") {
                    "must be a string".to_string()
                } else {
                    first_line(&msg)
                };
                ConfigError::Key {
                    key: path,
                    origin,
                    reason,
                }
            })?;
        validate(raw, sources.path, warnings)
    }

    /// Whether the secret key, inline or in its file, is `expected`. Used only by tests to
    /// prove the right value is found.
    #[cfg(test)]
    fn secret_key_is(&self, expected: &str) -> bool {
        match self.rancher.secret_key.source() {
            Source::Inline(value) => value.expose_secret() == expected,
            Source::File(path) => {
                std::fs::read_to_string(path).is_ok_and(|text| text.trim() == expected)
            }
            Source::Ssm(_) => false,
        }
    }
}

/// `lifecycle.launch_hook_name`: empty for the group's own, `"none"` for never.
fn launch_hook(name: Option<String>) -> LaunchHook {
    match name.as_deref().map(str::trim) {
        None | Some("") => LaunchHook::FromGroup,
        Some(n) if n.eq_ignore_ascii_case("none") => LaunchHook::Off,
        Some(n) => LaunchHook::Named(n.to_string()),
    }
}

fn first_line(msg: &str) -> String {
    msg.lines().next().unwrap_or_default().trim().to_string()
}

/// The name in serde's "unknown field `NAME`, expected ..." (or "..., there are no
/// fields"); the name itself may hold a backtick.
fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest
        .find("`, expected")
        .or_else(|| rest.find("`, there are no fields"))
        .or_else(|| rest.rfind('`'))?;
    Some(rest[..end].to_string())
}

fn read_file_layer(
    path: &Path,
    explicit: bool,
    warnings: &mut Vec<String>,
) -> Result<toml::Table, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // With the default path and no file, everything may come from the environment
        // (the way cloud-init userdata often configures drover).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(toml::Table::new());
        }
        Err(e) => {
            return Err(ConfigError::File {
                path: path.to_path_buf(),
                reason: format!("cannot read: {e}"),
            })
        }
    };
    let table = parse_file_layer(&text, path)?;
    let holds_secret = ["rancher", "pager"].iter().any(|s| {
        table.get(*s).and_then(|v| v.as_table()).is_some_and(|t| {
            t.contains_key("secret_key") || t.contains_key("pagerduty_routing_key")
        })
    });
    if holds_secret {
        if let Some(warning) = loose_mode_warning(path, "config file") {
            warnings.push(warning);
        }
    }
    Ok(table)
}

/// The config file's text as a TOML table; errors name the file and the line.
fn parse_file_layer(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let reason = match e.span() {
            Some(span) => {
                // Counted in bytes: the span need not fall on a character boundary.
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|b| **b == b'\n').count() + 1;
                format!("line {line}: {}", e.message())
            }
            None => e.message().to_string(),
        };
        ConfigError::File {
            path: path.to_path_buf(),
            reason: format!("not valid TOML: {reason}"),
        }
    })
}

/// Puts a string value from the environment or a flag into the merged table, typed by the key.
fn set_layer_value(
    table: &mut toml::Table,
    section: &str,
    key: &str,
    value: &str,
    origin: &Origin,
) -> Result<(), ConfigError> {
    let dotted = format!("{section}.{key}");
    let bad = |reason: String| ConfigError::Key {
        key: dotted.clone(),
        origin: origin.clone(),
        reason,
    };
    let Some((_, _, kind)) = KEYS.iter().find(|(s, k, _)| *s == section && *k == key) else {
        return Err(bad("unknown key".into()));
    };
    let typed = match kind {
        KeyKind::Str => toml::Value::String(value.to_string()),
        KeyKind::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            other => return Err(bad(format!("expected true or false, got {other:?}"))),
        },
        KeyKind::Int => match value.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => return Err(bad(format!("expected a whole number, got {value:?}"))),
        },
        KeyKind::Labels => toml::Value::Table(parse_labels_value(value).map_err(bad)?),
    };
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(key.to_string(), typed);
            Ok(())
        }
        _ => Err(bad(format!("[{section}] in the file is not a table"))),
    }
}

/// `role=crawling&env=prod` (the form `CATTLE_HOST_LABELS` uses), `role=crawling,env=prod`,
/// or a TOML inline table `{ role = "crawling" }`.
fn parse_labels_value(value: &str) -> Result<toml::Table, String> {
    let trimmed = value.trim();
    if trimmed.starts_with('{') {
        let doc: toml::Table = format!("labels = {trimmed}")
            .parse()
            .map_err(|e: toml::de::Error| format!("not a TOML inline table: {}", e.message()))?;
        return match doc.get("labels") {
            Some(toml::Value::Table(t)) => Ok(t.clone()),
            _ => Err("not a TOML inline table".into()),
        };
    }
    let mut out = toml::Table::new();
    if trimmed.is_empty() {
        return Ok(out);
    }
    let sep = if trimmed.contains('&') { '&' } else { ',' };
    for pair in trimmed.split(sep) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!(
                "label {pair:?} is not key=value (write labels as key=value&key=value)"
            ));
        };
        out.insert(
            k.trim().to_string(),
            toml::Value::String(v.trim().to_string()),
        );
    }
    Ok(out)
}

fn validate(
    raw: RawConfig,
    path: PathBuf,
    mut warnings: Vec<String>,
) -> Result<Config, ConfigError> {
    let r = raw.rancher;
    let url_text = required(r.url, "rancher.url")?;
    let url = parse_http_url(&url_text, "rancher.url")?;
    let project_id = required(r.project_id, "rancher.project_id")?;
    let access_key = required(r.access_key, "rancher.access_key")?;
    let (secret_key, _) = secret_from(
        r.secret_key,
        r.secret_key_file,
        r.secret_key_ssm,
        "rancher.secret_key",
        &mut warnings,
    )?
    .ok_or_else(|| {
        key_error(
            "rancher.secret_key",
            "missing (set one of rancher.secret_key, rancher.secret_key_file, rancher.secret_key_ssm)",
        )
    })?;
    let api_version = match r.api_version.as_deref().unwrap_or("auto") {
        "auto" => ApiVersion::Auto,
        "v1" => ApiVersion::V1,
        "v2-beta" => ApiVersion::V2Beta,
        other => {
            return Err(key_error(
                "rancher.api_version",
                format!("{other:?} is not one of \"auto\", \"v1\", \"v2-beta\""),
            ))
        }
    };
    if let Some(ca) = &r.ca_file {
        std::fs::metadata(ca).map_err(|e| {
            key_error(
                "rancher.ca_file",
                format!("cannot read {}: {e}", ca.display()),
            )
        })?;
    }
    let request_timeout = nonzero(
        r.request_timeout.unwrap_or(Duration::from_secs(15)),
        "rancher.request_timeout",
    )?;

    let a = raw.agent;
    let labels = HostLabels::new(a.labels.unwrap_or_default()).map_err(|e| match e.key {
        Some(k) => key_error(format!("agent.labels.{k}"), e.reason),
        None => key_error("agent.labels", e.reason),
    })?;
    let agent_ip = match a.agent_ip.as_deref().unwrap_or("local-ipv4") {
        "local-ipv4" => AgentIp::LocalIpv4,
        "public-ipv4" => AgentIp::PublicIpv4,
        other => {
            let ip: std::net::Ipv4Addr = other.parse().map_err(|_| {
                key_error(
                    "agent.agent_ip",
                    format!("{other:?} is not \"local-ipv4\", \"public-ipv4\" or an IPv4 address"),
                )
            })?;
            if ip.is_loopback() || ip.is_unspecified() {
                return Err(key_error(
                    "agent.agent_ip",
                    format!("{ip} cannot be the agent's address (Rancher needs a reachable one)"),
                ));
            }
            AgentIp::Literal(ip)
        }
    };
    let image = a.image.unwrap_or_else(|| "rancher/agent:v1.2.11".into());
    if image.trim().is_empty() {
        return Err(key_error("agent.image", "is empty"));
    }
    // `name[:tag][@sha256:...]`: a bad digest would only show at the pull, on every host.
    crate::docker::ImageRef::parse(&image).map_err(|e| key_error("agent.image", e))?;
    let register_timeout = nonzero(
        a.register_timeout.unwrap_or(Duration::from_secs(300)),
        "agent.register_timeout",
    )?;

    let l = raw.lifecycle;
    let queue_url = non_empty(l.queue_url);
    if let Some(q) = &queue_url {
        parse_http_url(q, "lifecycle.queue_url")?;
    }
    let imds_poll = match l.imds_poll.unwrap_or(Duration::from_secs(5)) {
        d if d.is_zero() => None,
        d if d < Duration::from_millis(100) => {
            return Err(key_error(
                "lifecycle.imds_poll",
                "must be at least 100ms, or \"0s\" to turn polling off",
            ))
        }
        d => Some(at_most_max(d, "lifecycle.imds_poll")?),
    };
    let drain_timeout = nonzero(
        l.drain_timeout.unwrap_or(Duration::from_secs(600)),
        "lifecycle.drain_timeout",
    )?;
    let on_failure = match l
        .on_failure
        .as_deref()
        .unwrap_or("continue")
        .to_ascii_lowercase()
        .as_str()
    {
        "continue" => LifecycleResult::Continue,
        "abandon" => LifecycleResult::Abandon,
        other => {
            return Err(key_error(
                "lifecycle.on_failure",
                format!("{other:?} is not \"continue\" or \"abandon\""),
            ))
        }
    };
    let on_sigterm = match l.on_sigterm.as_deref().unwrap_or("auto") {
        "auto" => OnSigterm::Auto,
        "deregister" => OnSigterm::Deregister,
        "exit" => OnSigterm::Exit,
        other => {
            return Err(key_error(
                "lifecycle.on_sigterm",
                format!("{other:?} is not \"auto\", \"deregister\" or \"exit\""),
            ))
        }
    };

    let reaper = reaper_config(raw.reaper)?;

    let p = raw.pager;
    let pagerduty_routing_key = match secret_from(
        p.pagerduty_routing_key,
        p.pagerduty_routing_key_file,
        p.pagerduty_routing_key_ssm,
        "pager.pagerduty_routing_key",
        &mut warnings,
    )? {
        Some((secret, known)) => {
            // PagerDuty refuses anything else with a 400 that would surface only at paging
            // time. A value not known yet (a file to come, SSM) is checked when read.
            if known.is_some_and(|key| !crate::pager::routing_key_is_valid(&key)) {
                return Err(key_error(secret.key(), crate::pager::ROUTING_KEY_SHAPE));
            }
            Some(secret)
        }
        None => None,
    };
    let pagerduty_url = parse_http_url(
        p.pagerduty_url
            .as_deref()
            .unwrap_or("https://events.pagerduty.com/v2/enqueue"),
        "pager.pagerduty_url",
    )?;
    let webhook_url = match non_empty(p.webhook_url) {
        Some(u) => Some(SecretString::from(
            parse_http_url(&u, "pager.webhook_url")?.to_string(),
        )),
        None => None,
    };

    let webhook_events = match p.webhook_events.as_deref().unwrap_or("failures") {
        "failures" => WebhookEvents::Failures,
        "all" => WebhookEvents::All,
        other => {
            return Err(key_error(
                "pager.webhook_events",
                format!("{other:?} is not \"failures\" or \"all\""),
            ))
        }
    };
    if webhook_events == WebhookEvents::All && webhook_url.is_none() {
        warnings.push(
            "pager.webhook_events = \"all\" tells nobody: pager.webhook_url is not set".into(),
        );
    }
    let metrics = metrics_config(raw.metrics)?;

    let dir = raw
        .state
        .dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/drover"));
    if dir.as_os_str().is_empty() {
        return Err(key_error("state.dir", "is empty"));
    }

    let format = match raw.log.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(key_error(
                "log.format",
                format!("{other:?} is not \"text\" or \"json\""),
            ))
        }
    };
    let level = raw.log.level.unwrap_or_else(|| "info".into());
    crate::logging::filter_for(&level).map_err(|e| key_error("log.level", e))?;

    let mut config = Config {
        path,
        rancher: crate::rancher::Settings {
            url,
            project_id,
            access_key,
            secret_key,
            api_version,
            ca_file: r.ca_file,
            request_timeout,
        },
        agent: AgentConfig {
            image,
            labels,
            agent_ip,
            privileged: a.privileged.unwrap_or(true),
            register_timeout,
        },
        lifecycle: LifecycleConfig {
            queue_url,
            hook_name: non_empty(l.hook_name),
            imds_poll,
            drain_timeout,
            on_failure,
            evacuate: l.evacuate.unwrap_or(false),
            on_sigterm,
            handle_peers: l.handle_peers.unwrap_or(true),
            launch_hook: launch_hook(l.launch_hook_name),
        },
        reaper,
        metrics,
        pager: crate::pager::Settings {
            pagerduty_routing_key,
            pagerduty_url,
            webhook_url,
            webhook_events,
            parameter_store: None,
        },
        state: StateConfig { dir },
        log: crate::logging::Settings { format, level },
        warnings,
    };
    config.warnings.extend(setting_warnings(&config));
    Ok(config)
}

/// Settings that work but that an operator most likely does not want: logged at start-up
/// and shown by `drover check` as `warn` lines, never an error.
fn setting_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    // Each of these carries a secret: the Rancher keys (Basic auth) and the registration
    // URL, the PagerDuty routing key, the webhook's own URL and the timelines it is sent.
    // A loopback address never leaves the machine (a local proxy, a test bed): no warning.
    let plain = [
        (
            "rancher.url",
            Some(config.rancher.url.clone()),
            "the API keys and the registration token",
        ),
        (
            "pager.pagerduty_url",
            config
                .pager
                .pagerduty_routing_key
                .as_ref()
                .map(|_| config.pager.pagerduty_url.clone()),
            "the routing key",
        ),
        (
            "pager.webhook_url",
            config
                .pager
                .webhook_url
                .as_ref()
                .and_then(|u| Url::parse(u.expose_secret()).ok()),
            "the webhook's URL (its secret) and every timeline",
        ),
    ];
    for (key, url, what) in plain {
        if let Some(url) = url.filter(is_plain_http_off_machine) {
            warnings.push(format!(
                "{key} is plain http:// to {}: {what} cross the network unencrypted; use https://",
                url.host_str().unwrap_or("?")
            ));
        }
    }
    if config.lifecycle.queue_url.is_some() && !config.lifecycle.handle_peers {
        warnings.push(
            "lifecycle.handle_peers is false while lifecycle.queue_url is set: the queue is \
             shared by every host of the environment, so a peer's termination message that \
             reaches this host is handed back for another receive, each wrong receive counts \
             toward the queue's redrive to its dead-letter queue, and the termination of a \
             hung or dead peer waits out its hook's timeout; turn handle_peers on, or give \
             each instance a queue of its own"
                .to_string(),
        );
    }
    warnings
}

/// `http://` to anything but a loopback address or `localhost`.
fn is_plain_http_off_machine(url: &Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            !(name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost"))
        }
        None => true,
    }
}

/// `[metrics]`: an empty `textfile` is off. The path must be absolute and end in `.prom`
/// (the textfile collector reads nothing else); its directory need not exist yet
/// (node_exporter may come later): `drover check` warns, and drover writes once it exists.
fn metrics_config(m: RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let Some(path) = m.textfile.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(MetricsConfig::default());
    };
    if !path.is_absolute() {
        return Err(key_error(
            "metrics.textfile",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    if path.extension().is_none_or(|e| e != "prom") || path.file_stem().is_none() {
        return Err(key_error(
            "metrics.textfile",
            format!(
                "{} does not end in .prom (node_exporter's textfile collector reads only *.prom files)",
                path.display()
            ),
        ));
    }
    Ok(MetricsConfig {
        textfile: Some(path),
    })
}

/// `[reaper]`, with its defaults: on, every 5 minutes, at most 10 take-outs a sweep.
fn reaper_config(r: RawReaper) -> Result<ReaperConfig, ConfigError> {
    let interval = nonzero(
        r.interval.unwrap_or(Duration::from_secs(300)),
        "reaper.interval",
    )?;
    // Each sweep lists every host of the environment: a fleet of one would list it at
    // this pace.
    if interval < Duration::from_secs(1) {
        return Err(key_error("reaper.interval", "must be at least 1s"));
    }
    let max_per_sweep = match r.max_per_sweep.unwrap_or(10) {
        0 => {
            return Err(key_error(
                "reaper.max_per_sweep",
                "must be at least 1 (turn the reaper off with reaper.enabled = false)",
            ))
        }
        n if n > MAX_PER_SWEEP_LIMIT => {
            return Err(key_error(
                "reaper.max_per_sweep",
                format!("must be at most {MAX_PER_SWEEP_LIMIT}"),
            ))
        }
        n => n as usize,
    };
    Ok(ReaperConfig {
        enabled: r.enabled.unwrap_or(true),
        interval,
        max_per_sweep,
        dry_run: r.dry_run.unwrap_or(false),
    })
}

fn required(value: Option<String>, key: &str) -> Result<String, ConfigError> {
    match non_empty(value) {
        Some(v) => Ok(v),
        None => Err(key_error(key, "missing (required)")),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn nonzero(d: Duration, key: &str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(key_error(key, "must be longer than zero"))
    } else {
        at_most_max(d, key)
    }
}

/// The longest duration any setting takes: far beyond what any of them means (a lifecycle
/// hook waits 48 hours at most), and short enough that "now" plus it is a time, where
/// `"300000000000y"`, which the duration syntax allows, overflows it and panics.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn at_most_max(d: Duration, key: &str) -> Result<Duration, ConfigError> {
    if d > MAX_DURATION {
        Err(key_error(key, "must be at most 7 days"))
    } else {
        Ok(d)
    }
}

fn parse_http_url(text: &str, key: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| key_error(key, format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(key_error(key, format!("{text:?} is not an http(s) URL")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in a URL end up in logs and error messages.
        return Err(key_error(
            key,
            "must not carry credentials; use the key settings instead",
        ));
    }
    Ok(url)
}

/// A secret given inline, as `<name>_file` or as `<name>_ssm`: more than one is ambiguous
/// and refused. With the value when it is known now (inline, or a file already there).
///
/// A file that is not there yet is accepted: cloud-init may write it a moment after drover
/// starts, and it is waited for when the secret is read. One that is there must be readable
/// and not empty.
fn secret_from(
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    ssm: Option<String>,
    name: &'static str,
    warnings: &mut Vec<String>,
) -> Result<Option<(Secret, Option<SecretString>)>, ConfigError> {
    let inline = inline.filter(|s| !s.expose_secret().is_empty());
    let file = file.filter(|f| !f.as_os_str().is_empty());
    let ssm = non_empty(ssm);
    let set: Vec<String> = [
        inline.is_some().then(|| name.to_string()),
        file.is_some().then(|| format!("{name}_file")),
        ssm.is_some().then(|| format!("{name}_ssm")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() > 1 {
        let how = if set.len() == 2 { "both" } else { "all" };
        return Err(key_error(
            name,
            format!(
                "{} are {how} set; set only one of {name}, {name}_file, {name}_ssm",
                set.join(" and ")
            ),
        ));
    }
    if let Some(value) = inline {
        return Ok(Some((
            Secret::new(name, Source::Inline(value.clone())),
            Some(value),
        )));
    }
    if let Some(parameter) = ssm {
        let key = format!("{name}_ssm");
        if parameter
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(key_error(
                key,
                "an SSM parameter name holds no spaces or control characters",
            ));
        }
        if parameter.len() > 2048 {
            return Err(key_error(
                key,
                "an SSM parameter name is at most 2048 characters",
            ));
        }
        return Ok(Some((Secret::new(name, Source::Ssm(parameter)), None)));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let key = format!("{name}_file");
    let known = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.is_empty() {
                return Err(key_error(key, format!("{} is empty", path.display())));
            }
            if let Some(w) = loose_mode_warning(&path, &key) {
                warnings.push(w);
            }
            Some(SecretString::from(secret.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(key_error(
                key,
                format!("cannot read {}: {e}", path.display()),
            ))
        }
    };
    Ok(Some((Secret::new(name, Source::File(path)), known)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MINIMAL: &str = r#"
[rancher]
url = "https://rancher.example.com"
project_id = "1a5"
access_key = "AK"
secret_key = "s3cr3t-value"
"#;

    fn load(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        let overrides: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(Sources {
            path: file.path().to_path_buf(),
            path_explicit: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: &overrides,
        })
    }

    fn err(text: &str, env: &[(&str, &str)]) -> String {
        load(text, env, &[]).expect_err("should fail").to_string()
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let c = load(MINIMAL, &[], &[]).expect("valid");
        assert_eq!(c.agent.image, "rancher/agent:v1.2.11");
        assert_eq!(c.agent.register_timeout, Duration::from_secs(300));
        assert_eq!(c.lifecycle.imds_poll, Some(Duration::from_secs(5)));
        assert_eq!(c.lifecycle.on_failure, LifecycleResult::Continue);
        assert_eq!(c.lifecycle.on_sigterm, OnSigterm::Auto);
        assert!(c.lifecycle.handle_peers);
        assert_eq!(c.lifecycle.launch_hook, LaunchHook::FromGroup);
        assert!(c.agent.privileged);
        assert_eq!(c.state.dir, PathBuf::from("/var/lib/drover"));
        assert_eq!(c.rancher.api_version, ApiVersion::Auto);
        assert!(c.pager.pagerduty_routing_key.is_none());
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let text =
            format!("{MINIMAL}\n[agent]\nimage = \"from-file\"\nregister_timeout = \"1m\"\n");
        let c = load(&text, &[("DROVER_AGENT_IMAGE", "from-env")], &[]).expect("valid");
        assert_eq!(c.agent.image, "from-env");
        assert_eq!(c.agent.register_timeout, Duration::from_secs(60));
        let c = load(
            &text,
            &[("DROVER_AGENT_IMAGE", "from-env")],
            &["agent.image=from-flag"],
        )
        .expect("valid");
        assert_eq!(c.agent.image, "from-flag");
    }

    #[test]
    fn env_values_are_typed_by_key_not_guessed() {
        // An all-digit secret must stay a string; a bool key accepts true/false.
        let c = load(
            MINIMAL,
            &[
                ("DROVER_RANCHER_SECRET_KEY", "0123456789"),
                ("DROVER_LIFECYCLE_EVACUATE", "true"),
                ("DROVER_AGENT_LABELS", "role=crawling&env=prod"),
                ("DROVER_LIFECYCLE_IMDS_POLL", "0s"),
            ],
            &[],
        )
        .expect("valid");
        assert!(c.secret_key_is("0123456789"));
        assert!(c.lifecycle.evacuate);
        assert_eq!(c.lifecycle.imds_poll, None);
        assert_eq!(
            c.agent.labels.0.get("role").map(String::as_str),
            Some("crawling")
        );
        assert_eq!(
            c.agent.labels.0.get("env").map(String::as_str),
            Some("prod")
        );
    }

    #[test]
    fn the_launch_hook_is_the_groups_a_named_one_or_none() {
        let hook = |v: &str| {
            load(MINIMAL, &[("DROVER_LIFECYCLE_LAUNCH_HOOK_NAME", v)], &[])
                .expect("valid")
                .lifecycle
                .launch_hook
        };
        assert_eq!(hook(""), LaunchHook::FromGroup);
        assert_eq!(hook("none"), LaunchHook::Off);
        assert_eq!(hook("boot"), LaunchHook::Named("boot".into()));
    }

    #[test]
    fn the_reaper_is_on_every_five_minutes_ten_a_sweep_unless_told() {
        let c = load(MINIMAL, &[], &[]).expect("valid");
        assert_eq!(
            c.reaper,
            ReaperConfig {
                enabled: true,
                interval: Duration::from_secs(300),
                max_per_sweep: 10,
                dry_run: false,
            }
        );
        let c = load(
            &format!(
                "{MINIMAL}\n[reaper]\nenabled = false\ninterval = \"2m\"\nmax_per_sweep = 3\n"
            ),
            &[
                ("DROVER_REAPER_MAX_PER_SWEEP", "25"),
                ("DROVER_REAPER_DRY_RUN", "yes"),
            ],
            &["reaper.interval=90s"],
        )
        .expect("valid");
        assert_eq!(
            c.reaper,
            ReaperConfig {
                enabled: false,
                interval: Duration::from_secs(90),
                max_per_sweep: 25,
                dry_run: true,
            }
        );
    }

    #[test]
    fn bad_reaper_settings_are_named() {
        // (a line of the file, the environment, what the error says)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 8] = [
            ("[reaper]\nmax_per_sweep = 0", &[], "at least 1"),
            ("[reaper]\nmax_per_sweep = -2", &[], "reaper.max_per_sweep"),
            ("[reaper]\nmax_per_sweep = 5000", &[], "at most 1000"),
            (
                "[reaper]\nmax_per_sweep = \"ten\"",
                &[],
                "reaper.max_per_sweep",
            ),
            (
                "",
                &[("DROVER_REAPER_MAX_PER_SWEEP", "ten")],
                "whole number",
            ),
            ("[reaper]\ninterval = \"0s\"", &[], "longer than zero"),
            ("[reaper]\ninterval = \"200ms\"", &[], "at least 1s"),
            ("", &[("DROVER_REAPER_ENABLED", "perhaps")], "true or false"),
        ];
        for (extra, env, why) in cases {
            let e = err(&format!("{MINIMAL}\n{extra}\n"), env);
            assert!(
                e.contains("reaper.") && e.contains(why),
                "{extra} {env:?}: {e}"
            );
        }
        let e = err(MINIMAL, &[("DROVER_REAPER_INTERVAL", "often")]);
        assert!(
            e.contains("reaper.interval") && e.contains("DROVER_REAPER_INTERVAL"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}\n[reaper]\nintervall = \"1m\"\n"), &[]);
        assert!(
            e.ends_with("config key reaper.intervall: unknown key"),
            "{e}"
        );
    }

    #[test]
    fn labels_from_env_as_inline_table() {
        let c = load(
            MINIMAL,
            &[("DROVER_AGENT_LABELS", "{ role = \"web\" }")],
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.agent.labels.0.get("role").map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn missing_required_key_is_named() {
        let e = err(
            "[rancher]\nurl = \"https://r\"\naccess_key=\"a\"\nsecret_key=\"b\"\n",
            &[],
        );
        assert!(e.contains("rancher.project_id"), "{e}");
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(
            &format!("{MINIMAL}\n[lifecycle]\nevacuate = \"yes\"\n"),
            &[],
        );
        assert!(e.contains("lifecycle.evacuate"), "{e}");
        let e = err(MINIMAL, &[("DROVER_AGENT_PRIVILEGED", "maybe")]);
        assert!(
            e.contains("agent.privileged") && e.contains("DROVER_AGENT_PRIVILEGED"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        // Named once: the error used to say "agent.imagee.imagee" and "nosuch.nosuch".
        let e = err(&format!("{MINIMAL}\n[agent]\nimagee = \"x\"\n"), &[]);
        assert!(e.ends_with("config key agent.imagee: unknown key"), "{e}");
        let e = err(&format!("{MINIMAL}\n[nosuch]\nx = 1\n"), &[]);
        assert!(e.ends_with("config key nosuch: unknown key"), "{e}");
        let e = err(MINIMAL, &[("DROVER_LIFECYCLE_QUEUE", "x")]);
        assert!(
            e.contains("lifecycle.queue") && e.contains("DROVER_LIFECYCLE_QUEUE"),
            "{e}"
        );
        // Found by fuzzing (fuzz/ target config): a key holding a backtick was cut at it.
        let e = err(&format!("\"`ager\" = 1\n{MINIMAL}"), &[]);
        assert!(e.ends_with("config key `ager: unknown key"), "{e}");
        // Found by fuzzing (fuzz/ target config): an empty key was named as nothing at all.
        let e = err(&format!("\"\" = 1\n{MINIMAL}"), &[]);
        assert!(e.ends_with("config key \"\": unknown key"), "{e}");
        let e = err(&format!("{MINIMAL}\n[agent]\n'' = 1\n"), &[]);
        assert!(e.ends_with("config key agent.\"\": unknown key"), "{e}");
    }

    #[test]
    fn unrelated_drover_variables_are_ignored() {
        load(
            MINIMAL,
            &[("DROVER_CONFIG", "/x"), ("DROVER_TESTBED_FOO", "1")],
            &[],
        )
        .expect("valid");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = err(
            &format!("{MINIMAL}\n[agent]\nregister_timeout = \"5 parsecs\"\n"),
            &[],
        );
        assert!(e.contains("agent.register_timeout"), "{e}");
        let e = err(MINIMAL, &[("DROVER_LIFECYCLE_DRAIN_TIMEOUT", "soon")]);
        assert!(e.contains("lifecycle.drain_timeout"), "{e}");
    }

    /// Found writing the fuzz target's property (fuzz/ target config: every accepted
    /// duration can be added to "now"): the duration syntax takes `"300000000000y"`, and
    /// `register` adding it to the current instant panicked.
    #[test]
    fn durations_past_a_week_are_refused() {
        for (key, var) in [
            ("agent.register_timeout", "DROVER_AGENT_REGISTER_TIMEOUT"),
            ("lifecycle.drain_timeout", "DROVER_LIFECYCLE_DRAIN_TIMEOUT"),
            ("lifecycle.imds_poll", "DROVER_LIFECYCLE_IMDS_POLL"),
            ("rancher.request_timeout", "DROVER_RANCHER_REQUEST_TIMEOUT"),
            ("reaper.interval", "DROVER_REAPER_INTERVAL"),
        ] {
            for huge in ["300000000000y", "8days"] {
                let e = err(MINIMAL, &[(var, huge)]);
                assert!(e.contains(key) && e.contains("at most 7 days"), "{e}");
            }
            load(MINIMAL, &[(var, "7days")], &[]).expect("a week is fine");
        }
    }

    #[test]
    fn labels_that_cattle_host_labels_cannot_carry_are_refused() {
        for labels in [
            "{ role = \"a&b\" }",
            "{ \"ro=le\" = \"x\" }",
            "{ role = \"\" }",
            "{ \"\" = \"x\" }",
            "{ \"aws.instance_id\" = \"i-forged\" }",
        ] {
            let e = err(&format!("{MINIMAL}\n[agent]\nlabels = {labels}\n"), &[]);
            assert!(e.contains("agent.labels"), "{labels}: {e}");
        }
    }

    #[test]
    fn agent_image_may_be_pinned_by_digest_and_a_bad_digest_is_a_config_error() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for image in [
            format!("rancher/agent@{digest}"),
            format!("rancher/agent:v1.2.11@{digest}"),
            format!("reg.local:5000/rancher/agent@{digest}"),
        ] {
            let c = load(
                &format!("{MINIMAL}\n[agent]\nimage = \"{image}\"\n"),
                &[],
                &[],
            )
            .expect(&image);
            assert_eq!(c.agent.image, image);
        }
        let e = err(
            &format!("{MINIMAL}\n[agent]\nimage = \"rancher/agent@sha256:abc\"\n"),
            &[],
        );
        assert!(e.contains("agent.image") && e.contains("64 hex"), "{e}");
    }

    #[test]
    fn plain_http_off_the_machine_and_handle_peers_off_with_a_queue_are_warned_about() {
        let c = load(MINIMAL, &[], &[]).expect("valid");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let webhook = "http://hooks.example.net/services/T0/B0/SECRETPATH";
        let text = format!(
            "{}\n[pager]\npagerduty_routing_key = \"{}\"\npagerduty_url = \"http://events.example.com/v2/enqueue\"\nwebhook_url = \"{webhook}\"\n[lifecycle]\nqueue_url = \"https://sqs.us-east-1.amazonaws.com/1/q\"\nhandle_peers = false\n",
            MINIMAL.replace("https://rancher.example.com", "http://rancher.example.com"),
            "0123456789abcdef0123456789abcdef",
        );
        let c = load(&text, &[], &[]).expect("warnings are not errors");
        let find = |key: &str| {
            c.warnings
                .iter()
                .find(|w| w.starts_with(key))
                .unwrap_or_else(|| panic!("no warning about {key}: {:?}", c.warnings))
                .clone()
        };
        assert!(find("rancher.url").contains("rancher.example.com"));
        assert!(find("pager.pagerduty_url").contains("routing key"));
        let hook = find("pager.webhook_url");
        assert!(hook.contains("hooks.example.net"), "{hook}");
        assert!(
            !hook.contains("SECRETPATH"),
            "the webhook's path is its secret: {hook}"
        );
        let peers = find("lifecycle.handle_peers");
        assert!(
            peers.contains("shared") && peers.contains("dead-letter"),
            "{peers}"
        );

        // Loopback never leaves the machine; without a routing key nothing goes to PagerDuty.
        for url in [
            "http://127.0.0.1:8080",
            "http://[::1]:80",
            "http://localhost:8080",
        ] {
            let text = format!(
                "{}\n[pager]\npagerduty_url = \"http://events.example.com/v2/enqueue\"\n",
                MINIMAL.replace("https://rancher.example.com", url)
            );
            let c = load(&text, &[], &[]).expect("valid");
            assert!(c.warnings.is_empty(), "{url}: {:?}", c.warnings);
        }
        // A queue with handle_peers on (the default) is the shared queue as meant.
        let text = format!("{MINIMAL}\n[lifecycle]\nqueue_url = \"https://q/1/q\"\n");
        assert!(load(&text, &[], &[]).expect("valid").warnings.is_empty());
    }

    #[test]
    fn secret_file_is_read_and_unreadable_one_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file-secret\n").expect("write");
        let text = MINIMAL.replace(
            "secret_key = \"s3cr3t-value\"",
            &format!("secret_key_file = {:?}", path.display().to_string()),
        );
        let c = load(&text, &[], &[]).expect("valid");
        assert!(c.secret_key_is("from-file-secret"));
        // The temp file is created 0644 by default: a warning, not an error.
        assert!(
            c.warnings.iter().any(|w| w.contains("chmod 600")),
            "{:?}",
            c.warnings
        );

        // A directory is there and cannot be read as a file.
        let unreadable = MINIMAL.replace(
            "secret_key = \"s3cr3t-value\"",
            &format!("secret_key_file = {:?}", dir.path().display().to_string()),
        );
        let e = err(&unreadable, &[]);
        assert!(
            e.contains("rancher.secret_key_file") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").expect("write");
        let e = err(
            &MINIMAL.replace(
                "secret_key = \"s3cr3t-value\"",
                &format!("secret_key_file = {:?}", empty.display().to_string()),
            ),
            &[],
        );
        assert!(
            e.contains("rancher.secret_key_file") && e.contains("is empty"),
            "{e}"
        );
    }

    /// cloud-init may write the file a moment after drover starts: it is waited for when
    /// the secret is read, not refused at load.
    #[test]
    fn a_secret_file_not_there_yet_is_accepted() {
        let c = load(
            &MINIMAL.replace(
                "secret_key = \"s3cr3t-value\"",
                "secret_key_file = \"/nonexistent/drover-secret\"",
            ),
            &[(
                "DROVER_PAGER_PAGERDUTY_ROUTING_KEY_FILE",
                "/nonexistent/pd.key",
            )],
            &[],
        )
        .expect("valid");
        assert!(
            matches!(c.rancher.secret_key.source(), Source::File(p) if p.ends_with("drover-secret"))
        );
        assert_eq!(c.rancher.secret_key.key(), "rancher.secret_key_file");
        let routing = c.pager.pagerduty_routing_key.expect("routing key set");
        assert_eq!(routing.key(), "pager.pagerduty_routing_key_file");
    }

    #[test]
    fn secrets_from_ssm_name_a_parameter() {
        let c = load(
            &MINIMAL.replace(
                "secret_key = \"s3cr3t-value\"",
                "secret_key_ssm = \"/drover/rancher-secret\"",
            ),
            &[(
                "DROVER_PAGER_PAGERDUTY_ROUTING_KEY_SSM",
                "/aws/reference/secretsmanager/drover/pd",
            )],
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.rancher.secret_key.to_string(),
            "rancher.secret_key_ssm /drover/rancher-secret"
        );
        let routing = c.pager.pagerduty_routing_key.expect("routing key set");
        assert_eq!(
            routing.describe(),
            "SSM parameter /aws/reference/secretsmanager/drover/pd"
        );
        let e = err(
            &MINIMAL.replace(
                "secret_key = \"s3cr3t-value\"",
                "secret_key_ssm = \"/drover/a b\"",
            ),
            &[],
        );
        assert!(e.contains("rancher.secret_key_ssm"), "{e}");
    }

    #[test]
    fn one_source_per_secret() {
        let both = err(
            &format!("{MINIMAL}secret_key_ssm = \"/drover/rancher-secret\"\n"),
            &[],
        );
        assert!(
            both.contains("rancher.secret_key and rancher.secret_key_ssm are both set")
                && both.contains("set only one of rancher.secret_key, rancher.secret_key_file, rancher.secret_key_ssm"),
            "{both}"
        );
        assert!(!both.contains("s3cr3t-value"), "{both}");
        let all = err(
            MINIMAL,
            &[
                ("DROVER_RANCHER_SECRET_KEY_FILE", "/nonexistent/s"),
                ("DROVER_RANCHER_SECRET_KEY_SSM", "/drover/s"),
            ],
        );
        assert!(all.contains("are all set"), "{all}");
        let none = err(&MINIMAL.replace("secret_key = \"s3cr3t-value\"", ""), &[]);
        assert!(
            none.contains("rancher.secret_key") && none.contains("rancher.secret_key_ssm"),
            "{none}"
        );
        let pager = err(
            MINIMAL,
            &[
                ("DROVER_PAGER_PAGERDUTY_ROUTING_KEY_FILE", "/nonexistent/pd"),
                ("DROVER_PAGER_PAGERDUTY_ROUTING_KEY_SSM", "/drover/pd"),
            ],
        );
        assert!(
            pager.contains(
                "pager.pagerduty_routing_key_file and pager.pagerduty_routing_key_ssm are both set"
            ),
            "{pager}"
        );
        // An empty value is no value: how a flag turns off what the file sets.
        let c = load(
            MINIMAL,
            &[],
            &["rancher.secret_key=", "rancher.secret_key_ssm=/drover/s"],
        )
        .expect("valid");
        assert_eq!(c.rancher.secret_key.key(), "rancher.secret_key_ssm");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = load(MINIMAL, &[], &[]).expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("s3cr3t-value"), "{dump}");
    }

    #[test]
    fn secret_values_never_show_in_errors() {
        // A wrong type for the secret must not echo it.
        let e = err(
            &MINIMAL.replace("secret_key = \"s3cr3t-value\"", "secret_key = 12345"),
            &[],
        );
        assert!(e.contains("rancher.secret_key"), "{e}");
        assert!(!e.contains("12345"), "{e}");
    }

    #[test]
    fn bad_toml_names_the_file_and_line() {
        let e = err("[rancher]\nurl = \n", &[]);
        assert!(e.contains("not valid TOML") && e.contains("line"), "{e}");
        // The line after a line break was counted as the one before it.
        let e = err("[rancher]\nurl = \"x\"\n= 3\n", &[]);
        assert!(e.contains("line 3:"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_default_path_may_be_absent() {
        let e = Config::load(Sources {
            path: PathBuf::from("/nonexistent/drover.toml"),
            path_explicit: true,
            env: vec![],
            overrides: &[],
        })
        .expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/drover.toml"), "{e}");
        defaults_for_tests();
    }

    #[test]
    fn metrics_are_off_unless_a_textfile_is_named() {
        let c = load(MINIMAL, &[], &[]).expect("minimal");
        assert_eq!(c.metrics.textfile, None);
        assert_eq!(c.pager.webhook_events, WebhookEvents::Failures);
        let c = load(
            &format!("{MINIMAL}\n[metrics]\ntextfile = \"\"\n"),
            &[],
            &[],
        )
        .expect("empty is off");
        assert_eq!(c.metrics.textfile, None);
        // The directory need not exist yet: node_exporter may be installed later.
        let c = load(
            MINIMAL,
            &[(
                "DROVER_METRICS_TEXTFILE",
                "/nonexistent/collector/drover.prom",
            )],
            &["pager.webhook_events=all"],
        )
        .expect("textfile from the environment");
        assert_eq!(
            c.metrics.textfile.as_deref(),
            Some(Path::new("/nonexistent/collector/drover.prom"))
        );
        assert_eq!(c.pager.webhook_events, WebhookEvents::All);
        assert!(
            c.warnings.iter().any(|w| w.contains("pager.webhook_url")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn enumerations_and_urls_are_checked() {
        let cases = [
            (
                "[lifecycle]\non_failure = \"retry\"",
                "lifecycle.on_failure",
            ),
            (
                "[lifecycle]\non_sigterm = \"maybe\"",
                "lifecycle.on_sigterm",
            ),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[agent]\nagent_ip = \"127.0.0.1\"", "agent.agent_ip"),
            ("[agent]\nagent_ip = \"eth0\"", "agent.agent_ip"),
            (
                "[pager]\npagerduty_routing_key = \"short\"",
                "pager.pagerduty_routing_key",
            ),
            ("[pager]\nwebhook_url = \"not a url\"", "pager.webhook_url"),
            ("[lifecycle]\nimds_poll = \"10ms\"", "lifecycle.imds_poll"),
            ("[log]\nlevel = \"loud\"", "log.level"),
            ("[pager]\nwebhook_events = \"some\"", "pager.webhook_events"),
            ("[metrics]\ntextfile = \"drover.prom\"", "metrics.textfile"),
            (
                "[metrics]\ntextfile = \"/var/lib/node_exporter/drover.txt\"",
                "metrics.textfile",
            ),
        ];
        for (extra, key) in cases {
            let e = err(&format!("{MINIMAL}\n{extra}\n"), &[]);
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = err(
            &MINIMAL.replace("https://rancher.example.com", "ftp://x"),
            &[],
        );
        assert!(e.contains("rancher.url"), "{e}");
    }

    /// Found by fuzzing (fuzz/ target config): a `--set` argument, a TOML key or a
    /// variable's name holding a line break was quoted as it was, and the one-line error
    /// became two lines.
    #[test]
    fn errors_stay_one_line_whatever_they_quote() {
        let errors = [
            load(MINIMAL, &[], &["\rYCLE_EVACUATE=yes"]).expect_err("bad flag"),
            load(
                &format!("{MINIMAL}\n[agent]\n\"image\\nFAKE: line\" = \"x\"\n"),
                &[],
                &[],
            )
            .expect_err("unknown key"),
            load(
                &format!("{MINIMAL}\n[agent]\nlabels = {{ \"a\\nb\" = \"x&y\" }}\n"),
                &[],
                &[],
            )
            .expect_err("bad label"),
            load(MINIMAL, &[("DROVER_AGENT_NOSUCH\n", "x")], &[]).expect_err("unknown key"),
        ];
        for e in errors {
            let line = e.to_string();
            assert!(!line.chars().any(char::is_control), "{line:?}");
            assert!(line.contains("\\n") || line.contains("\\r"), "{line}");
        }
    }

    #[test]
    fn set_flag_needs_section_key_value() {
        let e = load(MINIMAL, &[], &["image"])
            .expect_err("bad flag")
            .to_string();
        assert!(e.contains("--set"), "{e}");
        // Found by fuzzing (fuzz/ target config): `--set .=x` was refused as "config key .",
        // which names no key.
        for flag in [".=x", "agent.=x", ".image=x"] {
            let e = load(MINIMAL, &[], &[flag])
                .expect_err("bad flag")
                .to_string();
            assert!(e.contains("expected SECTION.KEY=VALUE"), "{flag}: {e}");
        }
        // A secret given with the wrong key shape is not echoed back.
        let e = load(MINIMAL, &[], &["rancher_secret_key=TOPSECRETVALUE"])
            .expect_err("bad flag")
            .to_string();
        assert!(e.contains("rancher_secret_key"), "{e}");
        assert!(!e.contains("TOPSECRETVALUE"), "{e}");
    }
}

/// The defaults, with only the four required keys set from the environment and no file at
/// the (absent) default path.
#[cfg(test)]
pub(crate) fn defaults_for_tests() -> Config {
    let env = [
        ("DROVER_RANCHER_URL", "http://r"),
        ("DROVER_RANCHER_PROJECT_ID", "1a5"),
        ("DROVER_RANCHER_ACCESS_KEY", "a"),
        ("DROVER_RANCHER_SECRET_KEY", "b"),
    ];
    Config::load(Sources {
        path: PathBuf::from("/nonexistent/drover.toml"),
        path_explicit: false,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        overrides: &[],
    })
    .expect("env only")
}

#[cfg(test)]
mod documented {
    use super::KEYS;

    /// Every key is in the man page and in the package's default config, so that an
    /// operator never meets a key only in the source.
    #[test]
    fn every_key_is_in_the_man_page_and_the_packaged_config() {
        let manual = include_str!("../packaging/assets/src/manual.roff");
        let template = include_str!("../packaging/drover.toml");
        for (section, key, _) in KEYS {
            assert!(
                manual.contains(&format!(".SS \"[{section}]\"")),
                "man page lacks [{section}]"
            );
            assert!(
                manual
                    .lines()
                    .any(|l| l.starts_with(".B") && l.split([' ', ',', '"']).any(|w| w == *key)),
                "man page lacks {section}.{key}"
            );
            // The template shows the *_file form of the two secrets only.
            if *key != "secret_key" && *key != "pagerduty_routing_key" {
                assert!(
                    template.contains(&format!("# {key} =")),
                    "packaging/drover.toml lacks {section}.{key}"
                );
            }
        }
    }
}
