//! The version scheme (CHANGELOG.md, "Versions"): one version, Cargo's workspace one; a
//! CHANGELOG in the Keep a Changelog format with a section for it; packages that carry it;
//! and pre-releases that both package formats sort before their release, checked with the
//! real packaging tools, dpkg and rpm.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn output(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

/// stdout of a command that must succeed, trimmed.
fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&crate::packaging::run(cmd).stdout)
        .trim()
        .to_string()
}

/// What `packaging/package-version <format> [version]` prints, or its exit code.
fn package_version(format: &str, version: Option<&str>) -> Result<String, i32> {
    let mut cmd = Command::new(repo("packaging/package-version"));
    cmd.arg(format).args(version);
    let out = output(&mut cmd);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

/// `X.Y.Z` or `X.Y.Z-pre`, as numbers and the pre-release.
fn semver(version: &str) -> ([u64; 3], Option<String>) {
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre.to_string())),
        None => (version, None),
    };
    let numbers: Vec<u64> = core
        .split('.')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{version:?} is not SemVer"))
        })
        .collect();
    assert_eq!(numbers.len(), 3, "{version:?} is not X.Y.Z");
    ([numbers[0], numbers[1], numbers[2]], pre)
}

#[test]
fn the_changelog_keeps_a_changelog_and_has_the_cargo_version() {
    let text = std::fs::read_to_string(repo("CHANGELOG.md")).expect("CHANGELOG.md");
    let releases: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("## ["))
        .collect();
    assert_eq!(
        releases.first().copied(),
        Some("Unreleased]"),
        "CHANGELOG.md: the first section is [Unreleased]"
    );
    let mut versions = Vec::new();
    for heading in &releases[1..] {
        let (version, date) = heading.split_once("] - ").unwrap_or_else(|| {
            panic!("CHANGELOG.md: `## [{heading}` is not `## [X.Y.Z] - YYYY-MM-DD`")
        });
        let ok_date = date.len() == 10
            && date.chars().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            });
        assert!(
            ok_date,
            "CHANGELOG.md: {version}'s date {date:?} is not YYYY-MM-DD"
        );
        versions.push((semver(version), version.to_string(), date.to_string()));
    }
    // Newest first, by version and by date.
    for pair in versions.windows(2) {
        assert!(
            pair[0].0 .0 > pair[1].0 .0 && pair[0].2 >= pair[1].2,
            "CHANGELOG.md: {} is listed above {} but is not newer",
            pair[0].1,
            pair[1].1
        );
    }
    assert!(
        versions.iter().any(|(_, v, _)| v == VERSION),
        "CHANGELOG.md has no `## [{VERSION}] - <date>` section for the workspace version \
         (a release moves Unreleased there)"
    );
    // Only Keep a Changelog's kinds of change, each section with entries.
    let kinds = [
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    ];
    let mut in_section = false;
    let mut entries = 0;
    let mut kind_line = "";
    for line in text.lines().chain(["## (end)"]) {
        let heading = line.starts_with("## ") || line.starts_with("### ");
        if heading && !kind_line.is_empty() {
            assert!(entries > 0, "CHANGELOG.md: `{kind_line}` has no entries");
            kind_line = "";
        }
        if line.starts_with("## ") {
            in_section = line.starts_with("## [");
        } else if let Some(kind) = line.strip_prefix("### ") {
            assert!(in_section, "CHANGELOG.md: `{line}` outside a release");
            assert!(
                kinds.contains(&kind),
                "CHANGELOG.md: `{line}` is not one of {kinds:?}"
            );
            kind_line = line;
            entries = 0;
        } else if line.starts_with("- ") {
            entries += 1;
        }
    }
    // The scheme is written down where the README points.
    assert!(
        text.contains("## Versions"),
        "CHANGELOG.md: no Versions section"
    );
    let readme = std::fs::read_to_string(repo("README.md")).expect("README.md");
    assert!(
        readme.contains("CHANGELOG.md"),
        "README.md does not point at CHANGELOG.md"
    );
}

