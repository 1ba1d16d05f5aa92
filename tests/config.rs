//! Bad configuration end to end: the built binary exits 2 with one line naming the key.

mod common;

use std::path::Path;

use common::{drover_bin, set_mode, SECRET};

const GOOD: &str = r#"
[rancher]
url = "https://rancher.example.com"
project_id = "1a5"
access_key = "AK"
secret_key = "s3cr3t-DroverTestSecretKey-9f8e7d"
"#;

/// Runs `drover <args>` with only the given config and environment.
fn run(dir: &Path, config: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let path = dir.join("drover.toml");
    std::fs::write(&path, config).expect("config");
    set_mode(&path, 0o600);
    let mut cmd = std::process::Command::new(drover_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("--config")
        .arg(&path)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("drover runs")
}

#[track_caller]
fn assert_config_error(config: &str, env: &[(&str, &str)], key: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(dir.path(), config, env, &["register"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(key), "names {key}: {stderr}");
    assert!(!stderr.contains(SECRET), "no secret: {stderr}");
}

#[test]
fn missing_required_key() {
    assert_config_error(
        &GOOD.replace("project_id = \"1a5\"\n", ""),
        &[],
        "rancher.project_id",
    );
    assert_config_error(
        &GOOD.replace("secret_key = \"s3cr3t-DroverTestSecretKey-9f8e7d\"\n", ""),
        &[],
        "rancher.secret_key",
    );
}

#[test]
fn wrong_type() {
    assert_config_error(
        &format!("{GOOD}\n[agent]\nprivileged = \"sometimes\"\n"),
        &[],
        "agent.privileged",
    );
    assert_config_error(
        GOOD,
        &[("DROVER_LIFECYCLE_EVACUATE", "perhaps")],
        "lifecycle.evacuate",
    );
    // A secret of the wrong type is named but never echoed.
    assert_config_error(
        &GOOD.replace(
            "secret_key = \"s3cr3t-DroverTestSecretKey-9f8e7d\"",
            "secret_key = [\"s3cr3t-DroverTestSecretKey-9f8e7d\"]",
        ),
        &[],
        "rancher.secret_key",
    );
}

#[test]
fn unknown_key() {
    assert_config_error(
        &format!("{GOOD}\n[lifecycle]\nqueue = \"x\"\n"),
        &[],
        "lifecycle.queue",
    );
    assert_config_error(GOOD, &[("DROVER_PAGER_ROUTING", "x")], "pager.routing");
}

#[test]
fn bad_duration() {
    assert_config_error(
        &format!("{GOOD}\n[lifecycle]\ndrain_timeout = \"ten minutes\"\n"),
        &[],
        "lifecycle.drain_timeout",
    );
    assert_config_error(
        GOOD,
        &[("DROVER_AGENT_REGISTER_TIMEOUT", "5")],
        "agent.register_timeout",
    );
}

#[test]
fn labels_that_cannot_be_carried() {
    for labels in [
        r#"{ role = "a&b" }"#,
        r#"{ "a=b" = "c" }"#,
        r#"{ role = "" }"#,
    ] {
        assert_config_error(
            &format!("{GOOD}\n[agent]\nlabels = {labels}\n"),
            &[],
            "agent.labels",
        );
    }
    assert_config_error(GOOD, &[("DROVER_AGENT_LABELS", "role=a&b")], "agent.labels");
}

#[test]
fn unreadable_secret_file() {
    let config = GOOD.replace(
        "secret_key = \"s3cr3t-DroverTestSecretKey-9f8e7d\"",
        "secret_key_file = \"/nonexistent/rancher.secret\"",
    );
    assert_config_error(&config, &[], "rancher.secret_key_file");
    let config = format!("{GOOD}\n[pager]\npagerduty_routing_key_file = \"/nonexistent/pd.key\"\n");
    assert_config_error(&config, &[], "pager.pagerduty_routing_key_file");
}

#[test]
fn bad_flag_and_bad_subcommand_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let out = run(dir.path(), GOOD, &[], &["--set", "nonsense", "register"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--set"));
    let out = run(dir.path(), GOOD, &[], &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn loose_secret_file_mode_is_a_warning() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    set_mode(&secret, 0o644);
    let config = GOOD.replace(
        "secret_key = \"s3cr3t-DroverTestSecretKey-9f8e7d\"",
        &format!("secret_key_file = \"{}\"", secret.display()),
    );
    // Everything else points at closed ports, so each check fails fast and is reported.
    let out = run(
        dir.path(),
        &config,
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("DROVER_RANCHER_URL", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "y"),
            ("AWS_REGION", "us-east-1"),
        ],
        &["check"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(SECRET) && !stdout.contains(SECRET));
    for name in common::CHECKS {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "a line for {name}: {stdout}"
        );
    }
}
