//! The configuration (src/config.rs): the TOML file, the `DROVER_<SECTION>_<KEY>`
//! environment and `--set section.key=value` flags, merged and validated as `drover` does
//! at start. The input is the file's text, a NUL, `NAME=VALUE` lines for the environment,
//! a NUL, and one `--set` argument a line.
//!
//! Beyond "does not panic":
//! - a refusal is one line that names a key (a known section's, or one the input wrote),
//!   the file, or the flag;
//! - no secret (`secret_key`, `pagerduty_routing_key`, or the content of a `*_file`) shows
//!   in an error or in the loaded config's `Debug` (a `*_ssm` parameter name may: it is
//!   where a secret is, not the secret);
//! - every accepted duration can be added to "now" (with the 5 s of slack `register` adds),
//!   accepted labels are ones `CATTLE_HOST_LABELS` can carry, and polling is off or at
//!   least 100 ms.
//!
//! `*_file` keys are read from disk, so inputs naming any path but the few files this
//! target makes under /tmp/drover-fuzz-config are skipped (a fuzzer that found /dev/zero
//! would only measure memory).
#![no_main]

use std::sync::Once;
use std::time::{Duration, Instant};

use drover::config::{ConfigError, Origin};
use drover::fuzzing::config;
use drover::labels::AUTOMATIC_LABELS;
use libfuzzer_sys::fuzz_target;

mod common;

const FILES: &str = "/tmp/drover-fuzz-config";
const FILE_SECRET: &str = "FILE-SECRET-5e1f0c2d9a7b";
const SECTIONS: [&str; 6] = ["rancher", "agent", "lifecycle", "pager", "state", "log"];

static SETUP: Once = Once::new();

