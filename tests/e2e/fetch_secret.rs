//! `packaging/fetch-secret`, the boot-time helper the userdata examples run, against a real
//! AWS CLI (from PyPI), moto's SSM and Secrets Manager, and the IMDS stand-in for the
//! region: what lands in the file, its mode, retries, and that the secret is never printed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testbed::imds::{ImdsOptions, ImdsServer};
use testbed::moto::MotoServer;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RANCHER_SECRET: &str = "rk-Zq81yT0pLm";
const PAGERDUTY_KEY: &str = "pd-R0utingKey-77";

fn aws_bin() -> PathBuf {
    let bin = Path::new(ROOT).join(".testbed/awscli/bin");
    assert!(
        bin.join("aws").exists(),
        "the AWS CLI is missing: run scripts/testbed-setup.sh (the test command does)"
    );
    bin
}

/// The helper with the AWS CLI on PATH, pointed at moto (and, without AWS_REGION, at the
/// IMDS stand-in for the region).
/// Blocking: the stand-ins run on the runtime's worker threads meanwhile.
fn fetch(moto: &MotoServer, imds: Option<&ImdsServer>, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        aws_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(Path::new(ROOT).join("packaging/fetch-secret"));
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("FETCH_SECRET_ATTEMPTS", "2");
    match imds {
        Some(imds) => cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
        None => cmd.env("AWS_REGION", "us-east-1"),
    };
    cmd.output().expect("run fetch-secret")
}

/// Puts the two secrets into moto with the same CLI.
fn seed(moto: &MotoServer) {
    let aws = |args: &[&str]| {
        let out = Command::new(aws_bin().join("aws"))
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", moto.url())
            .output()
            .expect("aws");
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    aws(&[
        "ssm",
        "put-parameter",
        "--name",
        "/drover/rancher-secret-key",
        "--type",
        "SecureString",
        "--value",
        RANCHER_SECRET,
    ]);
    aws(&[
        "secretsmanager",
        "create-secret",
        "--name",
        "drover/pagerduty",
        "--secret-string",
        PAGERDUTY_KEY,
    ]);
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_land_in_0600_files_that_drover_reads_and_are_never_printed() {
    let moto = MotoServer::start().await.expect("moto");
    seed(&moto);
    let imds = ImdsServer::start(ImdsOptions::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // /etc/drover may not exist yet: the helper makes it, private.
    let etc = dir.path().join("etc-drover");
    let rancher = etc.join("rancher.secret");
    let pager = etc.join("pagerduty.key");

    let out = fetch(
        &moto,
        None,
        &[
            "ssm:/drover/rancher-secret-key",
            rancher.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(!printed(&out).contains(RANCHER_SECRET));

    // The region from IMDSv2, as on an instance with no AWS_REGION.
    let out = fetch(
        &moto,
        Some(&imds),
        &[
            "secretsmanager:drover/pagerduty",
            pager.to_str().expect("utf-8 path"),
        ],
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(!printed(&out).contains(PAGERDUTY_KEY));
    assert!(
        imds.requests()
            .iter()
            .any(|r| r.path == "/latest/meta-data/placement/region" && r.status == 200),
        "the region came from IMDS"
    );

    for (file, value) in [(&rancher, RANCHER_SECRET), (&pager, PAGERDUTY_KEY)] {
        let text = std::fs::read_to_string(file).expect("secret file");
        assert_eq!(text.trim_end(), value);
        let mode = std::fs::metadata(file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    let mode = std::fs::metadata(&etc).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // Nothing half-written is left beside them.
    let names: Vec<String> = std::fs::read_dir(&etc)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_parameter_retries_then_fails_and_keeps_the_previous_file() {
    let moto = MotoServer::start().await.expect("moto");
    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("rancher.secret");
    std::fs::write(&dest, "previous").expect("previous secret");
    let out = fetch(
        &moto,
        None,
        &["ssm:/drover/absent", dest.to_str().expect("utf-8 path")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let said = printed(&out);
    assert!(said.contains("attempt 1"), "{said}");
    assert!(said.contains("ParameterNotFound"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&dest).ok().as_deref(),
        Some("previous")
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &[][..],
        &["ssm:/x"][..],
        &["vault:/x", "/tmp/x"][..],
        &["ssm:", "/tmp/x"][..],
        &["ssm:/x", "relative/path"][..],
    ] {
        let out = Command::new(Path::new(ROOT).join("packaging/fetch-secret"))
            .args(args)
            .output()
            .expect("run fetch-secret");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", printed(&out));
    }
}
