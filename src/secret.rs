//! Where a secret comes from (inline in the config, a file, an SSM parameter) and how it is
//! read before a deadline.
//!
//! A file that is not there yet is waited for: cloud-init may write it a moment after
//! drover starts. An SSM read is retried while its failures are transient (throttling,
//! server trouble, no answer) and refused at once when retrying cannot help (access denied,
//! no such parameter). A leaf: the parameter store is a trait, [`ParameterStore`], that
//! `crate::ssm` implements, so nothing here knows an AWS type and this builds without the
//! `aws` feature.
//!
//! Errors and log lines name the config key and where the secret is
//! (`rancher.secret_key_file /etc/drover/rancher.secret`), never its value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::retry::{self, rounded, Check, Pace, RetryError};

/// How often a file that is not there yet is looked for: soon after it appears, and never
/// more than once a second.
const FILE_PACE: Pace = Pace::new(Duration::from_millis(250), Duration::from_secs(1));
/// Longest wait between two attempts to read a parameter.
const STORE_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a secret is.
#[derive(Debug, Clone)]
pub enum Source {
    /// In the config itself (`secret_key = "..."`).
    Inline(SecretString),
    /// In a file (`secret_key_file`), read whole and trimmed.
    File(PathBuf),
    /// In an SSM parameter (`secret_key_ssm`): a SecureString, or a Secrets Manager secret
    /// through `/aws/reference/secretsmanager/<id>`.
    Ssm(String),
}

/// A secret setting: the config key it belongs to and where its value is.
#[derive(Debug, Clone)]
pub struct Secret {
    name: &'static str,
    source: Source,
}

