//! The packages end to end: a .deb built by cargo-deb from the Cargo metadata and
//! `packaging/`, and an .rpm built by rpmbuild from `packaging/rpm/drover.spec` (by
//! `packaging/rpm/build`, as `packaging/build.sh` builds it), checked with the real tools
//! (dpkg-deb, dpkg --root, rpm, systemd-analyze, man), installed into a scratch Debian root
//! and removed again.
//!
//! The packages carry the binary these tests were built with (stripped), not a release
//! build: what is checked here is the packaging, and a second optimised build of the AWS
//! SDK would double the test command's time. `packaging/build.sh` makes the release ones.
//! The tools come from `scripts/testbed-setup.sh`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

fn setup_hint(what: &str) -> String {
    format!("{what} is missing: run scripts/testbed-setup.sh (the test command does)")
}

/// Runs a command and returns its output; panics with both streams when it fails.
pub(crate) fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// The .deb packages, built once per test run.
pub(crate) struct Debs {
    pub(crate) deb: PathBuf,
    /// The same package with a higher revision and a changed template, for the upgrade.
    pub(crate) deb_next: PathBuf,
}

/// The .rpm packages, built once per test run.
pub(crate) struct Rpms {
    pub(crate) rpm: PathBuf,
    /// The same package with a higher release, for the upgrade.
    pub(crate) rpm_next: PathBuf,
}

pub(crate) fn debs() -> &'static Debs {
    static BUILT: OnceLock<Debs> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = package_target();
        let tool = packaging_tool("cargo-deb");
        let args = ["-p", "drover", "--no-build", "--fast"];
        let deb = package(
            &tool,
            &[&args[..], &["--output"]].concat(),
            &target.join("deb"),
        );
        let next = package(
            &tool,
            &[&args[..], &["--deb-revision", "2", "--output"]].concat(),
            &target.join("deb-next"),
        );
        Debs {
            deb: only(&deb, "deb"),
            deb_next: with_changed_template(&only(&next, "deb"), target),
        }
    })
}

pub(crate) fn rpms() -> &'static Rpms {
    static BUILT: OnceLock<Rpms> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = package_target();
        let build = |release: &str, out: &str| {
            let out = target.join(out);
            run(Command::new(repo("packaging/rpm/build"))
                .arg(target)
                .arg(&out)
                .arg(release));
            only(&out, "rpm")
        };
        let (rpm, rpm_next) = (build("1", "rpm"), build("2", "rpm-next"));
        Rpms { rpm, rpm_next }
    })
}

fn packaging_tool(name: &str) -> PathBuf {
    let tool = repo(".testbed/cargo/bin").join(name);
    assert!(tool.exists(), "{}", setup_hint(&tool.display().to_string()));
    tool
}

/// A target dir of the packages' own, laid out as the package metadata expects: the
/// tested binary (stripped) as target/release/drover, and the generated assets; made once.
fn package_target() -> &'static Path {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    MADE.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages");
        let _ = std::fs::remove_dir_all(&target);
        let release = target.join("release");
        std::fs::create_dir_all(&release).expect("package target dir");
        let binary = release.join("drover");
        std::fs::copy(env!("CARGO_BIN_EXE_drover"), &binary).expect("copy the binary");
        run(Command::new("strip").arg("-s").arg(&binary));

        // Man pages and completions, from the same clap definitions, by the same generator
        // packaging/build.sh runs; in a target dir of its own so that it never waits for
        // the lock of the one this test runs from, kept from run to run (a fresh one
        // compiles clap again).
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .current_dir(ROOT)
            .env(
                "CARGO_TARGET_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("assets-build"),
            )
            .args(["run", "-q", "-p", "drover-assets", "--"])
            .arg(release.join("dist")));
        target
    })
}

/// A packaging tool on the tested binary: `args`, then the output directory, which it
/// creates (the tools take a path that isn't a directory as the file name).
fn package(tool: &Path, args: &[&str], out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).expect("package output dir");
    run(Command::new(tool)
        .current_dir(ROOT)
        .env("CARGO_TARGET_DIR", package_target())
        .args(args)
        .arg(out));
    out.to_path_buf()
}

