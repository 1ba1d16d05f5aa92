//! Host labels (src/config.rs, src/register.rs): `agent.labels` written as
//! `DROVER_AGENT_LABELS` (`k=v&k=v`, `k=v,k=v` or a TOML inline table), as a `--set` flag,
//! or as the file's inline table, through validation to the `CATTLE_HOST_LABELS` value the
//! bootstrap container gets. The first byte picks where the rest is written.
//!
//! Beyond "does not panic":
//! - accepted labels are non-empty, free of `&` and `=`, and never one of the `aws.*` names;
//! - `CATTLE_HOST_LABELS`, read back as the agent reads it (a query string, the first of a
//!   repeated key winning), gives exactly the automatic labels and then the user's;
//! - labels written back in the `k=v&k=v` form load again to the same labels;
//! - a refusal names `agent.labels`.
#![no_main]

use std::collections::BTreeMap;

use drover::fuzzing::config;
use drover::labels::{cattle_host_labels, Automatic, HostLabels, AUTOMATIC_LABELS};
use libfuzzer_sys::fuzz_target;

const MINIMAL: &str = r#"
[rancher]
url = "https://rancher.example.com"
project_id = "1a5"
access_key = "AK"
secret_key = "s3cr3t-value"
"#;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };
    let in_file = which % 3 == 2;
    let loaded = match which % 3 {
        0 => load_env(value),
        1 => config(MINIMAL, vec![], &[format!("agent.labels={value}")]),
        _ => config(
            &format!("{MINIMAL}\n[agent]\nlabels = {value}\n"),
            vec![],
            &[],
        ),
    };
    let labels = match loaded {
        Ok(c) => c.agent.labels,
        Err(e) => {
            // Written into the file, the value can break the TOML or set other keys; from
            // the environment or a flag, a refusal can only be about the labels.
            let line = e.to_string();
            assert!(
                in_file || line.contains("agent.labels"),
                "refusal does not name agent.labels: {line}"
            );
            return;
        }
    };
    for (k, v) in &labels.0 {
        assert!(!k.trim().is_empty() && !v.trim().is_empty(), "{k:?}={v:?}");
        assert!(
            !k.contains(['&', '=']) && !v.contains(['&', '=']),
            "{k:?}={v:?}"
        );
        assert!(!AUTOMATIC_LABELS.contains(&k.as_str()), "{k:?}");
    }
    check_cattle_host_labels(&labels);

    // Written back the way the README says to write them, they load to the same labels.
    // Only where that form can say it: keys and values without edge spaces (it trims), and
    // for a single label no comma (without a `&` the form splits on commas).
    let writable = labels
        .0
        .iter()
        .all(|(k, v)| k.trim() == k && v.trim() == v && !k.starts_with('{'))
        && (labels.0.len() > 1
            || labels
                .0
                .iter()
                .all(|(k, v)| !k.contains(',') && !v.contains(',')));
    if writable && !labels.0.is_empty() {
        let form: Vec<String> = labels.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let again = load_env(&form.join("&")).expect("written-back labels load");
        assert_eq!(again.agent.labels, labels, "labels changed on the way back");
    }
});

fn load_env(value: &str) -> Result<drover::config::Config, drover::config::ConfigError> {
    config(
        MINIMAL,
        vec![("DROVER_AGENT_LABELS".to_string(), value.to_string())],
        &[],
    )
}

fn check_cattle_host_labels(labels: &HostLabels) {
    let automatic = Automatic {
        instance_id: "i-0a1b2c3d4e5f60718",
        instance_type: "m5.large",
        availability_zone: "us-east-1b",
        region: "us-east-1",
        autoscaling_group: Some("crawlers"),
        ami_id: "ami-0123456789abcdef0",
    };
    let text = cattle_host_labels(labels, &automatic);
    // As the agent reads it: a query string, the first of a repeated key winning.
    let mut read: Vec<(String, String)> = Vec::new();
    let mut seen = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(text.as_bytes()) {
        if !k.is_empty() && seen.insert(k.to_string(), v.to_string()).is_none() {
            read.push((k.into_owned(), v.into_owned()));
        }
    }
    let mut expected: Vec<(String, String)> = [
        ("aws.instance_id", "i-0a1b2c3d4e5f60718"),
        ("aws.instance_type", "m5.large"),
        ("aws.availability_zone", "us-east-1b"),
        ("aws.region", "us-east-1"),
        ("aws.autoscaling_group", "crawlers"),
        ("aws.ami_id", "ami-0123456789abcdef0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    expected.extend(labels.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    assert_eq!(
        read, expected,
        "CATTLE_HOST_LABELS {text:?} reads back differently"
    );
}
