//! The scripts stop only what they started: no process matched by name, the beds' daemons
//! recorded by pid (scripts/beds.sh, `testbed::pids`), and the demo takes its bed down on
//! Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every shell script of the repository (scripts/, packaging/, .ci/run).
fn shell_scripts() -> Vec<PathBuf> {
    let mut found = vec![repo(".ci/run")];
    let mut dirs = vec![repo("scripts"), repo("packaging")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "sh")
                || std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with("#!/bin/sh"))
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn no_script_stops_processes_by_name() {
    let scripts = shell_scripts();
    assert!(scripts.iter().any(|p| p.ends_with("scripts/test.sh")));
    for script in scripts {
        let text = std::fs::read_to_string(&script).expect("script");
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or("");
            let words: Vec<&str> = code.split_whitespace().collect();
            for (i, w) in words.iter().enumerate() {
                let by_name = match *w {
                    "killall" | "pidof" => true,
                    // By pattern; `pkill -P <pid>` (children of a pid we hold) is fine.
                    "pkill" | "pgrep" => !words[i + 1..(i + 3).min(words.len())].contains(&"-P"),
                    _ => false,
                };
                assert!(
                    !by_name,
                    "{}:{}: stops processes by name, other checkouts' too: {line}",
                    script.display(),
                    n + 1
                );
            }
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("300")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep")
}

/// Waits (bounded) for `child` to exit.
fn exited(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn beds_stop_stops_the_recorded_processes_and_no_other() {
    let pids = tempfile::tempdir().expect("pids dir");
    let bed_dir = tempfile::Builder::new()
        .prefix("tb-script-test-")
        .tempdir_in("/tmp")
        .expect("bed dir");
    std::fs::write(bed_dir.path().join("dockerd.log"), "x").expect("a file in it");
    let mut recorded = sleeper();
    // Recorded, but as another program: its pid was reused since, so it is not ours.
    let mut reused = sleeper();
    let mut unrelated = sleeper();
    std::fs::write(
        pids.path().join(recorded.id().to_string()),
        format!("sleep\n{}\n", bed_dir.path().display()),
    )
    .expect("record");
    std::fs::write(
        pids.path().join(reused.id().to_string()),
        "dockerd\n/tmp/tb-not-there\n",
    )
    .expect("record");

    let out = Command::new("bash")
        .args(["-c", ". scripts/beds.sh && beds_stop"])
        .current_dir(repo(""))
        .env("DROVER_TESTBED_PIDS", pids.path())
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    assert!(
        exited(&mut recorded, Duration::from_secs(10)),
        "the recorded process runs on"
    );
    assert!(!bed_dir.path().exists(), "the bed's folder is left");
    assert!(
        matches!(reused.try_wait(), Ok(None)),
        "a reused pid was signalled"
    );
    assert!(matches!(unrelated.try_wait(), Ok(None)));
    assert!(!pids.path().exists(), "the records are left");
    for mut child in [reused, unrelated] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What a record in `dir` names: (pid, program, folder).
fn records(dir: &Path) -> Vec<(u32, String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let mut lines = text.lines();
            Some((pid, lines.next()?.to_string(), PathBuf::from(lines.next()?)))
        })
        .collect()
}

fn runs(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(program))
}

#[test]
fn the_demo_takes_its_bed_down_on_ctrl_c() {
    // Beside drover in target/<profile>/, built with the workspace (scripts/test.sh).
    let drover = PathBuf::from(env!("CARGO_BIN_EXE_drover"));
    let testbed = drover.with_file_name("drover-testbed");
    assert!(
        testbed.exists(),
        "{} is missing: cargo build -p testbed",
        testbed.display()
    );
    let pids = tempfile::tempdir().expect("pids dir");
    let log = pids.path().join("demo.log");
    let stderr = std::fs::File::create(&log).expect("demo log");
    let pids_dir = pids.path().join("pids");
    let mut demo = Command::new(&testbed)
        .args(["demo", "--drover"])
        .arg(&drover)
        .current_dir(repo(""))
        .env("DROVER_TESTBED_PIDS", &pids_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("drover-testbed demo");
    // The engine and moto are up once both are recorded.
    let deadline = Instant::now() + Duration::from_secs(90);
    let started = loop {
        let seen = records(&pids_dir);
        if seen.iter().any(|(_, p, _)| p == "dockerd")
            && seen.iter().any(|(_, p, _)| p == "moto_server")
        {
            break seen;
        }
        assert!(Instant::now() < deadline, "the demo's bed never came up");
        assert!(
            matches!(demo.try_wait(), Ok(None)),
            "the demo ended before its bed was up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    assert!(
        exited(&mut demo, Duration::from_secs(60)),
        "the demo runs on after Ctrl-C"
    );
    let status = demo.wait().expect("demo status");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("interrupted"), "{said}");
    for (pid, program, dir) in started {
        assert!(!runs(pid, &program), "{program} ({pid}) left running");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(records(&pids_dir).is_empty(), "records left");
}

/// What `testbed-setup.sh PART` would install on a machine whose PATH has only bash and
/// dirname: no compiler, no pkg-config, no curl, no python3, no Docker.
fn would_install(part: &str) -> Vec<String> {
    let bin = tempfile::tempdir().expect("bin dir");
    for tool in ["bash", "dirname"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} on this machine"));
        std::os::unix::fs::symlink(real, bin.path().join(tool)).expect("symlink");
    }
    let out = Command::new(bin.path().join("bash"))
        .arg(repo("scripts/testbed-setup.sh"))
        .arg(part)
        .env_clear()
        .env("PATH", bin.path())
        .env("DROVER_SETUP_DRY_RUN", "1")
        .output()
        .expect("testbed-setup.sh");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.lines()
        .find_map(|l| l.strip_prefix("testbed-setup: would install:"))
        .unwrap_or_else(|| panic!("no list in: {said}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn setup_installs_what_a_fresh_debian_lacks_and_the_demo_only_what_it_uses() {
    let demo = would_install("demo");
    for needed in [
        "gcc",
        "g++",
        "pkg-config",
        "python3",
        "python3-venv",
        "docker.io",
        "tar",
        "util-linux",
    ] {
        assert!(
            demo.iter().any(|p| p == needed),
            "demo lacks {needed}: {demo:?}"
        );
    }
    for packaging_only in [
        "curl",
        "systemd",
        "cloud-init",
        "rpm",
        "debootstrap",
        "man-db",
        "prometheus",
    ] {
        assert!(
            !demo.iter().any(|p| p == packaging_only),
            "the demo installs {packaging_only}: {demo:?}"
        );
    }
    let base = would_install("base");
    for needed in [
        "gcc",
        "g++",
        "pkg-config",
        "python3-venv",
        "curl",
        "cloud-init",
        "rpm",
    ] {
        assert!(
            base.iter().any(|p| p == needed),
            "base lacks {needed}: {base:?}"
        );
    }
}
