use super::*;
use crate::state::HostVerdictRecord;

/// A status with every part read and every record there.
fn full() -> Status {
    Status {
        schema: SCHEMA,
        drover_version: "1.2.3".into(),
        config: "/etc/drover/drover.toml".into(),
        state_dir: "/var/lib/drover".into(),
        instance: InstancePart {
            status: Seen::Ok,
            detail: None,
            instance_id: Some("i-0a1b2c3d4e5f60718".into()),
            instance_type: Some("m5.large".into()),
            availability_zone: Some("us-east-1b".into()),
            region: Some("us-east-1".into()),
            autoscaling_group: Some("crawlers".into()),
            target_lifecycle_state: Some("InService".into()),
        },
        registration: RecordPart {
            status: Seen::Recorded,
            detail: None,
            record: Some(Registration {
                instance_id: "i-0a1b2c3d4e5f60718".into(),
                host_id: "1h1".into(),
                registered_at: "2026-12-02T19:00:00Z".into(),
                rancher_url: "https://rancher.example.com/".into(),
                project_id: "1a5".into(),
            }),
        },
        rancher: RancherPart {
            status: Seen::Ok,
            detail: None,
            url: "https://rancher.example.com/".into(),
            project_id: "1a5".into(),
            api: Some("v2-beta".into()),
            hosts: vec![
                HostView {
                    id: "1h1".into(),
                    hostname: Some("ip-10-0-1-23.ec2.internal".into()),
                    state: "active".into(),
                    agent_state: Some("active".into()),
                    agent: "connected".into(),
                    agent_ip: Some("10.0.1.23".into()),
                    registered: true,
                },
                HostView {
                    id: "1h0".into(),
                    hostname: None,
                    state: "disconnected".into(),
                    agent_state: None,
                    agent: "disconnected".into(),
                    agent_ip: None,
                    registered: false,
                },
            ],
        },
        agent_container: AgentPart {
            status: Seen::Ok,
            detail: None,
            docker_host: "unix:///var/run/docker.sock".into(),
            engine: Some("engine 20.10.24 (API 1.41)".into()),
            container: Some(ContainerView {
                id: "0123456789abcdef".into(),
                name: "rancher-agent".into(),
                image: "rancher/agent:v1.2.11".into(),
                state: "running".into(),
                running: true,
            }),
        },
        sources: SourcesPart {
            queue_url: Some("https://sqs.us-east-1.amazonaws.com/123456789012/drover".into()),
            hook_name: Some("drain".into()),
            imds_poll_ms: Some(5000),
            on_sigterm: "auto".into(),
            handle_peers: true,
            reaper: ReaperView {
                enabled: true,
                interval_ms: 300_000,
                max_per_sweep: 10,
                dry_run: false,
            },
        },
        take_out: RecordPart {
            status: Seen::Recorded,
            detail: None,
            record: Some(TakeOutView::from(TakeOutRecord {
                instance_id: "i-0a1b2c3d4e5f60718".into(),
                host_id: Some("1h1".into()),
                other_hosts: vec!["1h0".into()],
                group: Some("crawlers".into()),
                hook: Some("drain".into()),
                source: "sqs".into(),
                started_at: "2026-12-02T20:00:00Z".into(),
                taken_out: true,
                hook_completed: true,
                paged: false,
                timeline: vec![
                    ("2026-12-02T20:00:00Z".into(), "termination via sqs".into()),
                    ("2026-12-02T20:00:05Z".into(), "host 1h1 purged".into()),
                ],
            })),
        },
        boot_failure: RecordPart {
            status: Seen::Recorded,
            detail: None,
            record: Some(BootFailure {
                instance_id: "i-0a1b2c3d4e5f60718".into(),
                failed_step: "wait-active".into(),
                error: "the host did not become active within 5m".into(),
                since: "2026-12-02T18:00:00Z".into(),
                paged: true,
            }),
        },
        last_sweep: RecordPart {
            status: Seen::Recorded,
            detail: None,
            record: Some(SweepRecord {
                instance_id: "i-0a1b2c3d4e5f60718".into(),
                started_at: "2026-12-02T19:30:00Z".into(),
                finished_at: "2026-12-02T19:30:02Z".into(),
                dry_run: false,
                refused: None,
                hosts_listed: 12,
                labelled_hosts: 10,
                connected_labelled_hosts: 8,
                considered: vec![HostVerdictRecord {
                    host_id: "1h7".into(),
                    instance_id: Some("i-0000000000000001".into()),
                    agent: "disconnected".into(),
                    autoscaling: Some("not known to Auto Scaling".into()),
                    decision: "reaped".into(),
                }],
                reaped: vec!["i-0000000000000001".into()],
                failed: vec![],
                deferred: vec![],
                warm_pool_completed: vec!["i-00000000000000aa1".into()],
                warm_pool_error: Some("throttled".into()),
                paged: true,
            }),
        },
    }
}

