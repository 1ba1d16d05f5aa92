//! Boot overhead: `drover register` wall time minus the Docker engine's own time to create
//! and start the same container, with the Rancher stand-in answering at once.

use std::time::Duration;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

use super::{endpoints, instance, median_p95, ms, Node, Row, Settings};
use crate::autoscaling::AutoScalingServer;
use crate::bed::{add_group, GROUP, HOOK_TIMEOUT};
use crate::docker::{DockerEngine, AGENT_IMAGE};
use crate::imds::ImdsServer;
use crate::rancher::{RancherOptions, RancherServer};

/// Removes every container, so that each run starts from a clean engine.
async fn clean(docker: &DockerEngine) -> Result<(), String> {
    let client = docker.client().await.map_err(|e| e.to_string())?;
    for c in docker.containers().await {
        let _ = client
            .remove_container(
                &c.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    Ok(())
}

/// The engine's own create + start of a container of the agent image, as drover asks.
async fn engine_create_start(docker: &DockerEngine, n: usize) -> Result<Duration, String> {
    let client = docker.client().await.map_err(|e| e.to_string())?;
    let began = tokio::time::Instant::now();
    let name = format!("bench-baseline-{n}");
    client
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(AGENT_IMAGE.to_string()),
                cmd: Some(vec!["http://127.0.0.1:9/v1/scripts/baseline".to_string()]),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    client
        .start_container(
            &name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(began.elapsed())
}

pub async fn run(settings: &Settings, docker: &DockerEngine) -> Result<Vec<Row>, String> {
    let runs = settings.runs.clamp(1, 10);
    let (mut register, mut engine, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..runs {
        clean(docker).await?;
        let opts = instance(200 + n);
        let imds = ImdsServer::start(opts.clone()).await;
        let rancher = RancherServer::start(RancherOptions {
            token_create_delay: Duration::ZERO,
            register_delay: Duration::ZERO,
            transition_delay: Duration::ZERO,
            ..RancherOptions::default()
        })
        .await;
        // An active token, as on a server that has registered hosts before.
        rancher.add_registration_token(true);
        rancher.watch(docker);
        let asg = AutoScalingServer::start().await;
        add_group(&asg, HOOK_TIMEOUT);
        asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
        let node = Node::new(&opts.instance_id).map_err(|e| e.to_string())?;
        node.write_config(&rancher, None, Duration::ZERO, "info")
            .map_err(|e| e.to_string())?;
        let launcher = node.launcher(
            &settings.drover,
            &endpoints(&imds, &asg, None, docker),
            &["register"],
        );
        let began = tokio::time::Instant::now();
        let run = launcher.run(Duration::from_secs(300)).await?;
        let took = began.elapsed();
        if run.code != Some(0) {
            return Err(format!(
                "drover register failed ({:?}):\n{}",
                run.code,
                super::tail(&run.stderr, 20)
            ));
        }
        clean(docker).await?;
        let own = engine_create_start(docker, n).await?;
        register.push(took);
        engine.push(own);
        overhead.push(took.saturating_sub(own));
    }
    clean(docker).await?;
    let (r_med, r_p95) = median_p95(&register);
    let (e_med, _) = median_p95(&engine);
    let (o_med, o_p95) = median_p95(&overhead);
    println!(
        "boot: register median {}, engine create+start median {}",
        ms(r_med),
        ms(e_med)
    );
    Ok(vec![
        Row::new(
            "boot",
            format!("drover register, wall ({runs} runs)"),
            format!("median {}, p95 {}", ms(r_med), ms(r_p95)),
        ),
        Row::new(
            "boot",
            "engine's own create + start",
            format!("median {}", ms(e_med)),
        ),
        Row::new(
            "boot",
            "register overhead beyond the engine",
            format!("median {}, p95 {}", ms(o_med), ms(o_p95)),
        ),
    ])
}