impl Secret {
    /// `name` is the key of the inline form, e.g. `rancher.secret_key`; the file and SSM
    /// forms add `_file` and `_ssm` to it.
    pub fn new(name: &'static str, source: Source) -> Secret {
        Secret { name, source }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The config key that set it: `rancher.secret_key`, `rancher.secret_key_file` or
    /// `rancher.secret_key_ssm`.
    pub fn key(&self) -> String {
        match self.source {
            Source::Inline(_) => self.name.to_string(),
            Source::File(_) => format!("{}_file", self.name),
            Source::Ssm(_) => format!("{}_ssm", self.name),
        }
    }

    /// Where the value is, for people: `file /etc/drover/rancher.secret`, `SSM parameter
    /// /drover/rancher-secret`, `the config (inline)`.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Inline(_) => "the config (inline)".to_string(),
            Source::File(path) => format!("file {}", path.display()),
            Source::Ssm(name) => format!("SSM parameter {name}"),
        }
    }

    /// Whether the value can change while drover runs (a rotated key): not when inline.
    pub fn can_change(&self) -> bool {
        !matches!(self.source, Source::Inline(_))
    }

    /// Whether reading it needs a [`ParameterStore`].
    pub fn needs_store(&self) -> bool {
        matches!(self.source, Source::Ssm(_))
    }

    /// The key and the place, as errors start: `rancher.secret_key_file /x/rancher.secret`.
    fn setting(&self) -> String {
        match &self.source {
            Source::Inline(_) => self.name.to_string(),
            Source::File(path) => format!("{} {}", self.key(), path.display()),
            Source::Ssm(name) => format!("{} {name}", self.key()),
        }
    }

    fn error(&self, why: Why) -> SecretError {
        SecretError {
            setting: self.setting(),
            why,
        }
    }

    /// The value, read before `deadline`: a file that is not there yet (or still empty) is
    /// waited for, an SSM parameter is read through `store` with transient failures
    /// retried. Trimmed; never empty.
    pub async fn read(
        &self,
        store: Option<&dyn ParameterStore>,
        deadline: Instant,
    ) -> Result<SecretString, SecretError> {
        match &self.source {
            Source::Inline(value) => Ok(value.clone()),
            Source::File(path) => self.read_file(path, deadline).await,
            Source::Ssm(name) => {
                let store = store.ok_or_else(|| self.error(Why::NoStore))?;
                self.read_parameter(store, name, deadline).await
            }
        }
    }

    async fn read_file(&self, path: &Path, deadline: Instant) -> Result<SecretString, SecretError> {
        let first = look_at(path).map_err(|e| self.error(Why::Unreadable(e.to_string())))?;
        let seen = match first {
            FileLook::Value(value) => return Ok(value),
            FileLook::Missing => "is not there yet",
            FileLook::Empty => "is empty so far",
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        tracing::info!(
            "{} {seen}; waiting up to {} for it",
            self.setting(),
            rounded(budget)
        );
        let what = self.setting();
        let polled = retry::poll_until(&what, deadline, FILE_PACE, || async {
            Ok::<_, std::io::Error>(match look_at(path)? {
                FileLook::Value(value) => Check::Done(value),
                FileLook::Missing => Check::NotYet("missing".to_string()),
                FileLook::Empty => Check::NotYet("empty".to_string()),
            })
        })
        .await;
        match polled {
            Ok(value) => {
                tracing::info!("{} is there now", self.setting());
                // The config could not look at its mode when it was not there.
                if let Some(warning) = loose_mode_warning(path, &self.key()) {
                    tracing::warn!("{warning}");
                }
                Ok(value)
            }
            Err(RetryError::Failed(e)) => Err(self.error(Why::Unreadable(e.to_string()))),
            Err(RetryError::OutOfTime { last, .. }) if last == "empty" => {
                Err(self.error(Why::StillEmpty { budget }))
            }
            Err(RetryError::OutOfTime { .. }) => Err(self.error(Why::NeverAppeared { budget })),
        }
    }

    async fn read_parameter(
        &self,
        store: &dyn ParameterStore,
        name: &str,
        deadline: Instant,
    ) -> Result<SecretString, SecretError> {
        let what = format!("reading {}", self.setting());
        let budget = deadline.saturating_duration_since(Instant::now());
        let read = retry::until(
            &what,
            deadline,
            STORE_MAX_BACKOFF,
            StoreError::is_transient,
            || store.get(name),
        )
        .await;
        match read {
            Ok(value) => {
                // A value put from a file (`--value file://...`) ends with its line break.
                let trimmed = value.expose_secret().trim();
                if trimmed.is_empty() {
                    Err(self.error(Why::Empty))
                } else if trimmed.len() == value.expose_secret().len() {
                    Ok(value)
                } else {
                    Ok(SecretString::from(trimmed.to_string()))
                }
            }
            Err(RetryError::Failed(e)) => Err(self.error(match e.kind {
                StoreFailure::Denied => Why::Denied(e.detail),
                StoreFailure::NotFound => Why::NotFound(e.detail),
                // The deadline passed on a transient failure.
                StoreFailure::Transient => Why::OutOfTime {
                    budget,
                    last: e.detail,
                },
                StoreFailure::Refused => Why::Refused(e.detail),
            })),
            Err(RetryError::OutOfTime { budget, last, .. }) => {
                Err(self.error(Why::OutOfTime { budget, last }))
            }
        }
    }
}

impl fmt::Display for Secret {
    /// `rancher.secret_key_ssm /drover/rancher-secret`: the key and the place, no value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.setting())
    }
}

enum FileLook {
    Missing,
    Empty,
    Value(SecretString),
}

