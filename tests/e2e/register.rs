//! `drover register` end to end: the built binary against the IMDS, Rancher and Auto Scaling
//! stand-ins and a private Docker engine.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use testbed::bed::{all_files_text, Bed, BedOptions, DockerMode, ACCESS, SECRET};
use testbed::config::LogFormat;
use testbed::docker::AGENT_ENTRYPOINT;
use testbed::http::{Fault, Match};
use testbed::imds::ImdsOptions;
use testbed::notify::Notice;
use testbed::rancher::{HostSpec, RancherOptions};
use testbed::registry::RegistryServer;

const LONG: Duration = Duration::from_secs(60);

fn env_of(seen: &testbed::rancher::BootstrapSeen, name: &str) -> Option<String> {
    seen.env
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{name}=")).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_environment_gets_a_token_and_the_host_joins() {
    // Whether the machine had the agent's state folder before: a bed must not make one.
    let had_rancher_dir = std::path::Path::new("/var/lib/rancher").exists();
    let bed = Bed::start().await;
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);

    // No token existed: drover created exactly one and waited for it.
    assert_eq!(bed.rancher.tokens_created(), 1, "{}", run.stderr);

    // One bootstrap container, started as Rancher's own command does.
    let seen = bed.rancher.bootstraps_seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let b = &seen[0];
    assert_eq!(b.image, "rancher/agent:v1.2.11");
    assert_eq!(b.args.len(), 1, "{:?}", b.args);
    assert!(
        b.args[0].starts_with(&format!("{}/v1/scripts/", bed.rancher.url())),
        "{:?}",
        b.args
    );
    assert!(b.auto_remove, "bootstrap runs with --rm");
    assert!(!b.privileged, "agent.privileged = false is honoured");
    let socket = bed.docker.socket().display().to_string();
    assert!(
        b.binds.contains(&format!("{socket}:/var/run/docker.sock")),
        "{:?}",
        b.binds
    );
    assert!(
        b.binds
            .contains(&"/var/lib/rancher:/var/lib/rancher".to_string()),
        "{:?}",
        b.binds
    );
    assert_eq!(env_of(b, "CATTLE_AGENT_IP").as_deref(), Some("10.0.1.23"));
    let labels: BTreeMap<String, String> = url::form_urlencoded::parse(
        env_of(b, "CATTLE_HOST_LABELS")
            .expect("CATTLE_HOST_LABELS set")
            .as_bytes(),
    )
    .into_owned()
    .collect();
    let expect = [
        ("aws.instance_id", bed.instance_id.as_str()),
        ("aws.instance_type", "m5.large"),
        ("aws.availability_zone", "us-east-1b"),
        ("aws.region", "us-east-1"),
        ("aws.autoscaling_group", "crawlers"),
        ("aws.ami_id", "ami-0abcdef1234567890"),
        ("role", "crawling"),
        ("env", "prod"),
    ];
    for (k, v) in expect {
        assert_eq!(
            labels.get(k).map(String::as_str),
            Some(v),
            "label {k}: {labels:?}"
        );
    }

    // The host is active in Rancher with those labels, and the agent runs in the engine.
    let hosts = bed.my_hosts();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].state, "active");
    assert_eq!(
        hosts[0].labels.get("role").map(String::as_str),
        Some("crawling")
    );
    let docker = bed.docker.client().await.expect("docker client");
    let agent = docker
        .inspect_container("rancher-agent", None)
        .await
        .expect("rancher-agent exists");
    assert_eq!(agent.state.and_then(|s| s.running), Some(true));

    // The bind of /var/lib/rancher landed in the engine's private layer, not on the machine
    // (where the machine has one already, the layer shows it and the engine made nothing).
    if !had_rancher_dir {
        assert!(
            bed.docker.private_var_lib().join("rancher").is_dir(),
            "the engine made /var/lib/rancher in its own layer"
        );
        assert!(
            !std::path::Path::new("/var/lib/rancher").exists(),
            "the bed created /var/lib/rancher on the machine"
        );
    }

    // The registration is recorded with host and instance.
    let rec = bed.registration().expect("registration.json written");
    assert_eq!(rec["host_id"], hosts[0].id.as_str());
    assert_eq!(rec["instance_id"], bed.instance_id.as_str());
    assert!(rec["registered_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Log lines about the host carry its instance id and host id.
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("host active in Rancher"))
        .unwrap_or_else(|| panic!("no 'host active' line in:\n{}", run.stderr));
    assert!(
        line.contains(&bed.instance_id) && line.contains(&hosts[0].id),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_still_registering_is_waited_for_not_duplicated() {
    let bed = Bed::with(BedOptions {
        rancher: RancherOptions {
            token_create_delay: Duration::from_secs(3),
            ..BedOptions::default().rancher
        },
        ..BedOptions::default()
    })
    .await;
    bed.rancher.add_registration_token(false);
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);
    assert_eq!(
        bed.rancher.tokens_created(),
        0,
        "used the token being created"
    );
    assert_eq!(bed.rancher.bootstraps_seen().len(), 1);
    assert_eq!(bed.my_hosts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_coming_up_after_drover_is_waited_for() {
    let mut bed = Bed::with(BedOptions {
        docker: DockerMode::Later,
        ..BedOptions::default()
    })
    .await;
    // The image is baked into the machine image: prepare the engine's data, then stop it,
    // so that only the engine's start is late.
    bed.docker.start().await.expect("engine starts");
    bed.docker
        .import_agent_image(testbed::docker::AGENT_IMAGE)
        .await
        .expect("image");
    bed.docker.stop();

    let mut run = bed.spawn(&["register"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    bed.docker.start().await.expect("engine starts late");
    let code = run
        .wait(Duration::from_secs(90))
        .await
        .expect("drover finishes");
    let stderr = run.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("waiting for the Docker engine"), "{stderr}");
    assert_eq!(bed.my_hosts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_answering_500_at_first_is_retried() {
    let bed = Bed::start().await;
    bed.imds.fail(Match::any(), Fault::Status(500), 4);
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);
    let failures = bed
        .imds
        .requests()
        .iter()
        .filter(|r| r.status == 500)
        .count();
    assert_eq!(failures, 4, "the stand-in really answered 500s");
    assert_eq!(bed.my_hosts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_token_refused_says_imds_may_be_disabled() {
    let mut bed = Bed::start().await;
    bed.imds.set_token_hang(true);
    bed.config.agent.register_timeout = Some(Duration::from_secs(6));
    let run = bed.drover(&["register"]).await;
    run.assert_code(1);
    assert!(
        run.stderr.contains("hop limit") && run.stderr.contains("disabled"),
        "{}",
        run.stderr
    );
    // The failure is said once: the error line, not the error line and a second copy.
    let said = run
        .stderr
        .lines()
        .filter(|l| !l.contains(" WARN ") && l.contains("did not answer"))
        .count();
    assert_eq!(said, 1, "{}", run.stderr);
    assert!(bed.rancher.bootstraps_seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_twice_starts_one_container_and_one_host() {
    let bed = Bed::start().await;
    bed.drover(&["register"]).await.assert_code(0);
    let record = std::fs::read(bed.state_dir().join("registration.json")).expect("record");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = bed.drover(&["register"]).await;
    second.assert_code(0);
    assert_eq!(
        std::fs::read(bed.state_dir().join("registration.json")).expect("record"),
        record,
        "the record is left as it was"
    );
    assert!(
        second.stderr.contains("already registered"),
        "{}",
        second.stderr
    );
    assert_eq!(bed.rancher.bootstraps_seen().len(), 1);
    assert_eq!(bed.my_hosts().len(), 1);
    assert_eq!(bed.rancher.tokens_created(), 1);
    let docker = bed.docker.client().await.expect("docker client");
    let all = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .build(),
        ))
        .await
        .expect("list");
    let agents = all
        .iter()
        .filter(|c| {
            c.names
                .as_ref()
                .is_some_and(|n| n.iter().any(|n| n == "/rancher-agent"))
        })
        .count();
    assert_eq!(agents, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_agent_with_its_host_registering_is_not_started_again() {
    let mut bed = Bed::with(BedOptions {
        rancher: RancherOptions {
            register_delay: Duration::from_secs(8),
            ..BedOptions::default().rancher
        },
        ..BedOptions::default()
    })
    .await;
    // First run gives up while the host is still registering; the agent keeps running.
    let register_timeout = bed.config.agent.register_timeout;
    bed.config.agent.register_timeout = Some(Duration::from_secs(4));
    let run = bed.drover(&["register"]).await;
    run.assert_code(1);
    assert!(run.stderr.contains("not active within"), "{}", run.stderr);
    // The second run finds the agent and the registering host, and only waits.
    bed.config.agent.register_timeout = register_timeout;
    let second = bed.drover(&["register"]).await;
    second.assert_code(0);
    assert!(
        second
            .stderr
            .contains("already running; not starting another"),
        "{}",
        second.stderr
    );
    assert_eq!(bed.rancher.bootstraps_seen().len(), 1);
    assert_eq!(bed.my_hosts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_instance_is_not_registered() {
    let bed = Bed::with(BedOptions {
        imds: ImdsOptions {
            target_lifecycle_state: Some("Warmed:Stopped".into()),
            ..ImdsOptions::default()
        },
        ..BedOptions::default()
    })
    .await;
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);
    assert!(run.stderr.contains("warm pool"), "{}", run.stderr);
    assert!(bed.rancher.bootstraps_seen().is_empty());
    assert!(bed.rancher.requests().is_empty(), "Rancher not even asked");
    assert!(bed.registration().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_in_the_warm_pool_registers_in_service_and_stops_cleanly_there() {
    let mut bed = Bed::with(BedOptions {
        imds: ImdsOptions {
            target_lifecycle_state: Some("Warmed:Running".into()),
            ..ImdsOptions::default()
        },
        ..BedOptions::default()
    })
    .await;
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    let readies = |run: &testbed::launch::Running| {
        run.notices()
            .iter()
            .filter(|n| **n == Notice::Ready)
            .count()
    };

    // Auto Scaling stops the instance while it waits: a clean exit, nothing registered,
    // so that systemd doesn't mark the unit failed on every parked instance.
    let mut run = bed.spawn(&["run"]);
    // Ready while it waits, so that boot goes on.
    run.wait_status("waiting in the warm pool", LONG)
        .await
        .expect("waiting in the warm pool");
    let notices = run.notices();
    let ready = notices.iter().position(|n| *n == Notice::Ready);
    let waiting = notices
        .iter()
        .position(|n| matches!(n, Notice::Status(s) if s.contains("warm pool")));
    assert!(ready.is_some() && ready < waiting, "{notices:?}");
    assert_eq!(
        run.stop(LONG).await.expect("stops"),
        Some(0),
        "{}",
        run.output()
    );
    assert!(run.output().contains("nothing was registered"));
    assert!(bed.rancher.bootstraps_seen().is_empty());

    // Put in service while drover waits: it registers then.
    let mut run = bed.spawn(&["run"]);
    run.wait_status("waiting in the warm pool", LONG)
        .await
        .expect("waiting in the warm pool");
    bed.imds.set_target_lifecycle_state(Some("InService"));
    run.wait_status("watching for termination", LONG)
        .await
        .expect("registered and watching");
    assert_eq!(readies(&run), 2, "{:?}", run.notices());
    assert_eq!(bed.my_hosts().len(), 1);
    assert!(bed.registration().is_some());
    assert_eq!(
        run.stop(LONG).await.expect("stops"),
        Some(0),
        "{}",
        run.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_only_server_paged_hosts_and_a_ghost_with_the_same_hostname() {
    let bed = Bed::with(BedOptions {
        rancher: RancherOptions {
            v2beta: false,
            page_size: 2,
            ..BedOptions::default().rancher
        },
        ..BedOptions::default()
    })
    .await;
    // Other hosts fill several pages; one is a ghost with this engine's hostname.
    let info = bed
        .docker
        .client()
        .await
        .expect("client")
        .info()
        .await
        .expect("info");
    let hostname = info.name.unwrap_or_default();
    for i in 0..5 {
        bed.rancher.add_host(HostSpec {
            hostname: if i == 0 {
                hostname.clone()
            } else {
                format!("peer-{i}")
            },
            labels: BTreeMap::from([("aws.instance_id".to_string(), format!("i-peer{i}"))]),
            state: "active".into(),
            agent_state: if i == 0 {
                Some("disconnected".into())
            } else {
                None
            },
            agent_ip: format!("10.0.2.{i}"),
        });
    }
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);
    assert!(
        bed.rancher
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/v2-beta/projects")),
        "auto picked v1 on a server without v2-beta"
    );
    let mine = bed.my_hosts();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        bed.registration().expect("recorded")["host_id"],
        mine[0].id.as_str()
    );
    // Running again must find this host across pages, not the ghost.
    let again = bed.drover(&["register"]).await;
    again.assert_code(0);
    assert!(
        again.stderr.contains("already registered"),
        "{}",
        again.stderr
    );
    let paged = bed
        .rancher
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/hosts") && r.query.contains("marker"))
        .count();
    assert!(paged > 0, "hosts were listed across pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_no_secret_anywhere() {
    let mut bed = Bed::start().await;
    bed.config.log.format = Some(LogFormat::Json);
    bed.config.log.level = Some("trace".into());
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);
    let check = bed.drover(&["check"]).await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ACCESS}:{SECRET}"));
    for (what, text) in [
        ("register output", run.all()),
        ("check output", check.all()),
        ("state dir", all_files_text(&bed.state_dir())),
    ] {
        assert!(!text.contains(SECRET), "secret in {what}:\n{text}");
        assert!(
            !text.contains(&basic),
            "basic auth header in {what}:\n{text}"
        );
    }
    // Every line is JSON; lines about the host carry instance id (and host id once known).
    let mut saw_host_id = false;
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if let Some(span) = v.get("span") {
            assert_eq!(span["instance_id"], bed.instance_id.as_str(), "{line}");
            saw_host_id |= span.get("host_id").is_some();
        }
    }
    assert!(saw_host_id, "{}", run.stderr);
}

/// Registers with `agent.image` pinned by digest to an image that only a registry stand-in
/// has: the real engine pulls it by digest, and the agent runs from it.
async fn registers_with_an_image_pinned_by_digest(pinned: impl Fn(&RegistryServer) -> String) {
    let mut bed = Bed::start().await;
    let layer = bed
        .docker
        .agent_image_tar()
        .await
        .expect("the agent image's root");
    let registry = RegistryServer::start("rancher/agent", "v1.2.11", layer, &AGENT_ENTRYPOINT)
        .await
        .expect("registry stand-in");
    let image = pinned(&registry);
    bed.config.agent.image = Some(image.clone());
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);

    // Pulled from the registry by the digest, whatever tag stands beside it.
    let manifests: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/manifests/") && r.status == 200)
        .map(|r| r.path)
        .collect();
    assert!(
        !manifests.is_empty()
            && manifests
                .iter()
                .all(|p| p == &format!("/v2/rancher/agent/manifests/{}", registry.digest())),
        "{manifests:?}\n{}",
        run.stderr
    );
    let docker = bed.docker.client().await.expect("docker client");
    let pulled = docker
        .inspect_image(&image)
        .await
        .expect("the pinned image");
    let repo_digest = format!("{}/rancher/agent@{}", registry.host(), registry.digest());
    assert!(
        pulled
            .repo_digests
            .unwrap_or_default()
            .contains(&repo_digest),
        "{repo_digest}"
    );

    // The bootstrap ran the pinned image as given, and the host joined.
    let seen = bed.rancher.bootstraps_seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].image, image);
    assert_eq!(bed.my_hosts().len(), 1);

    // A second register finds the image there and pulls nothing.
    let pulls = manifests.len();
    bed.drover(&["register"]).await.assert_code(0);
    assert_eq!(
        registry
            .requests()
            .iter()
            .filter(|r| r.path.contains("/manifests/") && r.status == 200)
            .count(),
        pulls,
        "pulled again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_image_by_digest_is_pulled_by_digest() {
    registers_with_an_image_pinned_by_digest(RegistryServer::by_digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_image_by_tag_and_digest_is_pulled_by_the_digest() {
    registers_with_an_image_pinned_by_digest(RegistryServer::by_tag_and_digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_without_ca_certificates_fails_readably_and_never_panics() {
    // A root without ca-certificates (the scratch root once): the TLS stack loads no roots,
    // so no HTTP client can be built. drover once panicked there (exit 101) building the
    // IMDS client; it must fail as any other boot failure does, saying why.
    let bed = Bed::start().await;
    let run = bed
        .launcher(&["register"])
        .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
        .env("SSL_CERT_DIR", "/nonexistent")
        .run(LONG)
        .await
        .expect("drover register runs to its end");
    assert_eq!(run.code, Some(1), "{}", bed.what_the_bed_saw(&run));
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(
        run.stderr.contains("No CA certificates were loaded"),
        "{}",
        run.stderr
    );
    assert!(bed.my_hosts().is_empty());
}
