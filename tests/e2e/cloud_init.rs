//! The cloud-init userdata examples under `cloud-init/`: valid cloud-config for Debian's own
//! `cloud-init schema`, a drover config that the built binary accepts and whose secrets it
//! reads from the SSM parameters the placeholders name (moto's SSM here), no secret in the
//! userdata, no fetch in `bootcmd`, and only the Terraform placeholders that
//! `packaging/aws/terraform` fills.
//!
//! YAML is read through PyYAML (the test bed's venv, or the system python3): no YAML crate
//! is a dependency, and PyYAML is what cloud-init itself parses userdata with.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testbed::launch::{drover_bin, Endpoints, Launcher};
use testbed::moto::MotoServer;

/// Every example, by file name under `cloud-init/`.
const EXAMPLES: [&str; 4] = [
    "plain-host.yaml",
    "asg-sqs.yaml",
    "asg-imds.yaml",
    "asg-warm-pool.yaml",
];

/// The userdata `packaging/aws/terraform` renders in its `queue` mode; it uses every placeholder.
const TERRAFORM_EXAMPLE: &str = "asg-sqs.yaml";

/// The Terraform placeholders the examples may use, each with a sample value that keeps
/// every address on the loopback network (port 9, discard: nothing answers).
const PLACEHOLDERS: [(&str, &str); 8] = [
    ("rancher_url", "http://127.0.0.1:9"),
    ("rancher_project_id", "1a5"),
    ("rancher_access_key", "SAMPLEACCESSKEY"),
    (
        "rancher_secret_key_parameter",
        "/drover/prod/rancher-secret-key",
    ),
    (
        "pagerduty_key_parameter",
        "/drover/prod/pagerduty-routing-key",
    ),
    (
        "lifecycle_queue_url",
        "http://127.0.0.1:9/000000000000/drover-lifecycle",
    ),
    ("role", "crawling"),
    ("env", "prod"),
];

const DROVER_TOML: &str = "/etc/drover/drover.toml";
const CLOUD_INIT: &str = "/usr/bin/cloud-init";
/// How long one `drover check` may take before the test kills it and fails.
const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// Sample secrets, distinctive so that a leak into drover's output is easy to spot.
const SAMPLE_SECRET_KEY: &str = "sample-rancher-secret-7f3a9c";
const SAMPLE_ROUTING_KEY: &str = "SAMPLEroutingKEY0123456789abcdef";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_path(name: &str) -> PathBuf {
    repo().join("cloud-init").join(name)
}

fn example_text(name: &str) -> String {
    let path = example_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The names of every `${...}` in `text`, in order; `None` for one that is not closed.
fn interpolations(text: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        match rest.find('}') {
            Some(end) => {
                out.push(Some(rest[..end].to_string()));
                rest = &rest[end + 1..];
            }
            None => {
                out.push(None);
                break;
            }
        }
    }
    out
}

/// The example with every placeholder replaced by its sample value.
fn substituted(text: &str) -> String {
    let mut out = text.to_string();
    for (name, value) in PLACEHOLDERS {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !out.contains("${"),
        "a placeholder the test does not know is left:\n{out}"
    );
    out
}

/// A scratch dir holding the substituted copy of an example.
fn substituted_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, substituted(&example_text(name))).expect("write substituted copy");
    (dir, path)
}

/// The YAML document at `path` as JSON, through PyYAML's `safe_load`.
fn yaml_as_json(path: &Path) -> Value {
    const SCRIPT: &str = "import json, sys, yaml\n\
        with open(sys.argv[1]) as f:\n    doc = yaml.safe_load(f)\n\
        print(json.dumps(doc, default=str))";
    let venv = repo().join(".testbed/venv/bin/python");
    let mut tried = Vec::new();
    for python in [venv.as_path(), Path::new("python3")] {
        let out = match Command::new(python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(path)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                tried.push(format!("{}: {e}", python.display()));
                continue;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("PyYAML's output is JSON");
        }
        if stderr.contains("No module named") {
            tried.push(format!("{}: no PyYAML", python.display()));
            continue;
        }
        // PyYAML ran and refused the document: that is the finding.
        panic!("{} is not valid YAML:\n{stderr}", path.display());
    }
    panic!(
        "cannot parse YAML: no python with PyYAML ({}). Run scripts/testbed-setup.sh, which \
         creates .testbed/venv (moto brings PyYAML), or install python3-yaml.",
        tried.join("; ")
    );
}

