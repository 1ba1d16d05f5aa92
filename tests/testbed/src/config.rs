//! A typed builder for drover's config file: the keys the tests, the bench, the fault
//! campaign and the demo set, rendered as TOML (every string quoted and escaped) and
//! written 0600, as drover expects of a file that may hold a secret.
//!
//! A key left `None` is left out, so drover's default applies. A test that needs a value
//! the types cannot express (a wrong type, an unknown key) adds it with
//! [`DroverConfig::raw`]; the names of the keys are in `shared/interface.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// drover's config, section by section.
#[derive(Debug, Clone, Default)]
pub struct DroverConfig {
    pub rancher: RancherSection,
    pub agent: AgentSection,
    pub lifecycle: LifecycleSection,
    pub reaper: ReaperSection,
    pub metrics: MetricsSection,
    pub pager: PagerSection,
    pub state: StateSection,
    pub log: LogSection,
    /// (section, line) as given to [`raw`](Self::raw).
    raw: Vec<(String, String)>,
}

/// A secret, inline in the config, in a file the config names, or in an SSM parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// `key = "value"`.
    Inline(String),
    /// `key_file = "path"`.
    File(PathBuf),
    /// `key_ssm = "parameter name"`.
    Ssm(String),
}

#[derive(Debug, Clone, Default)]
pub struct RancherSection {
    pub url: Option<String>,
    pub project_id: Option<String>,
    pub access_key: Option<String>,
    /// `secret_key`, `secret_key_file` or `secret_key_ssm`.
    pub secret_key: Option<Secret>,
    /// `v1`, `v2-beta` or `auto`.
    pub api_version: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct AgentSection {
    pub image: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub agent_ip: Option<String>,
    pub privileged: Option<bool>,
    pub register_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct LifecycleSection {
    pub queue_url: Option<String>,
    pub hook_name: Option<String>,
    /// Zero turns polling off (`"0s"`).
    pub imds_poll: Option<Duration>,
    pub drain_timeout: Option<Duration>,
    pub on_failure: Option<OnFailure>,
    pub evacuate: Option<bool>,
    pub on_sigterm: Option<OnSigterm>,
    pub handle_peers: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct ReaperSection {
    pub enabled: Option<bool>,
    pub interval: Option<Duration>,
    pub max_per_sweep: Option<u32>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct PagerSection {
    /// `pagerduty_routing_key`, `pagerduty_routing_key_file` or `pagerduty_routing_key_ssm`.
    pub routing_key: Option<Secret>,
    pub pagerduty_url: Option<String>,
    pub webhook_url: Option<String>,
    /// `"failures"` or `"all"` (any text, to test refusals).
    pub webhook_events: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MetricsSection {
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct StateSection {
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct LogSection {
    pub format: Option<LogFormat>,
    /// `error`, `warn`, `info`, `debug`, `trace` or a filter.
    pub level: Option<String>,
}

/// `lifecycle.on_failure`: the result a failed take-out answers the hook with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Continue,
    Abandon,
}

/// `lifecycle.on_sigterm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSigterm {
    Auto,
    Deregister,
    Exit,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl OnFailure {
    fn as_str(self) -> &'static str {
        match self {
            OnFailure::Continue => "continue",
            OnFailure::Abandon => "abandon",
        }
    }
}

impl OnSigterm {
    fn as_str(self) -> &'static str {
        match self {
            OnSigterm::Auto => "auto",
            OnSigterm::Deregister => "deregister",
            OnSigterm::Exit => "exit",
        }
    }
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A TOML basic string: quoted, with `"`, `\` and control characters escaped.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key as TOML reads it: bare when it can be, quoted otherwise.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        quote(name)
    }
}

/// A duration as drover reads it: whole seconds as `"30s"`, else milliseconds (`"300ms"`),
/// else microseconds.
fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("\"{}s\"", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("\"{}ms\"", d.as_millis())
    } else {
        format!("\"{}us\"", d.as_micros())
    }
}

fn path(p: &Path) -> String {
    quote(&p.display().to_string())
}

/// The lines of one section, in the order written.
#[derive(Default)]
struct Lines(Vec<String>);

impl Lines {
    fn put(&mut self, name: &str, value: Option<String>) {
        if let Some(value) = value {
            self.0.push(format!("{} = {value}", key(name)));
        }
    }

    fn text(&mut self, name: &str, value: &Option<String>) {
        self.put(name, value.as_deref().map(quote));
    }

    fn secret(&mut self, name: &str, value: &Option<Secret>) {
        match value {
            Some(Secret::Inline(v)) => self.put(name, Some(quote(v))),
            Some(Secret::File(p)) => self.put(&format!("{name}_file"), Some(path(p))),
            Some(Secret::Ssm(n)) => self.put(&format!("{name}_ssm"), Some(quote(n))),
            None => {}
        }
    }
}

impl DroverConfig {
    /// Adds `line` (TOML, as written) to `section` after its typed keys: for a value the
    /// types cannot express, such as a wrong type or an unknown key. The section `""` is
    /// the top level, before every table.
    pub fn raw(&mut self, section: &str, line: &str) -> &mut Self {
        self.raw.push((section.to_string(), line.to_string()));
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let r = &self.rancher;
        let mut rancher = Lines::default();
        rancher.text("url", &r.url);
        rancher.text("project_id", &r.project_id);
        rancher.text("access_key", &r.access_key);
        rancher.secret("secret_key", &r.secret_key);
        rancher.text("api_version", &r.api_version);
        rancher.put("ca_file", r.ca_file.as_deref().map(path));

        let a = &self.agent;
        let mut agent = Lines::default();
        agent.text("image", &a.image);
        agent.put(
            "labels",
            a.labels.as_ref().map(|labels| {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{} = {}", key(k), quote(v)))
                    .collect();
                if pairs.is_empty() {
                    "{}".to_string()
                } else {
                    format!("{{ {} }}", pairs.join(", "))
                }
            }),
        );
        agent.text("agent_ip", &a.agent_ip);
        agent.put("privileged", a.privileged.map(|b| b.to_string()));
        agent.put("register_timeout", a.register_timeout.map(duration));

        let l = &self.lifecycle;
        let mut lifecycle = Lines::default();
        lifecycle.text("queue_url", &l.queue_url);
        lifecycle.text("hook_name", &l.hook_name);
        lifecycle.put("imds_poll", l.imds_poll.map(duration));
        lifecycle.put("drain_timeout", l.drain_timeout.map(duration));
        lifecycle.put("on_failure", l.on_failure.map(|v| quote(v.as_str())));
        lifecycle.put("evacuate", l.evacuate.map(|b| b.to_string()));
        lifecycle.put("on_sigterm", l.on_sigterm.map(|v| quote(v.as_str())));
        lifecycle.put("handle_peers", l.handle_peers.map(|b| b.to_string()));

        let r = &self.reaper;
        let mut reaper = Lines::default();
        reaper.put("enabled", r.enabled.map(|b| b.to_string()));
        reaper.put("interval", r.interval.map(duration));
        reaper.put("max_per_sweep", r.max_per_sweep.map(|n| n.to_string()));
        reaper.put("dry_run", r.dry_run.map(|b| b.to_string()));

        let p = &self.pager;
        let mut pager = Lines::default();
        pager.secret("pagerduty_routing_key", &p.routing_key);
        pager.text("pagerduty_url", &p.pagerduty_url);
        pager.text("webhook_url", &p.webhook_url);
        pager.text("webhook_events", &p.webhook_events);

        let mut metrics = Lines::default();
        metrics.put("textfile", self.metrics.textfile.as_deref().map(path));

        let mut state = Lines::default();
        state.put("dir", self.state.dir.as_deref().map(path));

        let mut log = Lines::default();
        log.put("format", self.log.format.map(|f| quote(f.as_str())));
        log.text("level", &self.log.level);

        let mut sections: Vec<(String, Lines)> = vec![
            (String::new(), Lines::default()),
            ("rancher".into(), rancher),
            ("agent".into(), agent),
            ("lifecycle".into(), lifecycle),
            ("reaper".into(), reaper),
            ("metrics".into(), metrics),
            ("pager".into(), pager),
            ("state".into(), state),
            ("log".into(), log),
        ];
        for (section, line) in &self.raw {
            match sections.iter_mut().find(|(name, _)| name == section) {
                Some((_, lines)) => lines.0.push(line.clone()),
                None => sections.push((section.clone(), Lines(vec![line.clone()]))),
            }
        }
        let mut out = String::new();
        for (name, lines) in sections {
            if lines.0.is_empty() {
                continue;
            }
            if !name.is_empty() {
                if !out.is_empty() {
                    out.push('\n');
                }
                let _ = writeln!(out, "[{}]", key(&name));
            }
            for line in lines.0 {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Writes the file at `path`, mode 0600 from its creation on.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, self.render().as_bytes())
    }
}

/// Writes `bytes` to `path`, which is 0600 from its creation on (and after, when it
/// existed with another mode).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_keys_quoted_and_raw_lines_in_their_sections() {
        let mut c = DroverConfig::default();
        c.rancher.url = Some("http://127.0.0.1:1".into());
        c.rancher.secret_key = Some(Secret::File("/tmp/a \"b\"/s".into()));
        c.agent.labels = Some(BTreeMap::from([
            ("role".to_string(), "a&b".to_string()),
            ("a=b".to_string(), "c\\d".to_string()),
        ]));
        c.agent.privileged = Some(false);
        c.lifecycle.imds_poll = Some(Duration::ZERO);
        c.lifecycle.drain_timeout = Some(Duration::from_millis(1500));
        c.lifecycle.on_sigterm = Some(OnSigterm::Exit);
        c.pager.routing_key = Some(Secret::Ssm("/drover/p\nd".into()));
        c.log.format = Some(LogFormat::Json);
        c.raw("agent", "privileged_too = \"sometimes\"");
        c.reaper.interval = Some(Duration::from_millis(2500));
        c.reaper.max_per_sweep = Some(3);
        c.raw("reaper", "enabled = false");
        assert_eq!(
            c.render(),
            r#"[rancher]
url = "http://127.0.0.1:1"
secret_key_file = "/tmp/a \"b\"/s"

[agent]
labels = { "a=b" = "c\\d", role = "a&b" }
privileged = false
privileged_too = "sometimes"

[lifecycle]
imds_poll = "0s"
drain_timeout = "1500ms"
on_sigterm = "exit"

[reaper]
interval = "2500ms"
max_per_sweep = 3
enabled = false

[pager]
pagerduty_routing_key_ssm = "/drover/p\nd"

[log]
format = "json"
"#
        );
    }

    #[test]
    fn written_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("drover.toml");
        std::fs::write(&file, "old").expect("old file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut c = DroverConfig::default();
        c.state.dir = Some(dir.path().join("state"));
        c.write(&file).expect("write");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(&file)
            .expect("read")
            .starts_with("[state]\ndir = "));
    }
}