#[test]
fn every_part_is_a_block_with_its_name_in_the_first_column() {
    let text = render_text(&full());
    let want = "\
instance      i-0a1b2c3d4e5f60718 (m5.large, us-east-1b, region us-east-1)
              group crawlers, target lifecycle state InService
registration  host 1h1 for i-0a1b2c3d4e5f60718
              project 1a5 of https://rancher.example.com/, registered 2026-12-02T19:00:00Z
              state dir /var/lib/drover
rancher       https://rancher.example.com/ API v2-beta, project 1a5
              1h1      active, agent connected (agentState active), ip-10-0-1-23.ec2.internal 10.0.1.23 (registered)
              1h0      disconnected, agent disconnected (agentState -), - -
agent         rancher-agent running, image rancher/agent:v1.2.11
              engine 20.10.24 (API 1.41) at unix:///var/run/docker.sock
watching      queue https://sqs.us-east-1.amazonaws.com/123456789012/drover; hook drain
              IMDS every 5s; SIGTERM auto; peers handled
              reaper on, about every 5m, at most 10 take-out(s) a sweep
take-out      i-0a1b2c3d4e5f60718 via sqs, started 2026-12-02T20:00:00Z: taken out, hook completed
              host 1h1 (also 1h0), group crawlers, hook drain
              2026-12-02T20:00:00Z  termination via sqs
              2026-12-02T20:00:05Z  host 1h1 purged
boot-failure  i-0a1b2c3d4e5f60718 failed at wait-active since 2026-12-02T18:00:00Z, paged
              the host did not become active within 5m
last-sweep    2026-12-02T19:30:00Z to 2026-12-02T19:30:02Z by i-0a1b2c3d4e5f60718
              12 host(s) listed, 10 labelled (8 connected); reaped i-0000000000000001; failed -; deferred -
              reaped         1h7      i-0000000000000001    agent disconnected; not known to Auto Scaling
              warm pool completed i-00000000000000aa1
              warm pool not read: throttled
              paged: more candidates than reaper.max_per_sweep
";
    assert_eq!(text, want, "got:\n{text}");
}

#[test]
fn a_part_not_read_says_so_and_why_and_the_others_go_on() {
    let mut s = full();
    s.rancher = RancherPart {
        status: Seen::Unreachable,
        detail: Some("no answer within 6s".into()),
        api: None,
        hosts: vec![],
        ..s.rancher
    };
    s.agent_container = AgentPart {
        status: Seen::Unreachable,
        detail: Some("cannot connect".into()),
        engine: None,
        container: None,
        ..s.agent_container
    };
    s.take_out = RecordPart {
        status: Seen::None,
        detail: None,
        record: None,
    };
    s.boot_failure = RecordPart {
        status: Seen::Unreadable,
        detail: Some("/var/lib/drover/boot-failure.json: corrupt record".into()),
        record: None,
    };
    s.sources.imds_poll_ms = None;
    s.sources.reaper.enabled = false;
    let text = render_text(&s);
    for line in [
        "rancher       https://rancher.example.com/ API ?, project 1a5\n              unreachable: no answer within 6s\n",
        "agent         unreachable: cannot connect at unix:///var/run/docker.sock\n",
        "take-out      none\n",
        "boot-failure  unreadable: /var/lib/drover/boot-failure.json: corrupt record\n",
        "              IMDS not polled; SIGTERM auto; peers handled\n              reaper off\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(
        text.contains("last-sweep    2026-12-02T19:30:00Z"),
        "{text}"
    );
    // A record that cannot be read: the status cannot tell.
    assert!(!s.can_tell());
    let why = s.why_not().expect("a reason");
    assert!(why.contains("boot failure record cannot be read"), "{why}");
    // Rancher and Docker unreachable are part of the answer.
    s.boot_failure.status = Seen::None;
    s.boot_failure.detail = None;
    assert!(s.can_tell());
    assert_eq!(s.why_not(), None);
}