/// One look at a secret file. A file that exists but cannot be read is an error; one that is
/// not there (nor its directory) or is empty is "not yet".
fn look_at(path: &Path) -> std::io::Result<FileLook> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let value = text.trim();
            Ok(if value.is_empty() {
                FileLook::Empty
            } else {
                FileLook::Value(SecretString::from(value.to_string()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileLook::Missing),
        Err(e) => Err(e),
    }
}

/// A warning when the file holding a secret is open to more than its owner (group or others
/// may read or write it), or belongs to someone other than root or the user drover runs as
/// (that user can rewrite the secret, or read it, whatever the mode).
pub fn loose_mode_warning(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    loose_mode(meta.mode(), meta.uid(), euid)
        .map(|why| format!("{what} {} holds a secret and {why}", path.display()))
}

/// Why a secret file's mode or owner is loose, if it is.
fn loose_mode(mode: u32, owner: u32, euid: u32) -> Option<String> {
    let mut why = Vec::new();
    if mode & 0o077 != 0 {
        let whom = match (mode & 0o070 != 0, mode & 0o007 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        let how = match (mode & 0o044 != 0, mode & 0o022 != 0) {
            (true, true) => "read and write",
            (false, true) => "write",
            _ => "read",
        };
        why.push(format!(
            "{whom} may {how} it (mode {:o}); chmod 600 it",
            mode & 0o777
        ));
    }
    if owner != 0 && owner != euid {
        why.push(format!(
            "belongs to uid {owner}, neither root nor drover's uid {euid}; chown it"
        ));
    }
    (!why.is_empty()).then(|| why.join("; it "))
}

/// Why a secret could not be had. Names the key and the place, never the value.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {why}")]
pub struct SecretError {
    /// The key and the place: `rancher.secret_key_file /etc/drover/rancher.secret`.
    pub setting: String,
    pub why: Why,
}

/// What went wrong reading a secret.
#[derive(Debug, thiserror::Error)]
pub enum Why {
    #[error("did not appear within {}", rounded(*budget))]
    NeverAppeared { budget: Duration },
    #[error("is still empty after {}", rounded(*budget))]
    StillEmpty { budget: Duration },
    #[error("is empty")]
    Empty,
    #[error("cannot be read: {0}")]
    Unreadable(String),
    #[error("cannot be read: access denied ({0}); the instance role needs ssm:GetParameter on it, kms:Decrypt on its key, and secretsmanager:GetSecretValue for a Secrets Manager reference")]
    Denied(String),
    #[error("does not exist ({0})")]
    NotFound(String),
    #[error("cannot be read: {0}")]
    Refused(String),
    #[error("could not be read within {}; last error: {last}", rounded(*budget))]
    OutOfTime { budget: Duration, last: String },
    #[error("cannot be read: no SSM client was set up for it")]
    NoStore,
}

/// How a parameter read failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// Throttling, server trouble, no answer, credentials not there yet: try again.
    Transient,
    /// Access denied, to the parameter or its KMS key.
    Denied,
    /// No such parameter (or Secrets Manager secret).
    NotFound,
    /// Any other refusal retrying cannot fix.
    Refused,
}

/// A failed parameter read: its kind and the service's words (never the value).
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct StoreError {
    pub kind: StoreFailure,
    pub detail: String,
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        self.kind == StoreFailure::Transient
    }
}

/// A parameter store (SSM Parameter Store), as secrets see it: one decrypted value by name.
pub trait ParameterStore: Send + Sync {
    /// One attempt at the decrypted value of the parameter `name`; retries are the caller's.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretString, StoreError>>;
}

/// A parameter store shared by the settings that may need one; `Debug` says only that
/// there is one.
#[derive(Clone)]
pub struct SharedStore(pub Arc<dyn ParameterStore>);

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedStore")
    }
}

/// A secret with what it takes to read it again: for a key rotated at its source while
/// drover runs. `Debug` shows where the secret is, never a value.
#[derive(Clone)]
pub struct SecretReader {
    secret: Secret,
    store: Option<Arc<dyn ParameterStore>>,
}