#[test]
fn the_built_packages_carry_the_cargo_version() {
    let (debs, rpms) = (crate::packaging::debs(), crate::packaging::rpms());
    let deb = stdout(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&debs.deb)
            .arg("Version"),
    );
    let deb_upstream = package_version("deb", None).expect("package-version deb");
    assert_eq!(deb, format!("{deb_upstream}-1"), "the .deb's Version");
    let rpm = stdout(
        Command::new("rpm")
            .args(["-qp", "--nosignature", "--qf", "%{VERSION}-%{RELEASE}"])
            .arg(&rpms.rpm),
    );
    let rpm_upstream = package_version("rpm", None).expect("package-version rpm");
    assert_eq!(
        rpm,
        format!("{rpm_upstream}-1"),
        "the .rpm's Version-Release"
    );
    // For a release, that is the Cargo version itself.
    if semver(VERSION).1.is_none() {
        assert_eq!(deb_upstream, VERSION);
        assert_eq!(rpm_upstream, VERSION);
    }
    // The release script builds the .rpm with the same script as the tests, which takes
    // the Version from packaging/package-version.
    let build = std::fs::read_to_string(repo("packaging/build.sh")).expect("build.sh");
    let rpm_build = std::fs::read_to_string(repo("packaging/rpm/build")).expect("rpm/build");
    assert!(
        build.contains("packaging/rpm/build \"$target\"")
            && rpm_build.contains("version=$(\"$src/packaging/package-version\" rpm)")
            && rpm_build.contains("--define \"drover_version $version\""),
        "packaging/build.sh sets the .rpm's Version from packaging/package-version"
    );
}

/// dpkg's and rpm's order of two versions: true when `a` sorts before `b` in both.
fn older_in_both(deb_a: &str, deb_b: &str, rpm_a: &str, rpm_b: &str) -> bool {
    let deb = output(Command::new("dpkg").args(["--compare-versions", deb_a, "lt", deb_b]))
        .status
        .success();
    let rpm = stdout(Command::new("rpm").arg("--eval").arg(format!(
        "%{{lua:print(rpm.vercmp(\"{rpm_a}\", \"{rpm_b}\"))}}"
    )));
    deb && rpm == "-1"
}

#[test]
fn package_version_maps_pre_releases_and_refuses_what_packages_cannot_carry() {
    for (version, packaged) in [
        ("0.1.0", "0.1.0"),
        ("1.20.3", "1.20.3"),
        ("0.2.0-rc.1", "0.2.0~rc.1"),
        ("1.0.0-beta.2", "1.0.0~beta.2"),
        ("1.0.0-alpha", "1.0.0~alpha"),
    ] {
        for format in ["deb", "rpm"] {
            assert_eq!(
                package_version(format, Some(version)),
                Ok(packaged.to_string()),
                "{format} {version}"
            );
        }
    }
    // A numeric pre-release reads as a Debian revision; build metadata, a v prefix and
    // leading zeros are not SemVer versions drover uses: refused with a usage error.
    for bad in [
        "0.2.0-1",
        "1.0.0+build.5",
        "v1.0.0",
        "1.0",
        "01.0.0",
        "1.0.0-RC1",
        "",
    ] {
        assert_eq!(package_version("deb", Some(bad)), Err(2), "{bad:?}");
    }
    assert_eq!(package_version("zip", Some("1.0.0")), Err(2));
    // What the mapping is for: the candidate before the release, and before the next
    // candidate, in both formats; a plain '-' would sort the candidate after in dpkg.
    assert!(older_in_both(
        "0.2.0~rc.1-1",
        "0.2.0-1",
        "0.2.0~rc.1",
        "0.2.0"
    ));
    assert!(older_in_both(
        "0.2.0~rc.1-1",
        "0.2.0~rc.2-1",
        "0.2.0~rc.1",
        "0.2.0~rc.2"
    ));
    assert!(older_in_both(
        "0.1.0-1",
        "0.2.0~rc.1-1",
        "0.1.0",
        "0.2.0~rc.1"
    ));
    assert!(
        !output(Command::new("dpkg").args(["--compare-versions", "0.2.0-rc.1-1", "lt", "0.2.0-1"]))
            .status
            .success(),
        "dpkg sorts 0.2.0-rc.1 after 0.2.0: the reason for '~'"
    );
}