/// The one file with extension `ext` in `dir`.
fn only(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("package output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    assert_eq!(found.len(), 1, "one .{ext} in {}: {found:?}", dir.display());
    found[0].clone()
}

/// The template the next release ships, as a release whose template changed would have it.
const NEXT_TEMPLATE_LINE: &str = "# (the next release's template: one more comment)\n";

/// `deb` with one more line in its example template, repacked by dpkg-deb (md5sums
/// updated): the release after this one, whose template changed. With the template a
/// conffile, as it once was, dpkg would ask about this upgrade: the file changed both in
/// the package and on the host.
fn with_changed_template(deb: &Path, target: &Path) -> PathBuf {
    let tree = target.join("deb-next-tree");
    let _ = std::fs::remove_dir_all(&tree);
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let example = tree.join("usr/share/doc/drover/examples/drover.toml");
    let mut text = std::fs::read_to_string(&example).expect("the example in the .deb");
    text.push_str(NEXT_TEMPLATE_LINE);
    std::fs::write(&example, text).expect("change the template");
    let sums = stdout(
        Command::new("sh")
            .arg("-c")
            .arg("find usr -type f | LC_ALL=C sort | xargs md5sum")
            .current_dir(&tree),
    );
    std::fs::write(tree.join("DEBIAN/md5sums"), sums).expect("md5sums");
    let out = target.join("deb-next-changed.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&out));
    out
}

/// A throwaway copy of the scratch Debian root (minbase plus systemd) from the setup.
pub(crate) fn scratch_root() -> tempfile::TempDir {
    let pristine = repo(".testbed/rootfs");
    assert!(
        pristine.join("usr/bin/systemd-analyze").exists(),
        "{}",
        setup_hint(".testbed/rootfs")
    );
    let dir = tempfile::Builder::new()
        .prefix("drover-root-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", pristine.display()))
        .arg(dir.path()));
    dir
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `root`, relative, except the package manager's own records and logs.
fn tree(root: &Path) -> BTreeSet<String> {
    let listing = stdout(
        Command::new("find")
            .arg(".")
            .current_dir(root)
            .args(["-path", "./var/lib/dpkg", "-prune", "-o"])
            .args(["-path", "./var/log", "-prune", "-o"])
            .args(["-path", "./proc", "-prune", "-o", "-print"]),
    );
    listing.lines().map(str::to_string).collect()
}

/// `systemd-analyze verify` of the installed units, inside the root: it must print
/// nothing, since it exits 0 on some errors.
fn verify_units(root: &Path, units: &[&str]) -> String {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        // The man page check (Documentation=man:drover(1)) looks in the root's pages.
        .env("MANPATH", root.join("usr/share/man"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", setup_hint("systemd-analyze")));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The .deb unpacked by `dpkg-deb <how>` (`-x` its files, `-e` its control files).
fn unpacked(deb: &Path, how: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb").arg(how).arg(deb).arg(dir.path()));
    dir
}

#[test]
fn deb_carries_the_binary_units_example_config_man_pages_and_completions_with_the_right_modes() {
    let deb = &debs().deb;
    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(deb));
    let entry = |path: &str| -> (String, String) {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the .deb:\n{listing}"));
        let mut fields = line.split_whitespace();
        let perms = fields.next().unwrap_or_default().to_string();
        let owner = fields.next().unwrap_or_default().to_string();
        (perms, owner)
    };
    let expect = [
        ("/usr/bin/drover", "-rwxr-xr-x"),
        ("/usr/share/doc/drover/examples/drover.toml", "-rw-r--r--"),
        ("/usr/libexec/drover/fetch-secret", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/drover.service", "-rw-r--r--"),
        (
            "/usr/lib/systemd/system/drover-oneshot.service",
            "-rw-r--r--",
        ),
        ("/usr/share/man/man1/drover.1", "-rw-r--r--"),
        ("/usr/share/man/man1/drover-run.1", "-rw-r--r--"),
        ("/usr/share/man/man1/drover-register.1", "-rw-r--r--"),
        ("/usr/share/man/man1/drover-deregister.1", "-rw-r--r--"),
        ("/usr/share/man/man1/drover-check.1", "-rw-r--r--"),
        ("/usr/share/man/man1/drover-reap.1", "-rw-r--r--"),
        ("/usr/share/man/man1/drover-status.1", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/drover",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_drover", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/drover.fish",
            "-rw-r--r--",
        ),
    ];
    for (path, perms) in expect {
        assert_eq!(
            entry(path),
            (perms.to_string(), "0/0".to_string()),
            "{path}"
        );
    }
    // Nothing under /etc: the config there is the operator's.
    assert!(
        !listing.contains("./etc/"),
        "the .deb ships files under /etc:\n{listing}"
    );
    // The units are the files in packaging/, byte for byte.
    let extract = unpacked(deb, "-x");
    for unit in ["drover.service", "drover-oneshot.service"] {
        let packaged = std::fs::read(extract.path().join("usr/lib/systemd/system").join(unit));
        let source = std::fs::read(repo("packaging/systemd").join(unit));
        assert_eq!(packaged.ok(), source.ok(), "{unit}");
    }

    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    assert_eq!(field("Package").trim(), "drover");
    assert_eq!(field("Version").trim(), format!("{VERSION}-1"));
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    // Without the system's CA roots no HTTP client of drover's can be built.
    assert!(
        field("Depends").contains("ca-certificates"),
        "{}",
        field("Depends")
    );

    let control = unpacked(deb, "-e");
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap_or_default();
    // No conffile: nothing an upgrade could ask about.
    assert_eq!(read("conffiles").trim(), "");
    // Enabled on install, never started by the package; only a running one is restarted
    // on upgrade, and removal stops it.
    let postinst = read("postinst");
    assert!(
        postinst.contains("deb-systemd-helper enable drover.service"),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-helper enable drover-oneshot.service\n\telse"));
    assert!(
        postinst.contains("try-restart drover.service"),
        "{postinst}"
    );
    for forbidden in ["invoke start", "invoke restart", "systemctl start"] {
        assert!(
            !postinst.contains(forbidden),
            "postinst starts drover:\n{postinst}"
        );
    }
    assert!(read("prerm").contains("stop drover"), "{}", read("prerm"));
    // Purge takes the secrets and the state with it.
    let postrm = read("postrm");
    assert!(
        postrm.contains("rm -rf /etc/drover /var/lib/drover"),
        "{postrm}"
    );
}

#[test]
fn deb_installs_into_a_scratch_root_enabled_but_not_started_upgrades_and_purges_cleanly() {
    let pkgs = debs();
    let root = scratch_root();
    let root = root.path();
    let before = tree(root);

    dpkg(root, &["--install", &pkgs.deb.display().to_string()]);
    // Enabled for the next boot (the image bake), and nothing started: there is no
    // systemd running in the root, and the scripts never start it anyway.
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    assert!(
        wants.join("drover.service").symlink_metadata().is_ok(),
        "drover.service is not enabled"
    );
    assert!(
        wants
            .join("drover-oneshot.service")
            .symlink_metadata()
            .is_err(),
        "the one-shot variant must ship disabled"
    );
    // /etc/drover is there, private, and empty: the config is the userdata's to write.
    assert_eq!(mode(&root.join("etc/drover")), 0o700);
    let config = root.join("etc/drover/drover.toml");
    assert!(!config.exists(), "the package must not write the config");
    let example = root.join("usr/share/doc/drover/examples/drover.toml");
    assert_eq!(mode(&example), 0o644);
    assert!(!root.join("var/lib/drover/registration.json").exists());

    // The binary runs from the root, with the root's own libraries.
    let version = stdout(
        Command::new("chroot")
            .arg(root)
            .args(["/usr/bin/drover", "--version"]),
    );
    assert_eq!(version.trim(), format!("drover {VERSION}"));
    // Before the userdata ran: no config, exit 2 naming the first key it lacks.
    let check = |args: &[&str]| {
        let out = Command::new("chroot")
            .arg(root)
            .arg("/usr/bin/drover")
            .args(args)
            .arg("check")
            .output()
            .expect("drover check in the root");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("rancher.url"), "{err}");
    // The example is valid TOML that names what is missing: exit 2 too.
    let (code, err) = check(&["--config", "/usr/share/doc/drover/examples/drover.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("rancher.url"), "{err}");

    let verify = verify_units(root, &["drover.service", "drover-oneshot.service"]);
    assert!(verify.is_empty(), "systemd-analyze verify:\n{verify}");

    // A host as its userdata and a first boot leave it: the config and the secret written,
    // a registration recorded.
    let mine = "[rancher]\nurl = \"https://rancher.internal\"\n";
    std::fs::write(&config, mine).expect("the userdata's config");
    testbed::bed::set_mode(&config, 0o600);
    let secret = root.join("etc/drover/rancher.secret");
    std::fs::write(&secret, "userdata-fetched-secret\n").expect("the secret");
    let state = root.join("var/lib/drover");
    std::fs::create_dir_all(&state).expect("the state dir");
    std::fs::write(state.join("registration.json"), "{}").expect("the record");

    // The next release, whose template changed, installed the way unattended upgrades
    // and a provisioning script do it: no terminal on stdin and no DEBIAN_FRONTEND, so
    // that a conffile question would end the upgrade. None is asked; the config is as the
    // userdata wrote it.
    let upgrade = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--install", &pkgs.deb_next.display().to_string()])
        .env_remove("DEBIAN_FRONTEND")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("dpkg --install of the next release");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&upgrade.stdout),
        String::from_utf8_lossy(&upgrade.stderr)
    );
    assert!(upgrade.status.success(), "the upgrade failed:\n{said}");
    assert!(!said.contains("Configuration file"), "dpkg asked:\n{said}");
    assert_eq!(std::fs::read_to_string(&config).ok().as_deref(), Some(mine));
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&root.join("etc/drover")), 0o700);
    let shipped = std::fs::read_to_string(&example).expect("the new example");
    assert!(
        shipped.ends_with(NEXT_TEMPLATE_LINE),
        "the example is the new one"
    );
    let status = stdout(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Version} ${Status}", "drover"]),
    );
    assert_eq!(status, format!("{VERSION}-2 install ok installed"));

    // Remove keeps the config, the secrets and the state, as it keeps configuration;
    // purge takes them and leaves the root as it was.
    dpkg(root, &["--remove", "drover"]);
    assert!(!root.join("usr/bin/drover").exists());
    assert!(
        config.exists() && secret.exists(),
        "remove must keep /etc/drover"
    );
    assert!(state.join("registration.json").exists());
    dpkg(root, &["--purge", "drover"]);
    assert!(!root.join("etc/drover").exists(), "purge left /etc/drover");
    assert!(!state.exists(), "purge left /var/lib/drover");
    let after = tree(root);
    let added: Vec<_> = after.difference(&before).collect();
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && lost.is_empty(),
        "purge left {added:?} and lost {lost:?}"
    );
}

#[test]
fn systemd_analyze_verify_speaks_up_about_a_broken_unit() {
    // The control for the check above: a unit with an error must produce output.
    let pkgs = debs();
    let root = scratch_root();
    let root = root.path();
    dpkg(root, &["--install", &pkgs.deb.display().to_string()]);
    let unit = root.join("etc/systemd/system/drover-broken.service");
    let text = std::fs::read_to_string(repo("packaging/systemd/drover.service"))
        .expect("the unit")
        .replace("Type=notify", "Type=notifyy")
        .replace(
            "ExecStart=/usr/bin/drover run",
            "ExecStart=/usr/bin/drovr run",
        );
    std::fs::write(&unit, text).expect("write the broken unit");
    let verify = verify_units(root, &["drover-broken.service"]);
    assert!(verify.contains("notifyy"), "{verify}");
    assert!(verify.contains("drovr"), "{verify}");
}

/// The .rpm's scriptlets, as `rpm --scripts` shows them.
fn scripts_of(rpm: &Path) -> String {
    stdout(
        Command::new("rpm")
            .args(["-qp", "--nosignature", "--scripts"])
            .arg(rpm),
    )
}

#[test]
fn rpm_carries_the_same_files_no_config_recommends_and_scriptlets_that_never_start() {
    let rpm = &rpms().rpm;
    let query = |format: &str| {
        stdout(
            Command::new("rpm")
                .args(["-qp", "--nosignature", "--qf", format])
                .arg(rpm),
        )
    };
    assert_eq!(query("%{NAME} %{VERSION}"), format!("drover {VERSION}"));
    let files = query(
        "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}\\n]",
    );
    let entry = |path: &str| -> Vec<String> {
        files
            .lines()
            .find(|l| l.split_whitespace().next() == Some(path))
            .unwrap_or_else(|| panic!("{path} is not in the .rpm:\n{files}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(entry("/usr/bin/drover")[..2], ["-rwxr-xr-x", "root:root"]);
    // /etc/drover is the package's, private; the config in it is the operator's, and the
    // template an example (%doc).
    assert_eq!(entry("/etc/drover")[..2], ["drwx------", "root:root"]);
    assert!(
        !files.contains("/etc/drover/drover.toml"),
        "the .rpm ships the config:\n{files}"
    );
    assert_eq!(
        entry("/usr/share/doc/drover/examples/drover.toml"),
        ["-rw-r--r--", "root:root", "d"]
    );
    assert_eq!(entry("/usr/libexec/drover/fetch-secret")[0], "-rwxr-xr-x");
    for unit in ["drover.service", "drover-oneshot.service"] {
        assert_eq!(
            entry(&format!("/usr/lib/systemd/system/{unit}"))[0],
            "-rw-r--r--"
        );
    }
    for page in [
        "drover",
        "drover-run",
        "drover-register",
        "drover-deregister",
        "drover-check",
        "drover-reap",
        "drover-status",
    ] {
        entry(&format!("/usr/share/man/man1/{page}.1"));
    }
    entry("/usr/share/bash-completion/completions/drover");
    entry("/usr/share/zsh/site-functions/_drover");
    entry("/usr/share/fish/vendor_completions.d/drover.fish");

    let scripts = scripts_of(rpm);
    assert!(scripts.contains("enable drover.service"), "{scripts}");
    // An upgrade restarts whichever of the two units runs.
    assert!(
        scripts.contains("try-restart drover.service drover-oneshot.service"),
        "{scripts}"
    );
    assert!(!scripts.contains("systemctl start"), "{scripts}");
    assert!(!scripts.contains("enable --now"), "{scripts}");

    let requires = stdout(
        Command::new("rpm")
            .args(["-qp", "--nosignature", "--requires"])
            .arg(rpm),
    );
    assert!(
        requires.lines().any(|l| l.trim() == "ca-certificates"),
        "{requires}"
    );
    // The .deb's Recommends, by the RPM distributions' names.
    let recommends = stdout(
        Command::new("rpm")
            .args(["-qp", "--nosignature", "--recommends"])
            .arg(rpm),
    );
    for wanted in [
        "(docker or docker-ce or moby-engine)",
        "(awscli or awscli-2 or awscli2)",
        "curl",
    ] {
        assert!(
            recommends.lines().any(|l| l.trim() == wanted),
            "Recommends lacks {wanted}:\n{recommends}"
        );
    }
}

#[test]
fn units_read_the_environment_file_of_either_family() {
    // /etc/default on Debian, /etc/sysconfig on the RPM distributions; both optional.
    for unit in ["drover.service", "drover-oneshot.service"] {
        assert_eq!(
            unit_values(unit, "EnvironmentFile"),
            ["-/etc/default/drover", "-/etc/sysconfig/drover"],
            "{unit}"
        );
    }
}

/// man's output without the overstrike (`X\bX`) it uses for bold when not on a terminal.
fn plain(bytes: &[u8]) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn man_pages_render_without_warnings() {
    let extract = unpacked(&debs().deb, "-x");
    let pages = extract.path().join("usr/share/man/man1");
    for page in [
        "drover",
        "drover-run",
        "drover-register",
        "drover-deregister",
        "drover-check",
        "drover-reap",
        "drover-status",
    ] {
        let file = pages.join(format!("{page}.1"));
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&file)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", setup_hint("man")));
        let text = plain(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.is_empty(),
            "{page}: {warnings}"
        );
        assert!(text.contains("SYNOPSIS"), "{page}:\n{text}");
        assert!(
            text.contains(VERSION),
            "{page} carries the version:\n{text}"
        );
    }
    let main = plain(
        &run(Command::new("man")
            .args(["-E", "UTF-8", "-l"])
            .arg(pages.join("drover.1"))
            .env("MANWIDTH", "200"))
        .stdout,
    );
    for section in [
        "CONFIGURATION",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "SIGNALS",
    ] {
        assert!(main.contains(section), "drover(1) lacks {section}");
    }
    for sub in ["register", "deregister", "run", "check", "reap"] {
        assert!(
            main.contains(&format!("drover-{sub}(1)")),
            "drover(1) lacks {sub}"
        );
    }
}

#[test]
fn completions_know_every_subcommand_and_flag() {
    let extract = unpacked(&debs().deb, "-x");
    let bash = extract
        .path()
        .join("usr/share/bash-completion/completions/drover");
    run(Command::new("bash").arg("-n").arg(&bash));
    // Completing `drover dereg` in a real bash offers deregister.
    let script = format!(
        "source {}; COMP_WORDS=(drover dereg); COMP_CWORD=1; COMP_LINE='drover dereg'; \
         COMP_POINT=${{#COMP_LINE}}; _drover drover dereg drover; echo \"${{COMPREPLY[@]}}\"",
        bash.display()
    );
    let offered = stdout(Command::new("bash").arg("-c").arg(script));
    assert_eq!(offered.trim(), "deregister");
    let text = std::fs::read_to_string(&bash).expect("bash completion");
    for word in [
        "register",
        "deregister",
        "run",
        "check",
        "reap",
        "status",
        "--config",
        "--set",
        "--if-going-away",
        "--dry-run",
        "--json",
    ] {
        assert!(text.contains(word), "bash completion lacks {word}");
    }
    for file in [
        "usr/share/zsh/vendor-completions/_drover",
        "usr/share/fish/vendor_completions.d/drover.fish",
    ] {
        let text = std::fs::read_to_string(extract.path().join(file)).expect(file);
        for word in ["deregister", "if-going-away"] {
            assert!(text.contains(word), "{file} lacks {word}");
        }
    }
}

pub(crate) fn rpm_in(root: &Path, args: &[&str]) -> Output {
    // --nodeps: the scratch root is Debian, whose libc rpm's database doesn't know.
    run(Command::new("rpm")
        .arg(format!("--root={}", root.display()))
        .args(["--nodeps", "--nosignature"])
        .args(args))
}

#[test]
fn rpm_installs_enabled_but_not_started_leaves_the_userdata_config_alone_and_erases_cleanly() {
    let pkgs = rpms();
    let root = scratch_root();
    let root = root.path();
    run(Command::new("rpm")
        .arg(format!("--root={}", root.display()))
        .arg("--initdb"));
    rpm_in(root, &["-i", &pkgs.rpm.display().to_string()]);
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    assert!(
        wants.join("drover.service").symlink_metadata().is_ok(),
        "%post must enable drover.service"
    );
    assert!(wants
        .join("drover-oneshot.service")
        .symlink_metadata()
        .is_err());
    assert_eq!(mode(&root.join("etc/drover")), 0o700);
    // The package's own directory, as rpm's database says.
    let owner = stdout(
        Command::new("rpm")
            .arg(format!("--root={}", root.display()))
            .args(["-qf", "--qf", "%{NAME}", "/etc/drover"]),
    );
    assert_eq!(owner, "drover");
    let config = root.join("etc/drover/drover.toml");
    assert!(!config.exists(), "the package must not write the config");
    let version = stdout(
        Command::new("chroot")
            .arg(root)
            .args(["/usr/bin/drover", "--version"]),
    );
    assert_eq!(version.trim(), format!("drover {VERSION}"));

    // The userdata's config, untouched by an upgrade.
    let mine = "[rancher]\nurl = \"https://rancher.internal\"\n";
    std::fs::write(&config, mine).expect("the userdata's config");
    testbed::bed::set_mode(&config, 0o600);
    rpm_in(root, &["-U", &pkgs.rpm_next.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&config).ok().as_deref(), Some(mine));
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&root.join("etc/drover")), 0o700);
    assert!(wants.join("drover.service").symlink_metadata().is_ok());

    rpm_in(root, &["-e", "drover"]);
    assert!(!root.join("usr/bin/drover").exists());
    assert!(
        wants.join("drover.service").symlink_metadata().is_err(),
        "%preun must disable drover.service"
    );
    // The operator's config is not the package's: erase leaves it where it was.
    assert_eq!(std::fs::read_to_string(&config).ok().as_deref(), Some(mine));
    assert!(!root.join("etc/drover/drover.toml.rpmsave").exists());
}

#[test]
fn bake_script_leaves_drover_enabled_not_running_and_no_state_of_the_build_vm() {
    let pkgs = debs();
    let root = scratch_root();
    let root = root.path();
    // Leftovers of a build VM that must not reach the image.
    std::fs::create_dir_all(root.join("var/lib/drover")).expect("state dir");
    std::fs::write(root.join("var/lib/drover/registration.json"), "{}").expect("record");
    std::fs::create_dir_all(root.join("etc/drover")).expect("config dir");
    std::fs::write(root.join("etc/drover/rancher.secret"), "bake-vm-secret").expect("secret");
    std::fs::copy(&pkgs.deb, root.join("tmp/drover.deb")).expect("copy the .deb");
    std::fs::copy(
        repo("packaging/bake/install.sh"),
        root.join("tmp/install.sh"),
    )
    .expect("copy install.sh");

    // Dependencies come from the network in a real bake; the scratch root has what
    // drover itself needs.
    let out = run(Command::new("chroot")
        .arg(root)
        .args(["sh", "-eu", "/tmp/install.sh"])
        .env("DROVER_DEB", "/tmp/drover.deb")
        .env("DROVER_VERSION", VERSION)
        .env("DROVER_SKIP_DEPS", "1"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "drover {VERSION} installed, enabled for first boot"
        )),
        "{said}"
    );
    assert!(root
        .join("etc/systemd/system/multi-user.target.wants/drover.service")
        .symlink_metadata()
        .is_ok());
    assert!(!root.join("var/lib/drover").exists());
    assert!(!root.join("etc/drover/rancher.secret").exists());
    // The image has the private directory, and no config: each instance's userdata
    // writes its own.
    assert_eq!(mode(&root.join("etc/drover")), 0o700);
    assert!(!root.join("etc/drover/drover.toml").exists());

    // Without a package it says so and fails.
    let missing = Command::new("chroot")
        .arg(root)
        .args(["sh", "-eu", "/tmp/install.sh"])
        .env("DROVER_DEB", "/tmp/nope.deb")
        .output()
        .expect("install.sh");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/tmp/nope.deb not found"));

    // A package of another version than the AMI is to be tagged with is refused.
    let other = Command::new("chroot")
        .arg(root)
        .args(["sh", "-eu", "/tmp/install.sh"])
        .env("DROVER_DEB", "/tmp/drover.deb")
        .env("DROVER_VERSION", "9.9.9")
        .env("DROVER_SKIP_DEPS", "1")
        .output()
        .expect("install.sh");
    assert!(!other.status.success());
    let said = String::from_utf8_lossy(&other.stderr);
    assert!(
        said.contains(&format!("is drover {VERSION}, not 9.9.9")),
        "{said}"
    );

    // The agent image is pulled into the machine image, by the reference given, once
    // Docker runs; a failed pull fails the bake (set -eu).
    let script = std::fs::read_to_string(repo("packaging/bake/install.sh")).expect("install.sh");
    let pull = script
        .lines()
        .position(|l| l.trim() == "docker pull \"$DROVER_AGENT_IMAGE\"")
        .expect("install.sh pulls DROVER_AGENT_IMAGE");
    let start = script
        .lines()
        .position(|l| l.trim() == "systemctl start docker.service")
        .expect("install.sh starts Docker");
    assert!(start < pull, "Docker is started before the pull");
}