fn setup() {
    SETUP.call_once(|| {
        std::fs::create_dir_all(format!("{FILES}/dir")).expect("fuzz files dir");
        for (name, content) in [
            ("secret", format!("{FILE_SECRET}\n")),
            ("empty", String::new()),
        ] {
            std::fs::write(format!("{FILES}/{name}"), content).expect("fuzz file");
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let Ok(original) = std::str::from_utf8(data) else {
        return;
    };
    setup();
    // The secrets the input sets are replaced by markers (of the same length, so that a
    // 32-character routing key stays one): a marker in any output is a secret shown; so is
    // the secret file's content.
    let (file, env, sets) = split(original);
    let (input, mut markers) = common::mark(original, &secrets_in(&file, &env, &sets))
        .unwrap_or_else(|| (original.to_string(), Vec::new()));
    if !original.contains(FILE_SECRET) {
        markers.push(FILE_SECRET.to_string());
    }
    let (file, env, sets) = split(&input);
    if !only_our_files(&file, &env, &sets) {
        return;
    }

    match config(&file, env, &sets) {
        Ok(c) => {
            common::assert_hidden(&format!("{c:?}"), &markers, "config Debug");
            let mut durations = vec![
                ("rancher.request_timeout", c.rancher.request_timeout),
                ("agent.register_timeout", c.agent.register_timeout),
                ("lifecycle.drain_timeout", c.lifecycle.drain_timeout),
            ];
            if let Some(poll) = c.lifecycle.imds_poll {
                assert!(poll >= Duration::from_millis(100));
                durations.push(("lifecycle.imds_poll", poll));
            }
            for (key, d) in durations {
                assert!(!d.is_zero(), "{key} is zero");
                let fits = d
                    .checked_add(Duration::from_secs(5))
                    .and_then(|d| Instant::now().checked_add(d))
                    .is_some();
                assert!(fits, "{key} = {d:?} overflows a deadline");
            }
            for (k, v) in &c.agent.labels.0 {
                assert!(!k.trim().is_empty() && !v.trim().is_empty(), "{k:?}={v:?}");
                assert!(
                    !k.contains(['&', '=']) && !v.contains(['&', '=']),
                    "{k:?}={v:?}"
                );
                assert!(!AUTOMATIC_LABELS.contains(&k.as_str()), "{k:?}");
            }
            assert!(!c.agent.image.trim().is_empty());
            assert!(!c.rancher.project_id.is_empty() && !c.rancher.access_key.is_empty());
        }
        Err(e) => {
            let line = e.to_string();
            let shown = format!("{line} {e:?}");
            common::assert_hidden(&shown, &markers, "error");
            assert!(
                !line.contains(['\n', '\r']),
                "error is more than one line: {line:?}"
            );
            match &e {
                ConfigError::Key {
                    key,
                    origin,
                    reason,
                } => {
                    assert!(!key.is_empty() && key != ".", "{line}");
                    let first = key.split('.').next().unwrap_or_default();
                    // A name with control characters is shown with them escaped.
                    assert!(
                        SECTIONS.contains(&first)
                            || input.contains(first)
                            || first.contains('\\')
                            || first == "\"\"",
                        "error names a key the input never wrote: {line}"
                    );
                    assert!(line.contains(key.as_str()));
                    // An unknown key from the file is one the file has, named as it is.
                    if let (Origin::Unknown, "unknown key", Ok(table)) =
                        (origin, reason.as_str(), file.parse::<toml::Table>())
                    {
                        if plain_keys(&table) {
                            assert!(in_table(&table, key), "{line}: no such key in the file");
                        }
                    }
                }
                ConfigError::File { path, .. } => {
                    assert_eq!(path.to_str(), Some("/etc/drover/drover.toml"));
                }
                ConfigError::Flag { flag, .. } => assert!(flag.starts_with("--set "), "{line}"),
            }
        }
    }
});

/// Whether every `*_file` the input sets is empty or one of the files made for the target.
fn only_our_files(file: &str, env: &[(String, String)], sets: &[String]) -> bool {
    let ours = |path: &str| {
        path.trim().is_empty()
            || [
                format!("{FILES}/secret"),
                format!("{FILES}/empty"),
                format!("{FILES}/missing"),
                format!("{FILES}/dir"),
            ]
            .contains(&path.to_string())
    };
    if let Ok(table) = file.parse::<toml::Table>() {
        if !table_ok(&table, &ours) {
            return false;
        }
    }
    let env_ok = env
        .iter()
        .all(|(k, v)| !k.to_ascii_lowercase().ends_with("_file") || ours(v));
    let sets_ok = sets.iter().all(|s| match s.split_once('=') {
        Some((k, v)) => !k.to_ascii_lowercase().trim_end().ends_with("_file") || ours(v),
        None => true,
    });
    env_ok && sets_ok
}

fn table_ok(table: &toml::Table, ours: &dyn Fn(&str) -> bool) -> bool {
    table.iter().all(|(k, v)| match v {
        toml::Value::Table(t) => table_ok(t, ours),
        toml::Value::String(s) if k.to_ascii_lowercase().ends_with("_file") => ours(s),
        _ => true,
    })
}

/// The input's parts: the file's text, the environment, the `--set` arguments.
fn split(input: &str) -> (String, Vec<(String, String)>, Vec<String>) {
    let mut parts = input.splitn(3, '\0');
    let file = parts.next().unwrap_or_default().to_string();
    let env = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sets = parts
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    (file, env, sets)
}

/// The secrets the input sets, in the file, the environment or a flag.
fn secrets_in(file: &str, env: &[(String, String)], sets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(table) = file.parse::<toml::Table>() {
        for (section, key) in [
            ("rancher", "secret_key"),
            ("pager", "pagerduty_routing_key"),
        ] {
            if let Some(s) = table
                .get(section)
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
            {
                out.push(s.to_string());
            }
        }
    }
    // Also what looks meant for a secret but is set the wrong way (`--set
    // rancher_secret_key=...`, `DROVER_RANCHER_SECRET=...`): it is a secret all the same.
    // A `*_file` path and a `*_ssm` parameter name say where a secret is: they are shown.
    let secret_name = |name: &str| {
        let name = name.to_ascii_lowercase();
        (name.contains("secret") || name.contains("routing_key"))
            && !name.ends_with("_file")
            && !name.ends_with("_ssm")
    };
    for (k, v) in env {
        if secret_name(k) {
            out.push(v.clone());
        }
    }
    for s in sets {
        if let Some((k, v)) = s.split_once('=') {
            if secret_name(k) {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// Whether every key of the table is a plain name (no dots or quotes to confuse a lookup).
fn plain_keys(table: &toml::Table) -> bool {
    table.iter().all(|(k, v)| {
        !k.is_empty()
            && !k.contains(['.', '"', '\\'])
            && !k.chars().any(char::is_control)
            && v.as_table().is_none_or(plain_keys)
    })
}

/// Whether the dotted `key` names an entry of the table.
fn in_table(table: &toml::Table, key: &str) -> bool {
    let mut segments = key.split('.');
    let mut here = table;
    while let Some(segment) = segments.next() {
        match here.get(segment) {
            Some(toml::Value::Table(t)) => here = t,
            Some(_) => return segments.next().is_none(),
            None => return false,
        }
    }
    true
}