impl SecretReader {
    pub fn new(secret: Secret, store: Option<Arc<dyn ParameterStore>>) -> SecretReader {
        SecretReader { secret, store }
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The value as it is at its source now; see [`Secret::read`].
    pub async fn read(&self, deadline: Instant) -> Result<SecretString, SecretError> {
        self.secret.read(self.store.as_deref(), deadline).await
    }
}

impl fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretReader")
            .field("secret", &self.secret.to_string())
            .field("store", &self.store.as_ref().map(|_| "parameter store"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const VALUE: &str = "s3cr3t-FromTheSecretModule";

    fn file_secret(path: &Path) -> Secret {
        Secret::new("rancher.secret_key", Source::File(path.to_path_buf()))
    }

    #[test]
    fn a_secret_file_open_to_others_or_owned_by_a_stranger_is_loose() {
        // Owner-only, by root or by drover's own user: fine.
        assert_eq!(loose_mode(0o100600, 0, 1000), None);
        assert_eq!(loose_mode(0o100400, 1000, 1000), None);
        let group = loose_mode(0o100640, 0, 0).expect("group-readable");
        assert!(
            group.contains("its group may read it (mode 640); chmod 600"),
            "{group}"
        );
        let world = loose_mode(0o100602, 0, 0).expect("world-writable");
        assert!(world.contains("others may write it (mode 602)"), "{world}");
        let both = loose_mode(0o100666, 0, 0).expect("open to all");
        assert!(
            both.contains("group and others may read and write it"),
            "{both}"
        );
        let stranger = loose_mode(0o100600, 1234, 0).expect("someone else's");
        assert!(
            stranger.contains("uid 1234") && stranger.contains("chown"),
            "{stranger}"
        );
        let both = loose_mode(0o100644, 1234, 0).expect("loose twice");
        assert!(
            both.contains("chmod 600") && both.contains("chown"),
            "{both}"
        );
    }

    #[test]
    fn loose_mode_warning_names_the_file_and_never_the_value() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, VALUE).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(loose_mode_warning(&path, "rancher.secret_key_file"), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let w = loose_mode_warning(&path, "rancher.secret_key_file").expect("loose");
        assert!(w.starts_with("rancher.secret_key_file "), "{w}");
        assert!(w.contains(&path.display().to_string()), "{w}");
        assert!(!w.contains(VALUE), "{w}");
    }

    fn in_secs(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    #[test]
    fn keys_and_places_are_named_without_values() {
        let inline = Secret::new(
            "rancher.secret_key",
            Source::Inline(SecretString::from(VALUE.to_string())),
        );
        let file = file_secret(Path::new("/etc/drover/rancher.secret"));
        let ssm = Secret::new(
            "pager.pagerduty_routing_key",
            Source::Ssm("/drover/pd".into()),
        );
        assert_eq!(inline.key(), "rancher.secret_key");
        assert_eq!(file.key(), "rancher.secret_key_file");
        assert_eq!(ssm.key(), "pager.pagerduty_routing_key_ssm");
        assert_eq!(file.describe(), "file /etc/drover/rancher.secret");
        assert_eq!(ssm.describe(), "SSM parameter /drover/pd");
        assert_eq!(
            ssm.to_string(),
            "pager.pagerduty_routing_key_ssm /drover/pd"
        );
        assert!(!inline.can_change() && file.can_change() && ssm.can_change());
        assert!(ssm.needs_store() && !file.needs_store());
        for shown in [format!("{inline:?}"), inline.to_string(), inline.describe()] {
            assert!(!shown.contains(VALUE), "{shown}");
        }
        let reader = SecretReader::new(inline, None);
        assert!(!format!("{reader:?}").contains(VALUE));
    }

    #[tokio::test]
    async fn a_file_there_is_read_trimmed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("  {VALUE}\n")).expect("write");
        let value = file_secret(&path)
            .read(None, in_secs(5))
            .await
            .expect("read");
        assert_eq!(value.expose_secret(), VALUE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_appears_late_is_waited_for() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("late").join("secret");
        let secret = file_secret(&path);
        let started = Instant::now();
        let writer = {
            let path = path.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
                // Written in two steps, as a shell redirection does: empty first.
                std::fs::write(&path, "").expect("create");
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::write(&path, format!("{VALUE}\n")).expect("write");
            }
        };
        let (value, ()) = tokio::join!(secret.read(None, in_secs(300)), writer);
        assert_eq!(value.expect("appeared").expose_secret(), VALUE);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(5300) && took <= Duration::from_millis(6400),
            "noticed after {took:?}: looks are at most a second apart"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_never_appears_names_the_key_and_the_budget() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("rancher.secret");
        let started = Instant::now();
        let err = file_secret(&path)
            .read(None, in_secs(300))
            .await
            .expect_err("never there");
        assert_eq!(started.elapsed(), Duration::from_secs(300));
        assert!(matches!(err.why, Why::NeverAppeared { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "rancher.secret_key_file {} did not appear within 5m",
                path.display()
            )
        );
        // Empty all along is said so.
        std::fs::write(&path, "\n").expect("empty");
        let err = file_secret(&path)
            .read(None, in_secs(10))
            .await
            .expect_err("empty");
        assert!(
            err.to_string().ends_with("is still empty after 10s"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unreadable_file_fails_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        // A directory exists but cannot be read as a file.
        let started = std::time::Instant::now();
        let err = file_secret(dir.path())
            .read(None, in_secs(60))
            .await
            .expect_err("a directory");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err.why, Why::Unreadable(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("rancher.secret_key_file "),
            "{err}"
        );
    }

    /// A parameter store that answers with the failures it is given, then the value.
    struct Scripted {
        failures: Mutex<Vec<StoreError>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(failures: Vec<(StoreFailure, &str)>) -> Scripted {
            Scripted {
                failures: Mutex::new(
                    failures
                        .into_iter()
                        .rev()
                        .map(|(kind, detail)| StoreError {
                            kind,
                            detail: detail.to_string(),
                        })
                        .collect(),
                ),
                calls: AtomicUsize::new(0),
            }
        }
    }

    impl ParameterStore for Scripted {
        fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<SecretString, StoreError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(name, "/drover/rancher-secret");
                match self.failures.lock().expect("failures").pop() {
                    Some(e) => Err(e),
                    None => Ok(SecretString::from(format!("{VALUE}\n"))),
                }
            })
        }
    }