#[test]
fn packer_template_parses_and_bakes_the_deb_with_install_sh() {
    let python = repo(".testbed/venv/bin/python");
    assert!(
        python.exists(),
        "{}",
        setup_hint("the venv with python-hcl2")
    );
    let parsed = stdout(Command::new(&python).arg("-c").arg(
        "import hcl2, json, sys\nwith open(sys.argv[1]) as f:\n    print(json.dumps(hcl2.load(f)))",
    ).arg(repo("packaging/bake/drover.pkr.hcl")));
    let doc: serde_json::Value = serde_json::from_str(&parsed).expect("hcl2 JSON");
    // python-hcl2 8 keeps the quotes of string literals (\"required\"); 7 drops them.
    let text = doc.to_string().replace("\\\"", "");
    for needle in [
        "amazon-ebs",
        "install.sh",
        "DROVER_DEB=/tmp/drover.deb",
        "\"http_tokens\":\"required\"",
        "debian-12-amd64-*",
        // Named and tagged with drover's version, which install.sh checks, and the agent
        // image pulled in.
        "\"ami_name\":\"drover-host-${var.drover_version}-{{timestamp}}\"",
        "\"drover:version\":\"${var.drover_version}\"",
        "\"drover:agent-image\":\"${var.agent_image}\"",
        "\"tags\":\"${local.tags}\"",
        "\"snapshot_tags\":\"${local.tags}\"",
        "DROVER_VERSION=${var.drover_version}",
        "DROVER_AGENT_IMAGE=${var.agent_image}",
        "drover_${var.drover_version}-1_amd64.deb",
    ] {
        assert!(
            text.contains(needle),
            "drover.pkr.hcl lacks {needle}: {text}"
        );
    }
    if Command::new("packer").arg("version").output().is_ok() {
        run(Command::new("packer")
            .args(["fmt", "-check"])
            .arg(repo("packaging/bake/drover.pkr.hcl")));
    } else if Command::new("terraform").arg("version").output().is_ok() {
        // The same HCL formatter, which takes only .tf files.
        let dir = tempfile::tempdir().expect("dir");
        let copy = dir.path().join("drover.pkr.tf");
        std::fs::copy(repo("packaging/bake/drover.pkr.hcl"), &copy).expect("copy");
        run(Command::new("terraform").args(["fmt", "-check"]).arg(&copy));
    }
}