/// A package of its own at `version`, built by the same tools as drover's (cargo-deb from a
/// crate, rpmbuild from a spec, with the Version `packaging/package-version` gives, as
/// `packaging/rpm/build` sets it): (the .deb's Version, the .rpm's Version).
fn package_scratch_crate(dir: &Path, version: &str) -> (String, String) {
    let cargo_deb = repo(".testbed/cargo/bin").join("cargo-deb");
    assert!(
        cargo_deb.exists(),
        "{} is missing: run scripts/testbed-setup.sh (the test command does)",
        cargo_deb.display()
    );
    let krate = dir.join(version);
    std::fs::create_dir_all(krate.join("src")).expect("crate dir");
    std::fs::write(krate.join("src/lib.rs"), "").expect("lib.rs");
    std::fs::write(krate.join("README"), "a package of one file\n").expect("README");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            r#"[package]
name = "drover-version-probe"
version = "{version}"
edition = "2021"
description = "a probe of the package version scheme"
license = "Apache-2.0"

[workspace]

[package.metadata.deb]
maintainer = "drover maintainers <drover@example.com>"
copyright = "drover maintainers"
assets = [["README", "usr/share/doc/drover-version-probe/README", "644"]]
"#
        ),
    )
    .expect("Cargo.toml");
    let out = krate.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    stdout(
        Command::new(&cargo_deb)
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", krate.join("target"))
            .args(["--no-build", "--fast", "--output"])
            .arg(&out),
    );
    let rpm_version = package_version("rpm", Some(version)).expect("an rpm version");
    let spec = krate.join("probe.spec");
    std::fs::write(
        &spec,
        format!(
            "Name: drover-version-probe\nVersion: {rpm_version}\nRelease: 1\n\
             Summary: a probe of the package version scheme\nLicense: Apache-2.0\n\
             BuildArch: noarch\n%description\na package of no file\n%files\n"
        ),
    )
    .expect("probe.spec");
    stdout(
        Command::new("rpmbuild")
            .args(["-bb", "--quiet"])
            .arg("--define")
            .arg(format!("_topdir {}", krate.join("rpmbuild").display()))
            .arg("--define")
            .arg(format!("_rpmdir {}", out.display()))
            .arg("--define")
            .arg("_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm")
            .arg(&spec),
    );
    let built = |ext: &str| -> PathBuf {
        std::fs::read_dir(&out)
            .expect("out dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap_or_else(|| panic!("no .{ext} built for {version}"))
    };
    let deb = stdout(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(built("deb"))
            .arg("Version"),
    );
    let rpm = stdout(
        Command::new("rpm")
            .args(["-qp", "--nosignature", "--qf", "%{VERSION}"])
            .arg(built("rpm")),
    );
    (deb, rpm)
}

/// The packaging tools themselves, on a release candidate and its release: the packages
/// they build carry `~`, and the release upgrades the candidate in dpkg and in rpm.
#[test]
fn a_pre_release_package_sorts_before_its_release() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (deb_rc, rpm_rc) = package_scratch_crate(dir.path(), "0.2.0-rc.1");
    let (deb, rpm) = package_scratch_crate(dir.path(), "0.2.0");
    assert_eq!(deb_rc, "0.2.0~rc.1-1", "the candidate's .deb Version");
    assert_eq!(rpm_rc, "0.2.0~rc.1", "the candidate's .rpm Version");
    assert_eq!(deb, "0.2.0-1");
    assert_eq!(rpm, "0.2.0");
    assert!(older_in_both(&deb_rc, &deb, &rpm_rc, &rpm));
}
