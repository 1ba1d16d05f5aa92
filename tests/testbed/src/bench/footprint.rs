//! Footprint of an idle `drover run` after registration, per source mode: memory, CPU,
//! threads, descriptors, and the AWS calls it makes while idle, counted at the stand-ins.

use std::time::Duration;

use super::{start_watching_with, Row, Settings};
use crate::docker::DockerEngine;
use crate::moto::MotoServer;
use crate::rancher::RancherOptions;

/// What /proc says about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// Time on the CPU, in nanoseconds (schedstat: exact, where utime + stime count
    /// 10 ms ticks and would round a quiet minute to zero or one).
    pub cpu_ns: u64,
    /// Resident anonymous memory (heap, stacks) and file-backed (the binary's pages).
    pub anon_kib: u64,
    pub file_kib: u64,
}

pub fn sample(pid: u32) -> std::io::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let cpu_ns = schedstat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
        cpu_ns,
        anon_kib: field("RssAnon:"),
        file_kib: field("RssFile:"),
    })
}

/// The idle measurement of one mode.
pub struct Idle {
    pub mode: &'static str,
    pub start: ProcSample,
    pub end: ProcSample,
    pub window: Duration,
    pub sqs_calls: usize,
    pub autoscaling_calls: usize,
    pub imds_requests: usize,
}

impl Idle {
    pub fn cpu_seconds_per_hour(&self) -> f64 {
        let ns = self.end.cpu_ns.saturating_sub(self.start.cpu_ns) as f64;
        ns / 1e9 * 3600.0 / self.window.as_secs_f64()
    }

    pub fn per_hour(&self, n: usize) -> f64 {
        n as f64 * 3600.0 / self.window.as_secs_f64()
    }
}

/// Runs `drover run` in one mode and watches it idle for `settings.idle`.
async fn idle_in_mode(
    settings: &Settings,
    mode: &'static str,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Idle, String> {
    let queue = match mode {
        "sqs" => Some(
            moto.create_queue(&format!("idle-{}", std::process::id()), None)
                .await,
        ),
        _ => None,
    };
    let mut w = start_watching_with(
        settings,
        1,
        RancherOptions::default(),
        queue.as_deref(),
        mode == "imds-ssm",
        docker,
        moto,
    )
    .await?;
    let pid = w.drover.pid().ok_or("drover exited at once")?;
    // Let start-up settle (the first long poll, the first IMDS read).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let moto_before = receive_calls(moto);
    let asg_before = w.asg.requests().len();
    let imds_before = w.imds.requests().len();
    let start = sample(pid).map_err(|e| e.to_string())?;
    let began = tokio::time::Instant::now();
    tokio::time::sleep(settings.idle).await;
    let end = sample(pid).map_err(|e| e.to_string())?;
    let window = began.elapsed();
    let idle = Idle {
        mode,
        start,
        end,
        window,
        sqs_calls: receive_calls(moto).saturating_sub(moto_before),
        autoscaling_calls: w.asg.requests().len().saturating_sub(asg_before),
        imds_requests: w.imds.requests().len().saturating_sub(imds_before),
    };
    w.stop().await;
    Ok(idle)
}

/// SQS API calls moto answered so far (its request log has one line per call).
fn receive_calls(moto: &MotoServer) -> usize {
    moto.log()
        .lines()
        .filter(|l| l.contains("POST / HTTP"))
        .count()
}

pub async fn run(
    settings: &Settings,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let binary = std::fs::metadata(&settings.drover)
        .map_err(|e| e.to_string())?
        .len();
    rows.push(Row::new(
        "footprint",
        "release binary, stripped",
        format!("{:.2} MiB", binary as f64 / 1024.0 / 1024.0),
    ));
    for mode in ["imds", "imds-ssm", "sqs"] {
        let idle = match idle_in_mode(settings, mode, docker, moto).await {
            Ok(idle) => idle,
            // A drover from before `secret_key_ssm`, measured for comparison.
            Err(e) if mode == "imds-ssm" => {
                println!(
                    "footprint {mode}: skipped ({})",
                    e.lines().next().unwrap_or("")
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        let label = match mode {
            "imds" => "idle, IMDS polling (5s)",
            "imds-ssm" => "idle, IMDS polling, Rancher key from SSM",
            _ => "idle, SQS long polling",
        };
        let rss_mib = idle.end.rss_kib as f64 / 1024.0;
        let hwm_mib = idle.end.hwm_kib as f64 / 1024.0;
        rows.push(
            Row::new(
                "footprint",
                format!("{label}: VmRSS"),
                format!(
                    "{rss_mib:.2} MiB (anon {:.2}, file {:.2})",
                    idle.end.anon_kib as f64 / 1024.0,
                    idle.end.file_kib as f64 / 1024.0
                ),
            )
            .target("<= 8 MiB", rss_mib <= 8.0),
        );
        rows.push(Row::new(
            "footprint",
            format!("{label}: VmHWM"),
            format!("{hwm_mib:.2} MiB"),
        ));
        let cpu = idle.cpu_seconds_per_hour();
        rows.push(
            Row::new(
                "footprint",
                format!("{label}: CPU per hour"),
                format!("{cpu:.2} s"),
            )
            .target("<= 0.5 s", cpu <= 0.5),
        );
        rows.push(Row::new(
            "footprint",
            format!("{label}: threads, fds"),
            format!("{}, {}", idle.end.threads, idle.end.fds),
        ));
        let aws = idle.sqs_calls + idle.autoscaling_calls;
        let aws_row = Row::new(
            "aws calls",
            format!("idle host-hour, {mode} source"),
            format!(
                "{:.0} (SQS {:.0}, Auto Scaling {:.0}; IMDS {:.0})",
                idle.per_hour(aws),
                idle.per_hour(idle.sqs_calls),
                idle.per_hour(idle.autoscaling_calls),
                idle.per_hour(idle.imds_requests)
            ),
        );
        rows.push(if mode != "sqs" {
            aws_row.target("0", aws == 0)
        } else {
            aws_row
        });
        println!(
            "footprint {mode}: measured for {:.0}s",
            idle.window.as_secs_f64()
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_process() {
        let s = super::sample(std::process::id()).expect("own /proc");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        assert!(s.threads >= 1 && s.fds >= 3, "{s:?}");
        assert!(s.anon_kib + s.file_kib <= s.rss_kib + 1, "{s:?}");
    }
}