/// The `write_files` entry for drover's config.
fn drover_toml_entry<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let files = doc["write_files"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no write_files list"));
    let mut entries = files.iter().filter(|f| f["path"] == DROVER_TOML);
    let entry = entries
        .next()
        .unwrap_or_else(|| panic!("{name}: no write_files entry for {DROVER_TOML}"));
    assert!(
        entries.next().is_none(),
        "{name}: {DROVER_TOML} written twice"
    );
    entry
}

/// The drover config an example writes, as text (placeholders as they are in `doc`).
fn drover_toml_text(doc: &Value, name: &str) -> String {
    let entry = drover_toml_entry(doc, name);
    assert!(
        entry.get("encoding").is_none(),
        "{name}: keep the config plain text, not encoded"
    );
    entry["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: the {DROVER_TOML} entry has no text content"))
        .to_string()
}

fn parse_toml(text: &str, name: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("{name}: the config is not TOML: {e}\n{text}"))
}

/// A string at `section.key` of a TOML table.
fn toml_str<'a>(table: &'a toml::Table, section: &str, key: &str) -> Option<&'a str> {
    table.get(section)?.as_table()?.get(key)?.as_str()
}

/// Every command of `bootcmd` as words (a string entry is split on whitespace: enough for
/// the examples' simple lines).
fn bootcmd_words(doc: &Value, name: &str) -> Vec<Vec<String>> {
    let Some(list) = doc.get("bootcmd") else {
        return Vec::new();
    };
    list.as_array()
        .unwrap_or_else(|| panic!("{name}: bootcmd is not a list"))
        .iter()
        .map(|entry| match entry {
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Array(words) => words
                .iter()
                .map(|w| match w {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            other => panic!("{name}: unexpected bootcmd entry {other}"),
        })
        .collect()
}

/// Runs `cloud-init schema` on a file; panics with its output when it is refused.
fn assert_cloud_init_accepts(path: &Path) {
    assert!(
        Path::new(CLOUD_INIT).exists(),
        "{CLOUD_INIT} is missing: run scripts/testbed-setup.sh (as root), which installs \
         Debian's cloud-init package"
    );
    let out = Command::new(CLOUD_INIT)
        .args(["schema", "--config-file"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("cloud-init runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cloud-init schema refused {} ({}):\n{text}",
        path.display(),
        out.status
    );
    // 22.x says "Valid cloud-config: F", later releases "Valid schema F".
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("Valid")),
        "cloud-init schema did not say {} is valid:\n{text}",
        path.display()
    );
}

/// What one `drover check` printed.
struct CheckRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CheckRun {
    /// The mark (`ok`, `FAIL`, `skip`, `warn`) and detail of the line for check `name`.
    fn line(&self, name: &str) -> Option<(&str, &str)> {
        self.stdout.lines().find_map(|l| {
            let (mark, rest) = l.split_once(char::is_whitespace)?;
            let rest = rest.trim_start();
            let (check, detail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            (check == name).then_some((mark, detail.trim()))
        })
    }
}

/// The sample value of placeholder `name`.
fn sample(name: &str) -> &'static str {
    PLACEHOLDERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no placeholder {name}"))
}

/// moto's SSM with the two sample secrets in the parameters the placeholders name.
async fn parameter_store() -> MotoServer {
    let moto = MotoServer::start()
        .await
        .expect("moto_server (run scripts/testbed-setup.sh)");
    for (placeholder, value) in [
        ("rancher_secret_key_parameter", SAMPLE_SECRET_KEY),
        ("pagerduty_key_parameter", SAMPLE_ROUTING_KEY),
    ] {
        // As an operator puts it from a file: with its line break.
        moto.put_secure_parameter(sample(placeholder), &format!("{value}\n"))
            .await;
    }
    moto
}

/// Runs the built drover's `check` on `config_text` with nothing reachable but SSM (moto,
/// at `ssm`): every other endpoint on 127.0.0.1 port 9, a Docker socket that does not
/// exist, a clean environment.
async fn drover_check(config_text: String, ssm: String) -> CheckRun {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("drover.toml");
    let state = dir.path().join("state");
    std::fs::write(&config, config_text).expect("write");
    set_mode(&config, 0o600);
    let set = |key: &str, path: &Path| format!("{key}={}", path.display());
    let run = Launcher::new(&drover_bin(), dir.path(), "check")
        .endpoints(&Endpoints {
            ssm: Some(ssm),
            ..Endpoints::nowhere()
        })
        .env("AWS_CONFIG_FILE", dir.path().join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-aws-credentials"),
        )
        .arg("--config")
        .arg(&config)
        .arg("--set")
        .arg(set("state.dir", &state))
        .arg("check")
        .run(CHECK_LIMIT)
        .await
        .expect("drover check finishes");
    CheckRun {
        code: run.code,
        stdout: run.stdout,
        stderr: run.stderr,
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn every_example_is_valid_cloud_config_as_written_and_filled_in() {
    for name in EXAMPLES {
        let text = example_text(name);
        assert_eq!(
            text.lines().next(),
            Some("#cloud-config"),
            "{name}: cloud-init reads userdata as cloud-config only with this first line"
        );
        assert_cloud_init_accepts(&example_path(name));
        let (_dir, filled) = substituted_copy(name);
        assert_cloud_init_accepts(&filled);
    }
}

#[test]
fn every_example_writes_drover_toml_0600_at_the_init_stage() {
    for name in EXAMPLES {
        let doc = yaml_as_json(&example_path(name));
        let entry = drover_toml_entry(&doc, name);
        // Quoted: an unquoted 0600 is YAML 1.1 octal, 600 a decimal that means mode 1130.
        assert_eq!(entry["permissions"], "0600", "{name}: {entry}");
        assert_eq!(entry["owner"], "root:root", "{name}: {entry}");
        // defer moves the file to cloud-final.service, after drover has started.
        assert!(
            entry.get("defer").is_none_or(|d| d == false),
            "{name}: {DROVER_TOML} must not be deferred: {entry}"
        );
        let toml_text = drover_toml_text(&doc, name);
        let table = parse_toml(&toml_text, name);
        assert_eq!(
            toml_str(&table, "rancher", "secret_key_ssm"),
            Some("${rancher_secret_key_parameter}"),
            "{name}"
        );
        assert_eq!(
            toml_str(&table, "pager", "pagerduty_routing_key_ssm"),
            Some("${pagerduty_key_parameter}"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_accepts_every_example_config() {
    let configs: Vec<(&str, String)> = EXAMPLES
        .iter()
        .map(|name| {
            let (_dir, filled) = substituted_copy(name);
            let doc = yaml_as_json(&filled);
            (*name, drover_toml_text(&doc, name))
        })
        .collect();
    for (name, text) in &configs {
        for line in text.lines() {
            assert!(
                !line.contains("://") || line.contains("://127.0.0.1"),
                "{name}: an address off the loopback network is left after substitution: {line}"
            );
        }
    }
    let moto = parameter_store().await;
    // In parallel: each check waits for its unreachable dependencies.
    let checks = configs.iter().map(|(name, text)| {
        let ssm = moto.url();
        async move { (*name, drover_check(text.clone(), ssm).await) }
    });
    let runs: Vec<(&str, CheckRun)> = futures_util::future::join_all(checks).await;
    for (name, run) in runs {
        let context = format!(
            "{name}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            run.code, run.stdout, run.stderr
        );
        assert_ne!(run.code, Some(2), "drover refused the config of {context}");
        // Nothing is reachable, so some dependency check fails: exit 1.
        assert_eq!(run.code, Some(1), "{context}");
        let first = run.stdout.lines().next().unwrap_or_default();
        let words: Vec<&str> = first.split_whitespace().collect();
        assert!(
            words.first() == Some(&"ok")
                && words.get(1) == Some(&"config")
                && first.ends_with("is valid"),
            "the first line is not the config check passing: {first:?}\n{context}"
        );
        // The keys took effect: the queue only where one is configured, both secrets read
        // from the parameters the placeholders name.
        let sqs = run.line("sqs").map(|(mark, _)| mark);
        if name == TERRAFORM_EXAMPLE {
            assert_eq!(sqs, Some("FAIL"), "the queue should be checked: {context}");
            assert!(run.stdout.contains("drover-lifecycle"), "{context}");
        } else {
            assert_eq!(sqs, Some("skip"), "no queue expected: {context}");
        }
        for (check, placeholder) in [
            ("rancher-key", "rancher_secret_key_parameter"),
            ("pager-key", "pagerduty_key_parameter"),
        ] {
            let from = format!("from SSM parameter {}", sample(placeholder));
            assert!(
                run.line(check)
                    .is_some_and(|(mark, detail)| mark == "ok" && detail.contains(&from)),
                "{check} should be read {from}: {context}"
            );
        }
        let pager = run.line("pager");
        assert!(
            pager.is_some_and(|(mark, detail)| mark == "ok" && detail.contains("routing key set")),
            "the PagerDuty routing key should be set: {context}"
        );
        for secret in [SAMPLE_SECRET_KEY, SAMPLE_ROUTING_KEY] {
            assert!(!run.stdout.contains(secret), "secret in stdout: {context}");
            assert!(!run.stderr.contains(secret), "secret in stderr: {context}");
        }
    }
}

/// Runs of `min` or more ASCII letters and digits: how API keys, secret keys and routing
/// keys look (Rancher's are 20 and 40 characters, PagerDuty's 32, AWS secret keys 40).
fn key_like_runs(text: &str, min: usize) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() >= min)
        .map(str::to_string)
        .collect()
}

#[test]
fn no_secret_is_in_the_userdata_and_drover_reads_both_from_ssm() {
    for name in EXAMPLES {
        let text = example_text(name);
        for line in text.lines() {
            let squeezed: String = line.split_whitespace().collect();
            for inline in ["secret_key=", "pagerduty_routing_key="] {
                assert!(
                    !squeezed.contains(inline),
                    "{name}: a secret given inline: {line}"
                );
            }
        }
        let runs = key_like_runs(&text, 20);
        assert!(runs.is_empty(), "{name}: key-looking literals: {runs:?}");
        for prefix in ["AKIA", "ASIA"] {
            assert!(
                !text.contains(prefix),
                "{name}: what looks like an AWS access key id ({prefix}...)"
            );
        }

        let doc = yaml_as_json(&example_path(name));
        let table = parse_toml(&drover_toml_text(&doc, name), name);
        // Every credential-like key is a placeholder or a file path, never a literal.
        for (section, value) in &table {
            let Some(keys) = value.as_table() else {
                continue;
            };
            for (key, value) in keys {
                let credential = ["key", "secret", "token", "password"]
                    .iter()
                    .any(|w| key.contains(w));
                if !credential {
                    continue;
                }
                let v = value.as_str().unwrap_or_default();
                assert!(
                    (v.starts_with("${") && v.ends_with('}')) || v.starts_with("/etc/drover/"),
                    "{name}: {section}.{key} = {value} is neither a placeholder nor a file"
                );
            }
        }
        assert_eq!(
            toml_str(&table, "rancher", "access_key"),
            Some("${rancher_access_key}"),
            "{name}"
        );

        // drover reads both secrets from SSM itself: no file for them, no fetch at boot.
        for (section, key) in [
            ("rancher", "secret_key_file"),
            ("pager", "pagerduty_routing_key_file"),
        ] {
            assert_eq!(
                toml_str(&table, section, key),
                None,
                "{name}: {section}.{key}: the *_ssm key needs no file"
            );
        }
        for words in bootcmd_words(&doc, name) {
            assert!(
                !words.iter().any(|w| w.contains("fetch-secret")),
                "{name}: no fetch in bootcmd is needed any more: {words:?}"
            );
        }

        // runcmd runs after drover has started: nothing of drover's may be there.
        if let Some(runcmd) = doc.get("runcmd") {
            assert!(
                !runcmd.to_string().contains("drover"),
                "{name}: drover needs these before it starts; runcmd is too late: {runcmd}"
            );
        }
    }
}

#[test]
fn only_the_terraform_placeholders_appear() {
    let allowed: BTreeSet<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
    for name in EXAMPLES {
        let text = example_text(name);
        assert!(
            !text.contains("%{"),
            "{name}: %{{ starts a Terraform template directive"
        );
        let used: BTreeSet<String> = interpolations(&text)
            .into_iter()
            .map(|n| n.unwrap_or_else(|| panic!("{name}: an unclosed ${{")))
            .collect();
        for n in &used {
            assert!(
                allowed.contains(n.as_str()),
                "{name}: ${{{n}}} is not one of the placeholders {allowed:?} (write shell \
                 variables as $NAME)"
            );
        }
        if name == TERRAFORM_EXAMPLE {
            let used: BTreeSet<&str> = used.iter().map(String::as_str).collect();
            assert_eq!(
                used, allowed,
                "{name}: templatefile() in packaging/aws/terraform passes all eight"
            );
        } else {
            assert!(
                !used.contains("lifecycle_queue_url"),
                "{name}: has no queue"
            );
        }
        // The opening comment tells the operator what to fill in, and how.
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for n in &used {
            assert!(
                header.contains(n.as_str()),
                "{name}: the opening comment does not name {n}"
            );
        }
        for how in ["templatefile", "Without Terraform"] {
            assert!(
                header.contains(how),
                "{name}: the opening comment lacks {how:?}"
            );
        }
    }
}

#[test]
fn every_example_labels_the_host_with_role_and_env() {
    for name in EXAMPLES {
        let doc = yaml_as_json(&example_path(name));
        let table = parse_toml(&drover_toml_text(&doc, name), name);
        let labels = table
            .get("agent")
            .and_then(|a| a.get("labels"))
            .and_then(|l| l.as_table())
            .unwrap_or_else(|| panic!("{name}: no [agent] labels"));
        assert_eq!(
            labels.get("role").and_then(|v| v.as_str()),
            Some("${role}"),
            "{name}"
        );
        assert_eq!(
            labels.get("env").and_then(|v| v.as_str()),
            Some("${env}"),
            "{name}"
        );
    }
}

#[test]
fn each_example_watches_the_sources_its_setting_has() {
    for name in EXAMPLES {
        let doc = yaml_as_json(&example_path(name));
        let table = parse_toml(&drover_toml_text(&doc, name), name);
        let lifecycle = table
            .get("lifecycle")
            .and_then(|l| l.as_table())
            .unwrap_or_else(|| panic!("{name}: no [lifecycle]"));
        let get = |key: &str| lifecycle.get(key).and_then(|v| v.as_str());
        let queue = get("queue_url").filter(|q| !q.is_empty());
        let poll = get("imds_poll").unwrap_or("5s");
        assert!(
            !matches!(poll, "0s" | "0" | "0ms"),
            "{name}: every setting polls IMDS (Spot notices, target lifecycle state)"
        );
        assert_eq!(get("on_sigterm").unwrap_or("auto"), "auto", "{name}");
        if name == TERRAFORM_EXAMPLE {
            assert_eq!(queue, Some("${lifecycle_queue_url}"), "{name}");
            assert_eq!(
                lifecycle.get("handle_peers").and_then(|v| v.as_bool()),
                Some(true),
                "{name}: peers' messages are handled"
            );
        } else {
            assert_eq!(queue, None, "{name}: no queue in this setting");
        }
    }
}

#[test]
fn the_readme_lists_every_example() {
    let readme = std::fs::read_to_string(repo().join("cloud-init/README.md")).expect("README");
    for name in EXAMPLES {
        assert!(
            readme.contains(&format!("[`{name}`]")),
            "cloud-init/README.md does not list {name}"
        );
    }
    for (placeholder, _) in PLACEHOLDERS {
        assert!(
            readme.contains(&format!("`{placeholder}`")),
            "cloud-init/README.md does not explain {placeholder}"
        );
    }
    for must in [
        "bootcmd",
        "write_files",
        "runcmd",
        "systemctl status drover",
    ] {
        assert!(readme.contains(must), "cloud-init/README.md lacks {must}");
    }
}