/// The values of `key` in a unit file, in order, across every line that sets it (systemd
/// adds the words of repeated list settings such as `After=`).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo("packaging/systemd").join(unit)).expect("the unit");
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn units_order_after_both_cloud_init_names_and_outlive_containers_under_memory_pressure() {
    for unit in ["drover.service", "drover-oneshot.service"] {
        let after = unit_values(unit, "After");
        for needed in [
            "docker.service",
            "cloud-init.service",
            "cloud-init-network.service",
        ] {
            assert!(
                after.iter().any(|a| a == needed),
                "{unit}: After= {after:?}"
            );
        }
        let oom = unit_values(unit, "OOMScoreAdjust");
        let score: i32 = oom.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(score < 0, "{unit}: OOMScoreAdjust= {oom:?}");
    }
}

#[test]
fn oneshot_unit_restarts_a_failed_register_and_steps_down_even_after_a_failed_start() {
    let unit = "drover-oneshot.service";
    assert_eq!(unit_values(unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(unit, "RestartPreventExitStatus"), ["2"]);
    // ExecStop= runs only after a start that succeeded; ExecStopPost= after any.
    assert!(unit_values(unit, "ExecStop").is_empty());
    assert_eq!(
        unit_values(unit, "ExecStopPost"),
        ["/usr/bin/drover", "deregister", "--if-going-away"]
    );
}