    fn ssm_secret() -> Secret {
        Secret::new(
            "rancher.secret_key",
            Source::Ssm("/drover/rancher-secret".into()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_parameter_is_retried_while_the_failure_is_transient() {
        let store = Scripted::new(vec![
            (
                StoreFailure::Transient,
                "ThrottlingException: Rate exceeded",
            ),
            (
                StoreFailure::Transient,
                "dispatch failure: connection refused",
            ),
        ]);
        let value = ssm_secret()
            .read(Some(&store), in_secs(60))
            .await
            .expect("read on the third attempt");
        assert_eq!(value.expose_secret(), VALUE, "trimmed");
        assert_eq!(store.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn access_denied_and_not_found_are_refused_at_once() {
        for (kind, detail, says) in [
            (
                StoreFailure::Denied,
                "AccessDeniedException: not authorized",
                "access denied",
            ),
            (
                StoreFailure::NotFound,
                "ParameterNotFound",
                "does not exist",
            ),
        ] {
            let store = Scripted::new(vec![(kind, detail)]);
            let err = ssm_secret()
                .read(Some(&store), in_secs(60))
                .await
                .expect_err("refused");
            assert_eq!(store.calls.load(Ordering::SeqCst), 1, "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with("rancher.secret_key_ssm /drover/rancher-secret ")
                    && text.contains(says)
                    && text.contains(detail),
                "{text}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parameter_out_of_time_says_the_last_error() {
        let store = Scripted::new(
            (0..1000)
                .map(|_| (StoreFailure::Transient, "InternalServerError"))
                .collect(),
        );
        let err = ssm_secret()
            .read(Some(&store), in_secs(30))
            .await
            .expect_err("never answered");
        let text = err.to_string();
        assert!(
            text.contains("could not be read within 30s") && text.contains("InternalServerError"),
            "{text}"
        );
        let err = ssm_secret()
            .read(None, in_secs(30))
            .await
            .expect_err("no store");
        assert!(matches!(err.why, Why::NoStore), "{err:?}");
    }
}