#[test]
fn an_unknown_instance_cannot_tell() {
    let mut s = full();
    s.instance = instance_part(Err("IMDS gave no answer within 4s".into()));
    let text = render_text(&s);
    assert!(
        text.starts_with("instance      unreachable: IMDS gave no answer within 4s\n"),
        "{text}"
    );
    assert!(!s.can_tell());
    let why = s.why_not().expect("a reason");
    assert!(why.contains("the instance cannot be known"), "{why}");
}

#[test]
fn a_refused_sweep_shows_why() {
    let mut s = full();
    if let Some(rec) = s.last_sweep.record.as_mut() {
        rec.refused = Some("Auto Scaling does not know i-0a1b2c3d4e5f60718".into());
        rec.dry_run = true;
    }
    let text = render_text(&s);
    // The last block: the sweep's times, then why it touched nothing, and no counts.
    assert!(
        text.ends_with(
            "last-sweep    2026-12-02T19:30:00Z to 2026-12-02T19:30:02Z by i-0a1b2c3d4e5f60718, dry run\n              refused: Auto Scaling does not know i-0a1b2c3d4e5f60718\n"
        ),
        "{text}"
    );
}

/// Every field of the JSON as a dotted path, arrays as `[]`.
fn paths(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn json_paths() -> Vec<String> {
    let value = serde_json::to_value(full()).expect("the status as JSON");
    let mut out = Vec::new();
    paths(&value, "", &mut out);
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_json_is_one_object_with_its_schema_and_every_part() {
    let value = serde_json::to_value(full()).expect("JSON");
    assert_eq!(value["schema"], 1);
    assert_eq!(value["instance"]["status"], "ok");
    assert_eq!(value["registration"]["status"], "recorded");
    assert_eq!(value["registration"]["record"]["host_id"], "1h1");
    assert_eq!(value["rancher"]["hosts"][0]["registered"], true);
    assert_eq!(value["sources"]["imds_poll_ms"], 5000);
    assert_eq!(value["sources"]["reaper"]["interval_ms"], 300_000);
    assert_eq!(
        value["take_out"]["record"]["timeline"][1]["event"],
        "host 1h1 purged"
    );
    assert_eq!(value["take_out"]["record"]["finished"], true);
    assert_eq!(
        value["last_sweep"]["record"]["considered"][0]["host_id"],
        "1h7"
    );
    // A part not read keeps every field, null.
    let mut s = full();
    s.instance = instance_part(Err("down".into()));
    let value = serde_json::to_value(s).expect("JSON");
    assert_eq!(value["instance"]["status"], "unreachable");
    assert_eq!(value["instance"]["detail"], "down");
    assert!(value["instance"]["instance_id"].is_null());
    let fields = value["instance"].as_object().map(|o| o.len());
    assert_eq!(fields, Some(8));
}

/// The README's table and drover-status(1) document every field the JSON has, and no other.
#[test]
fn every_json_field_is_documented_in_the_readme_and_the_man_page() {
    let fields = json_paths();
    let readme = include_str!("../../../README.md");
    for f in &fields {
        assert!(
            readme.contains(&format!("| `{f}` |")),
            "README.md's `drover status --json` table lacks `{f}`"
        );
    }
    let man = include_str!("../../../packaging/assets/src/status.roff");
    for f in &fields {
        let roff = f.replace('-', "\\-");
        assert!(
            man.lines().any(|l| l == format!(".B {roff}")),
            "status.roff lacks .B {roff}"
        );
    }
    // The entries of JSON FIELDS: a `.B` line right after each `.TP`.
    let section = man
        .split_once(".SH \"JSON FIELDS\"")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let lines: Vec<&str> = section.lines().collect();
    let mut man_fields: Vec<String> = lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| w[1].strip_prefix(".B "))
        .map(|f| f.replace("\\-", "-"))
        .collect();
    man_fields.sort();
    assert_eq!(
        man_fields, fields,
        "status.roff documents fields the JSON lacks"
    );
}
