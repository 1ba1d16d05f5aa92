//! Bad configuration end to end: the built binary exits 2 with one line naming the key.

use std::collections::BTreeMap;
use std::time::Duration;

use testbed::bed::{set_mode, CHECKS, SECRET};
use testbed::config::{DroverConfig, Secret};
use testbed::launch::{drover_bin, Endpoints, Launcher, Run};

/// A config drover accepts: the four required keys.
fn good() -> DroverConfig {
    let mut config = DroverConfig::default();
    config.rancher.url = Some("https://rancher.example.com".into());
    config.rancher.project_id = Some("1a5".into());
    config.rancher.access_key = Some("AK".into());
    config.rancher.secret_key = Some(Secret::Inline(SECRET.into()));
    config
}

/// Runs `drover --config <it> <args>` with only the given config and environment.
async fn run(
    dir: &std::path::Path,
    config: &DroverConfig,
    ends: &Endpoints,
    env: &[(&str, &str)],
    args: &[&str],
) -> Run {
    let path = dir.join("drover.toml");
    config.write(&path).expect("config");
    Launcher::new(&drover_bin(), dir, "drover")
        .endpoints(ends)
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&path)
        .args(args)
        .run(Duration::from_secs(60))
        .await
        .expect("drover runs to its end")
}

#[track_caller]
fn assert_one_line_naming(run: &Run, key: &str) {
    assert_eq!(run.code, Some(2), "{key}: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", run.stderr);
    assert!(lines[0].contains(key), "names {key}: {}", run.stderr);
    assert!(!run.all().contains(SECRET), "no secret: {}", run.stderr);
}

async fn assert_config_error(config: &DroverConfig, env: &[(&str, &str)], key: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let run = run(
        dir.path(),
        config,
        &Endpoints::default(),
        env,
        &["register"],
    )
    .await;
    assert_one_line_naming(&run, key);
}

#[tokio::test]
async fn missing_required_key() {
    let mut config = good();
    config.rancher.project_id = None;
    assert_config_error(&config, &[], "rancher.project_id").await;
    let mut config = good();
    config.rancher.secret_key = None;
    assert_config_error(&config, &[], "rancher.secret_key").await;
}

#[tokio::test]
async fn wrong_type() {
    let mut config = good();
    config.raw("agent", r#"privileged = "sometimes""#);
    assert_config_error(&config, &[], "agent.privileged").await;
    assert_config_error(
        &good(),
        &[("DROVER_LIFECYCLE_EVACUATE", "perhaps")],
        "lifecycle.evacuate",
    )
    .await;
    // A secret of the wrong type is named but never echoed.
    let mut config = good();
    config.rancher.secret_key = None;
    config.raw("rancher", &format!("secret_key = [\"{SECRET}\"]"));
    assert_config_error(&config, &[], "rancher.secret_key").await;
}

#[tokio::test]
async fn unknown_key() {
    let mut config = good();
    config.raw("lifecycle", r#"queue = "x""#);
    assert_config_error(&config, &[], "lifecycle.queue").await;
    assert_config_error(&good(), &[("DROVER_PAGER_ROUTING", "x")], "pager.routing").await;
}

#[tokio::test]
async fn bad_duration() {
    let mut config = good();
    config.raw("lifecycle", r#"drain_timeout = "ten minutes""#);
    assert_config_error(&config, &[], "lifecycle.drain_timeout").await;
    assert_config_error(
        &good(),
        &[("DROVER_AGENT_REGISTER_TIMEOUT", "5")],
        "agent.register_timeout",
    )
    .await;
}

#[tokio::test]
async fn labels_that_cannot_be_carried() {
    for (key, value) in [("role", "a&b"), ("a=b", "c"), ("role", "")] {
        let mut config = good();
        config.agent.labels = Some(BTreeMap::from([(key.to_string(), value.to_string())]));
        assert_config_error(&config, &[], "agent.labels").await;
    }
    assert_config_error(
        &good(),
        &[("DROVER_AGENT_LABELS", "role=a&b")],
        "agent.labels",
    )
    .await;
}

#[tokio::test]
async fn unreadable_or_empty_secret_file() {
    // There but not a file one can read (root reads any mode: a directory it cannot).
    let dir = tempfile::tempdir().expect("dir");
    let empty = dir.path().join("empty.secret");
    std::fs::write(&empty, "\n").expect("empty file");
    for path in [dir.path().to_path_buf(), empty] {
        let mut config = good();
        config.rancher.secret_key = Some(Secret::File(path.clone()));
        assert_config_error(&config, &[], "rancher.secret_key_file").await;
        let mut config = good();
        config.pager.routing_key = Some(Secret::File(path));
        assert_config_error(&config, &[], "pager.pagerduty_routing_key_file").await;
    }
}

/// A file cloud-init has not written yet is no config error (it is waited for, see
/// tests/e2e/secrets.rs); two sources for one secret are, naming both.
#[tokio::test]
async fn a_secret_file_not_there_yet_is_accepted_two_sources_are_not() {
    let mut config = good();
    config.rancher.secret_key = Some(Secret::File("/nonexistent/rancher.secret".into()));
    config.pager.routing_key = Some(Secret::File("/nonexistent/pd.key".into()));
    let dir = tempfile::tempdir().expect("dir");
    let out = run(
        dir.path(),
        &config,
        &Endpoints::nowhere(),
        &[("DROVER_RANCHER_URL", "http://127.0.0.1:9")],
        &["check"],
    )
    .await;
    assert_eq!(
        out.code,
        Some(1),
        "a failed check, not a config error: {}",
        out.all()
    );
    for (name, key) in [
        (
            "rancher-key",
            "rancher.secret_key_file /nonexistent/rancher.secret",
        ),
        (
            "pager-key",
            "pager.pagerduty_routing_key_file /nonexistent/pd.key",
        ),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line: {}", out.stdout));
        assert!(
            line.starts_with("FAIL") && line.contains(&format!("{key} did not appear within")),
            "{line}"
        );
    }

    let mut both = good();
    both.raw("rancher", "secret_key_ssm = \"/drover/rancher-secret\"");
    let dir = tempfile::tempdir().expect("dir");
    let out = run(dir.path(), &both, &Endpoints::default(), &[], &["register"]).await;
    assert_one_line_naming(
        &out,
        "rancher.secret_key and rancher.secret_key_ssm are both set",
    );
}

#[tokio::test]
async fn bad_flag_and_bad_subcommand_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let none = Endpoints::default();
    let out = run(
        dir.path(),
        &good(),
        &none,
        &[],
        &["--set", "nonsense", "register"],
    )
    .await;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--set"));
    let out = run(dir.path(), &good(), &none, &[], &["frobnicate"]).await;
    assert_eq!(out.code, Some(2));
}

#[tokio::test]
async fn loose_secret_file_mode_is_a_warning() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    set_mode(&secret, 0o644);
    let mut config = good();
    config.rancher.secret_key = Some(Secret::File(secret));
    // Everything else points at closed ports, so each check fails fast and is reported.
    let out = run(
        dir.path(),
        &config,
        &Endpoints::nowhere(),
        &[("DROVER_RANCHER_URL", "http://127.0.0.1:9")],
        &["check"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.all());
    // A `warn` line of check's own, not a log line besides.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("warn") && l.contains("chmod 600")),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert!(!out.all().contains(SECRET));
    for name in CHECKS {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "a line for {name}: {}",
            out.stdout
        );
    }
}
