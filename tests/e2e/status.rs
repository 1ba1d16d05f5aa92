//! `drover status [--json]` end to end: the real binary against the test bed, on a registered
//! host, after a take-out, after a reaper sweep, with Rancher hanging, with IMDS down, with
//! a corrupt record and with real secrets configured; and every time, nothing changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testbed::bed::{Bed, BedOptions, Fate, ROUTING_KEY, SECRET};
use testbed::config::Secret;
use testbed::docker::AGENT_IMAGE;
use testbed::http::{Fault, Match};
use testbed::launch::Run;

/// Longer than any bound of `drover status` by far: a status that hangs fails the test
/// instead of hanging it.
const STATUS_LIMIT: Duration = Duration::from_secs(60);

async fn status(bed: &Bed, args: &[&str]) -> Run {
    bed.launcher(args)
        .run(STATUS_LIMIT)
        .await
        .expect("drover status ends")
}

/// `drover status --json`, parsed.
async fn status_json(bed: &Bed, code: i32) -> Value {
    let run = status(bed, &["status", "--json"]).await;
    run.assert_code(code);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{}", run.stdout))
}

/// The block of the text output that `name` heads: its first line and the indented ones
/// after it, each without the name column.
fn block(text: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let (head, rest) = line.split_at(line.len().min(14));
        if head.trim() == name {
            inside = true;
        } else if !head.trim().is_empty() {
            inside = false;
        }
        if inside {
            out.push(rest.to_string());
        }
    }
    assert!(!out.is_empty(), "no {name} block in:\n{text}");
    out
}

/// Every file of the state dir with its bytes and modification time.
fn state_files(dir: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            let bytes = std::fs::read(&path).expect("read a state file");
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("mtime");
            (
                e.file_name().to_string_lossy().into_owned(),
                (bytes, modified),
            )
        })
        .collect()
}

/// What status could change: the state dir, Rancher's hosts, the engine's containers.
struct World {
    files: BTreeMap<String, (Vec<u8>, std::time::SystemTime)>,
    hosts: String,
    containers: Vec<(String, String, String)>,
    rancher_requests: usize,
}

async fn world(bed: &Bed) -> World {
    World {
        files: state_files(&bed.state_dir()),
        hosts: format!("{:?}", bed.rancher.hosts()),
        containers: bed
            .docker
            .containers()
            .await
            .into_iter()
            .map(|c| (c.id, c.name, c.state))
            .collect(),
        rancher_requests: bed.rancher.requests().len(),
    }
}

/// Nothing changed since `before`, and Rancher was only read.
#[track_caller]
fn unchanged(bed: &Bed, before: &World, after: &World) {
    assert_eq!(before.files, after.files, "the state dir changed");
    assert_eq!(before.hosts, after.hosts, "Rancher's hosts changed");
    assert_eq!(
        before.containers, after.containers,
        "the containers changed"
    );
    let writes: Vec<_> = bed.rancher.requests()[before.rancher_requests..]
        .iter()
        .filter(|r| r.method != "GET")
        .cloned()
        .collect();
    assert!(writes.is_empty(), "status wrote to Rancher: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_host_shows_every_part_and_changes_nothing() {
    let bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    let host_id = bed.register().await;
    bed.imds.set_target_lifecycle_state(Some("InService"));
    let (_, queue) = bed.queue();
    let before = world(&bed).await;

    let run = status(&bed, &["status"]).await;
    run.assert_code(0);
    let text = &run.stdout;
    let instance = block(text, "instance");
    assert_eq!(
        instance[0],
        format!(
            "{} (m5.large, us-east-1b, region us-east-1)",
            bed.instance_id
        ),
        "{text}"
    );
    assert_eq!(
        instance[1], "group crawlers, target lifecycle state InService",
        "{text}"
    );
    let registration = block(text, "registration");
    assert_eq!(
        registration[0],
        format!("host {host_id} for {}", bed.instance_id)
    );
    assert_eq!(
        registration[2],
        format!("state dir {}", bed.state_dir().display())
    );
    let rancher = block(text, "rancher");
    assert!(rancher[0].contains("API v2-beta, project 1a5"), "{text}");
    assert!(
        rancher[1].starts_with(&format!("{host_id} "))
            && rancher[1].contains("active, agent connected")
            && rancher[1].ends_with("(registered)"),
        "{text}"
    );
    let agent = block(text, "agent");
    assert_eq!(
        agent[0],
        format!("rancher-agent running, image {AGENT_IMAGE}"),
        "{text}"
    );
    assert!(
        agent[1].ends_with(&format!("at {}", bed.docker.docker_host())),
        "{text}"
    );
    let watching = block(text, "watching");
    assert_eq!(
        watching,
        [
            format!("queue {queue}; hook the group's"),
            "IMDS every 5s; SIGTERM auto; peers handled".to_string(),
            "reaper on, about every 5m, at most 10 take-out(s) a sweep".to_string(),
        ],
        "{text}"
    );
    for (name, shown) in [
        ("take-out", "none"),
        ("boot-failure", "none"),
        ("last-sweep", "none"),
    ] {
        assert_eq!(block(text, name), [shown], "{text}");
    }

    let json = status_json(&bed, 0).await;
    assert_eq!(json["schema"], 1);
    assert_eq!(json["drover_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        json["config"],
        bed.config_path().display().to_string().as_str()
    );
    assert_eq!(
        json["state_dir"],
        bed.state_dir().display().to_string().as_str()
    );
    let i = &json["instance"];
    assert_eq!(i["status"], "ok");
    assert!(i["detail"].is_null());
    assert_eq!(i["instance_id"], bed.instance_id.as_str());
    assert_eq!(i["instance_type"], "m5.large");
    assert_eq!(i["availability_zone"], "us-east-1b");
    assert_eq!(i["region"], "us-east-1");
    assert_eq!(i["autoscaling_group"], "crawlers");
    assert_eq!(i["target_lifecycle_state"], "InService");
    let r = &json["registration"];
    assert_eq!(r["status"], "recorded");
    assert!(r["detail"].is_null());
    let written = bed.registration().expect("registration.json");
    assert_eq!(r["record"], written, "the record as the state dir has it");
    assert_eq!(r["record"]["host_id"], host_id.as_str());
    let rn = &json["rancher"];
    assert_eq!(rn["status"], "ok");
    assert!(rn["detail"].is_null());
    assert_eq!(rn["url"], format!("{}/", bed.rancher.url()).as_str());
    assert_eq!(rn["project_id"], "1a5");
    assert_eq!(rn["api"], "v2-beta");
    let hosts = rn["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 1, "{rn}");
    let h = &hosts[0];
    let served = bed
        .rancher
        .host(&host_id)
        .expect("the host in the stand-in");
    assert_eq!(h["id"], host_id.as_str());
    assert_eq!(h["hostname"], served.hostname.as_str());
    assert_eq!(h["state"], "active");
    assert_eq!(h["agent_state"], serde_json::json!(served.agent_state));
    assert_eq!(h["agent"], "connected");
    assert_eq!(h["agent_ip"], served.agent_ip.as_str());
    assert_eq!(h["agent_ip"], "10.0.1.23");
    assert_eq!(h["registered"], true);
    let a = &json["agent_container"];
    assert_eq!(a["status"], "ok");
    assert!(a["detail"].is_null());
    assert_eq!(a["docker_host"], bed.docker.docker_host().as_str());
    assert!(
        a["engine"]
            .as_str()
            .is_some_and(|e| e.starts_with("engine ")),
        "{a}"
    );
    let c = &a["container"];
    let engine_view = bed
        .docker
        .container("rancher-agent")
        .await
        .expect("the agent container");
    assert_eq!(c["id"], engine_view.id.as_str());
    assert_eq!(c["name"], "rancher-agent");
    assert_eq!(c["image"], AGENT_IMAGE);
    assert_eq!(c["state"], "running");
    assert_eq!(c["running"], true);
    let s = &json["sources"];
    assert_eq!(s["queue_url"], queue);
    assert!(s["hook_name"].is_null());
    assert_eq!(s["imds_poll_ms"], 5000);
    assert_eq!(s["on_sigterm"], "auto");
    assert_eq!(s["handle_peers"], true);
    assert_eq!(s["reaper"]["enabled"], true);
    assert_eq!(s["reaper"]["interval_ms"], 300_000);
    assert_eq!(s["reaper"]["max_per_sweep"], 10);
    assert_eq!(s["reaper"]["dry_run"], false);
    for part in ["take_out", "boot_failure", "last_sweep"] {
        assert_eq!(json[part]["status"], "none", "{part}");
        assert!(json[part]["detail"].is_null(), "{part}");
        assert!(json[part]["record"].is_null(), "{part}");
    }

    unchanged(&bed, &before, &world(&bed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_take_out_its_timeline_is_shown() {
    let bed = Bed::start().await;
    let host_id = bed.register().await;
    bed.drover(&["deregister"]).await.assert_code(0);
    let before = world(&bed).await;

    let json = status_json(&bed, 0).await;
    let t = &json["take_out"];
    assert_eq!(t["status"], "recorded", "{t}");
    let file = bed
        .state_dir()
        .join(format!("takeout-{}.json", bed.instance_id));
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("the take-out record"))
            .expect("JSON");
    let r = &t["record"];
    for field in [
        "instance_id",
        "host_id",
        "group",
        "hook",
        "source",
        "started_at",
        "taken_out",
        "hook_completed",
        "paged",
    ] {
        assert_eq!(r[field], record[field], "{field}");
    }
    assert_eq!(r["host_id"], host_id.as_str());
    assert_eq!(r["taken_out"], true);
    assert_eq!(r["other_hosts"], serde_json::json!([]));
    let recorded: Vec<Value> = record["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|e| serde_json::json!({ "at": e[0], "event": e[1] }))
        .collect();
    assert!(!recorded.is_empty());
    assert_eq!(r["timeline"], Value::Array(recorded.clone()));
    // The host is gone from Rancher: none labelled with the instance any more.
    assert_eq!(json["rancher"]["status"], "ok");
    assert_eq!(json["rancher"]["hosts"], serde_json::json!([]));
    // The local agent was stopped, not removed.
    let c = &json["agent_container"]["container"];
    assert_eq!(c["name"], "rancher-agent", "{c}");
    assert_eq!(c["running"], false, "{c}");
    let engine_view = bed
        .docker
        .container("rancher-agent")
        .await
        .expect("the agent container");
    assert_eq!(c["state"], engine_view.state.as_str());

    let run = status(&bed, &["status"]).await;
    run.assert_code(0);
    let take_out = block(&run.stdout, "take-out");
    assert!(
        take_out[0].starts_with(&format!("{} via ", bed.instance_id))
            && take_out[0].contains(": taken out,"),
        "{}",
        run.stdout
    );
    for (line, entry) in take_out[2..].iter().zip(&recorded) {
        assert_eq!(
            *line,
            format!(
                "{}  {}",
                entry["at"].as_str().unwrap_or_default(),
                entry["event"].as_str().unwrap_or_default()
            )
        );
    }
    assert_eq!(take_out.len(), 2 + recorded.len(), "{}", run.stdout);
    assert_eq!(
        block(&run.stdout, "rancher")[1],
        format!("no host labelled aws.instance_id={}", bed.instance_id)
    );
    assert_eq!(
        block(&run.stdout, "agent")[0],
        format!(
            "rancher-agent {} (not running), image {AGENT_IMAGE}",
            engine_view.state
        )
    );

    unchanged(&bed, &before, &world(&bed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reaper_sweep_the_sweep_is_shown() {
    let bed = Bed::start().await;
    let (dead, dead_host) = bed.add_dead_peer(1, Fate::Gone);
    bed.drover(&["reap"]).await.assert_code(0);
    let before = world(&bed).await;

    let json = status_json(&bed, 0).await;
    let sw = &json["last_sweep"];
    assert_eq!(sw["status"], "recorded", "{sw}");
    let file = bed.state_dir().join("reaper-sweep.json");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("the sweep record"))
            .expect("JSON");
    assert_eq!(sw["record"], record, "the record as the state dir has it");
    assert_eq!(sw["record"]["reaped"], serde_json::json!([dead]));
    assert_eq!(sw["record"]["instance_id"], bed.instance_id.as_str());
    // Not registered here: no record, no host, and that is no failure.
    assert_eq!(json["registration"]["status"], "none");
    assert_eq!(json["rancher"]["hosts"], serde_json::json!([]));

    let run = status(&bed, &["status"]).await;
    run.assert_code(0);
    let sweep = block(&run.stdout, "last-sweep");
    assert!(
        sweep[0].ends_with(&format!("by {}", bed.instance_id)),
        "{}",
        run.stdout
    );
    assert!(
        sweep[1].contains(&format!("reaped {dead};")),
        "{}",
        run.stdout
    );
    assert!(
        sweep.iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.starts_with(&["reaped", dead_host.as_str(), dead.as_str()])
        }),
        "{}",
        run.stdout
    );

    unchanged(&bed, &before, &world(&bed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rancher_hanging_is_unreachable_and_the_rest_is_told() {
    let bed = Bed::start().await;
    let host_id = bed.register().await;
    // Every Rancher request waits far longer than any bound of drover status.
    bed.rancher.faults().set_latency(Duration::from_secs(600));
    let before = world(&bed).await;

    let run = status(&bed, &["status"]).await;
    run.assert_code(0);
    let rancher = block(&run.stdout, "rancher");
    assert_eq!(
        rancher[1], "unreachable: no answer within 6s",
        "{}",
        run.stdout
    );
    assert!(block(&run.stdout, "registration")[0].contains(&host_id));
    assert!(block(&run.stdout, "agent")[0].starts_with("rancher-agent running"));

    let json = status_json(&bed, 0).await;
    assert_eq!(json["rancher"]["status"], "unreachable");
    assert_eq!(json["rancher"]["detail"], "no answer within 6s");
    assert_eq!(json["rancher"]["hosts"], serde_json::json!([]));
    assert_eq!(json["instance"]["status"], "ok");
    assert_eq!(json["registration"]["status"], "recorded");
    assert_eq!(json["agent_container"]["status"], "ok");

    unchanged(&bed, &before, &world(&bed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_down_cannot_tell_and_exits_1() {
    for how in ["failing", "hanging"] {
        let bed = Bed::start().await;
        let host_id = bed.register().await;
        match how {
            "failing" => bed
                .imds
                .faults()
                .fail(Match::any(), Fault::Status(503), usize::MAX),
            _ => bed.imds.set_token_hang(true),
        }
        let before = world(&bed).await;

        let run = status(&bed, &["status"]).await;
        run.assert_code(1);
        assert!(
            block(&run.stdout, "instance")[0].starts_with("unreachable: "),
            "{how}: {}",
            run.stdout
        );
        assert!(
            run.stderr
                .contains("cannot tell: the instance cannot be known"),
            "{how}: {}",
            run.stderr
        );
        // What does not need the instance id is still told.
        assert!(block(&run.stdout, "registration")[0].contains(&host_id));

        let json = status_json(&bed, 1).await;
        assert_eq!(json["instance"]["status"], "unreachable", "{how}");
        assert!(json["instance"]["detail"].is_string(), "{how}");
        assert!(json["instance"]["instance_id"].is_null(), "{how}");
        assert_eq!(json["rancher"]["status"], "unknown", "{how}");
        assert_eq!(json["take_out"]["status"], "unknown", "{how}");
        assert_eq!(json["registration"]["status"], "recorded", "{how}");
        assert_eq!(json["agent_container"]["status"], "ok", "{how}");

        unchanged(&bed, &before, &world(&bed).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_cannot_tell_and_is_left_as_it_is() {
    let bed = Bed::start().await;
    bed.register().await;
    let sweep = bed.state_dir().join("reaper-sweep.json");
    std::fs::write(&sweep, "{not json").expect("write");
    let before = world(&bed).await;

    let json = status_json(&bed, 1).await;
    assert_eq!(json["last_sweep"]["status"], "unreadable");
    let detail = json["last_sweep"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("reaper-sweep.json") && detail.contains("corrupt"),
        "{detail}"
    );
    assert_eq!(json["registration"]["status"], "recorded");
    assert_eq!(json["rancher"]["status"], "ok");

    unchanged(&bed, &before, &world(&bed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_even_when_rancher_refuses() {
    let webhook_token = "T0000/B0000/WebhookSecretPathXYZ";
    let mut bed = Bed::start().await;
    bed.config.rancher.secret_key = Some(Secret::Inline(SECRET.into()));
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    bed.config.pager.webhook_url = Some(format!("{}/hooks/{webhook_token}", bed.pager.url()));
    bed.register().await;
    let registration_urls: Vec<String> = bed
        .rancher
        .bootstraps_seen()
        .iter()
        .filter_map(|b| b.args.first().cloned())
        .collect();
    assert!(!registration_urls.is_empty(), "the bootstrap was seen");

    let mut outputs = Vec::new();
    for args in [&["status"][..], &["status", "--json"][..]] {
        outputs.push(status(&bed, args).await);
    }
    // Rancher refusing the key: its error is shown, the key is not.
    bed.rancher.set_secret_key("another-key-altogether");
    for args in [&["status"][..], &["status", "--json"][..]] {
        let run = status(&bed, args).await;
        run.assert_code(0);
        assert!(run.stdout.contains("401"), "{}", run.stdout);
        outputs.push(run);
    }
    for run in &outputs {
        let all = run.all();
        for secret in [SECRET, ROUTING_KEY, webhook_token] {
            assert!(!all.contains(secret), "{secret} leaked:\n{all}");
        }
        for url in &registration_urls {
            assert!(
                !all.contains(url.as_str()),
                "the registration URL leaked:\n{all}"
            );
        }
    }
}
