//! The state directory: small JSON records written atomically, so that a crash or power
//! loss mid-write leaves either the old record or the new one, never half of one. It holds
//! the registration and each take-out's progress, and never a secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What `drover register` leaves behind.
pub const REGISTRATION_FILE: &str = "registration.json";
/// A failed registration that was paged, until a registration succeeds.
pub const BOOT_FAILURE_FILE: &str = "boot-failure.json";
/// The last reaper sweep this drover made (`drover status` shows it).
pub const REAPER_SWEEP_FILE: &str = "reaper-sweep.json";

#[derive(Debug, thiserror::Error)]
#[error("state dir {path}: {detail}")]
pub struct StateError {
    pub path: PathBuf,
    pub detail: String,
}

/// The record of a successful registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub instance_id: String,
    pub host_id: String,
    /// RFC 3339, UTC.
    pub registered_at: String,
    pub rancher_url: String,
    pub project_id: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn err(&self, path: &Path, detail: impl std::fmt::Display) -> StateError {
        StateError {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    /// Creates the directory (mode 0700: it names hosts and instances) if needed.
    pub fn ensure(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.err(&self.dir, format!("cannot create: {e}")))
    }

    /// Writes `name` atomically: a temporary file in the same directory, fsync, rename,
    /// fsync of the directory.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure()?;
        let target = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let body = serde_json::to_vec_pretty(value).map_err(|e| self.err(&target, e))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.err(&target, format!("cannot write: {e}"))
        })
    }

    /// Removes `name`; a record that is not there is fine.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(&path, format!("cannot remove: {e}"))),
        }
    }

    /// Reads `name`; `None` when it does not exist. A corrupt record is an error, not `None`:
    /// silently forgetting state is how hosts get lost.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.err(&path, format!("corrupt record: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&path, format!("cannot read: {e}"))),
        }
    }
}

/// What the state dir knows about one instance's take-out. The field names are the file's
/// format: a drover upgraded mid-take-out resumes from an older drover's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TakeOutRecord {
    pub instance_id: String,
    pub host_id: Option<String>,
    /// More hosts labelled with the instance (an earlier boot's, a registration run
    /// twice): taken out with `host_id`. Absent from older drovers' records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_hosts: Vec<String>,
    pub group: Option<String>,
    pub hook: Option<String>,
    pub source: String,
    pub started_at: String,
    pub taken_out: bool,
    /// Nothing is left to answer: the lifecycle action was answered (by this drover or
    /// before it), or none waited for the instance; the timeline says which.
    pub hook_completed: bool,
    /// An incident is open for this instance (resolve it on a later success).
    pub paged: bool,
    pub timeline: Vec<(String, String)>,
}

/// A registration that failed and paged: kept until one succeeds, so that a drover that
/// systemd restarts over and over raises one incident, and the success resolves it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootFailure {
    pub instance_id: String,
    pub failed_step: String,
    pub error: String,
    /// RFC 3339, UTC: the first failure of this run of failures.
    pub since: String,
    /// A pager took the incident.
    pub paged: bool,
}

/// The last reaper sweep: when, what it saw, what it decided and did. The field names are
/// the file's format, read by `drover status` and by the next `drover run` (whose first
/// sweep waits by `labelled_hosts`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SweepRecord {
    /// The instance that swept.
    pub instance_id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    /// Nothing was changed, only decided (`reaper.dry_run`, `drover reap --dry-run`).
    pub dry_run: bool,
    /// Why the sweep touched nothing (Auto Scaling cannot see this instance, or could not be
    /// asked; the host listing failed).
    pub refused: Option<String>,
    /// Hosts in the environment's listing, and those of them labelled with an instance.
    pub hosts_listed: usize,
    pub labelled_hosts: usize,
    /// Of the labelled hosts, those whose agent was connected: the drovers that sweep, which
    /// the next wait is spread over. Absent (read as 0) in a record of drover 0.1.0.
    #[serde(default)]
    pub connected_labelled_hosts: usize,
    /// Every host whose agent was not plainly connected, with the evidence and the decision.
    pub considered: Vec<HostVerdictRecord>,
    /// Instances whose hosts were taken out.
    pub reaped: Vec<String>,
    /// Instances whose take-out failed or whose lifecycle action could not be completed.
    pub failed: Vec<String>,
    /// Candidates past `reaper.max_per_sweep`, left for later sweeps.
    pub deferred: Vec<String>,
    /// Warmed instances whose termination action was completed (or, dry, would be).
    pub warm_pool_completed: Vec<String>,
    /// Why the warm pool was not looked at, when it could not be.
    pub warm_pool_error: Option<String>,
    /// More candidates than `max_per_sweep`: someone was paged.
    pub paged: bool,
}

/// One host a sweep considered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostVerdictRecord {
    pub host_id: String,
    pub instance_id: Option<String>,
    /// `connected`, `reconnecting` or `disconnected`, as Rancher reported it.
    pub agent: String,
    /// What Auto Scaling said of the instance, when it was asked.
    pub autoscaling: Option<String>,
    /// What the sweep did: `reaped`, `would reap`, `failed`, `deferred`, `left: <why>`.
    pub decision: String,
}

impl TakeOutRecord {
    /// Both halves done: nothing left to do for this instance.
    pub fn finished(&self) -> bool {
        self.taken_out && self.hook_completed
    }
}

/// The record's file name for an instance. Instance ids are checked where they enter
/// (`i-` and hex), and sanitised again here, so they are safe in a file name.
pub fn record_file(instance_id: &str) -> String {
    let safe: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("takeout-{safe}.json")
}

/// The take-out records in the state dir.
#[derive(Debug, Clone)]
pub struct Records {
    dir: StateDir,
}

impl Records {
    pub fn new(dir: StateDir) -> Records {
        Records { dir }
    }

    /// The record of `instance_id`; a corrupt one is logged and treated as none, so that
    /// the take-out starts afresh rather than not at all.
    pub fn read(&self, instance_id: &str) -> Option<TakeOutRecord> {
        match self.dir.read_json(&record_file(instance_id)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}; starting this take-out afresh");
                None
            }
        }
    }

    /// Every take-out record in the state dir, in file-name order: a corrupt one is logged
    /// and left out, as [`read`](Self::read) treats it; a missing dir holds none. For the
    /// reaper, which finishes what an earlier sweep began (its hosts out of every listing).
    pub fn all(&self) -> Vec<TakeOutRecord> {
        let entries = match std::fs::read_dir(self.dir.path()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(
                    "cannot list the take-out records in {}: {e}",
                    self.dir.path().display()
                );
                return Vec::new();
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("takeout-") && n.ends_with(".json"))
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|name| match self.dir.read_json::<TakeOutRecord>(name) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}; leaving it out");
                    None
                }
            })
            .collect()
    }

    /// Forgets the take-out record of `instance_id`: a registration that succeeded made a
    /// new host, which the old record does not speak for.
    pub fn clear(&self, instance_id: &str) {
        if let Err(e) = self.dir.remove(&record_file(instance_id)) {
            tracing::error!("cannot remove the earlier take-out record: {e}");
        }
    }

    /// The paged boot failure, if one is open.
    pub fn boot_failure(&self) -> Option<BootFailure> {
        self.dir.read_json(BOOT_FAILURE_FILE).unwrap_or_else(|e| {
            tracing::warn!("{e}; treating it as none");
            None
        })
    }

    pub fn save_boot_failure(&self, failure: &BootFailure) {
        if let Err(e) = self.dir.write_json(BOOT_FAILURE_FILE, failure) {
            tracing::error!("cannot record the boot failure: {e}");
        }
    }

    pub fn clear_boot_failure(&self) {
        if let Err(e) = self.dir.remove(BOOT_FAILURE_FILE) {
            tracing::error!("cannot remove the boot failure record: {e}");
        }
    }

    /// The last sweep this drover recorded, if any.
    pub fn last_sweep(&self) -> Option<SweepRecord> {
        self.dir.read_json(REAPER_SWEEP_FILE).unwrap_or_else(|e| {
            tracing::warn!("{e}; treating it as none");
            None
        })
    }

    pub fn save_sweep(&self, sweep: &SweepRecord) {
        if let Err(e) = self.dir.write_json(REAPER_SWEEP_FILE, sweep) {
            tracing::error!("cannot record the reaper sweep: {e}");
        }
    }

    pub fn save(&self, record: &TakeOutRecord) {
        if let Err(e) = self
            .dir
            .write_json(&record_file(&record.instance_id), record)
        {
            // Losing the record costs only the resume after a crash; the work goes on.
            tracing::error!("cannot record take-out progress: {e}");
        }
    }
}

/// Now, as RFC 3339 in UTC with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_and_modes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(tmp.path().join("drover"));
        assert_eq!(
            state
                .read_json::<Registration>(REGISTRATION_FILE)
                .expect("read"),
            None
        );
        let rec = Registration {
            instance_id: "i-1".into(),
            host_id: "1h2".into(),
            registered_at: now_rfc3339(),
            rancher_url: "http://r".into(),
            project_id: "1a5".into(),
        };
        state.write_json(REGISTRATION_FILE, &rec).expect("write");
        assert_eq!(
            state
                .read_json::<Registration>(REGISTRATION_FILE)
                .expect("read"),
            Some(rec)
        );
        let dir_mode = std::fs::metadata(state.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file_mode = std::fs::metadata(state.path().join(REGISTRATION_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(state.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_record_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(tmp.path());
        std::fs::write(tmp.path().join(REGISTRATION_FILE), b"{not json").expect("write");
        assert!(state.read_json::<Registration>(REGISTRATION_FILE).is_err());
    }

    #[test]
    fn record_files_are_safe_names() {
        assert_eq!(record_file("i-0abc"), "takeout-i-0abc.json");
        assert_eq!(record_file("../etc/x"), "takeout-___etc_x.json");
    }

    #[test]
    fn finished_needs_both_halves() {
        let mut r = TakeOutRecord::default();
        assert!(!r.finished());
        r.taken_out = true;
        assert!(!r.finished());
        r.hook_completed = true;
        assert!(r.finished());
    }

    #[test]
    fn a_corrupt_record_is_none_and_a_saved_one_reads_back() {
        let dir = tempfile::tempdir().expect("dir");
        let records = Records::new(StateDir::new(dir.path()));
        assert_eq!(records.read("i-1"), None);
        std::fs::write(dir.path().join(record_file("i-1")), "{not json").expect("write");
        assert_eq!(records.read("i-1"), None);
        let record = TakeOutRecord {
            instance_id: "i-1".into(),
            taken_out: true,
            ..TakeOutRecord::default()
        };
        records.save(&record);
        assert_eq!(records.read("i-1"), Some(record));
        records.clear("i-1");
        assert_eq!(records.read("i-1"), None);
        records.clear("i-1");
    }

    #[test]
    fn every_take_out_record_is_listed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let records = Records::new(StateDir::new(dir.path().join("not-yet")));
        assert!(records.all().is_empty(), "a missing dir holds none");
        let records = Records::new(StateDir::new(dir.path()));
        for id in ["i-2", "i-1"] {
            records.save(&TakeOutRecord {
                instance_id: id.into(),
                ..TakeOutRecord::default()
            });
        }
        std::fs::write(dir.path().join(record_file("i-3")), "{not json").expect("write");
        records.save_sweep(&SweepRecord::default());
        std::fs::write(dir.path().join(REGISTRATION_FILE), "{}").expect("write");
        let ids: Vec<String> = records.all().into_iter().map(|r| r.instance_id).collect();
        assert_eq!(ids, ["i-1", "i-2"]);
    }

    #[test]
    fn the_last_sweep_reads_back_and_a_corrupt_one_is_none() {
        let dir = tempfile::tempdir().expect("dir");
        let records = Records::new(StateDir::new(dir.path()));
        assert_eq!(records.last_sweep(), None);
        let sweep = SweepRecord {
            instance_id: "i-1".into(),
            labelled_hosts: 7,
            reaped: vec!["i-2".into()],
            considered: vec![HostVerdictRecord {
                host_id: "1h2".into(),
                instance_id: Some("i-2".into()),
                agent: "disconnected".into(),
                autoscaling: Some("not known".into()),
                decision: "reaped".into(),
            }],
            ..SweepRecord::default()
        };
        records.save_sweep(&sweep);
        assert_eq!(records.last_sweep(), Some(sweep));
        std::fs::write(dir.path().join(REAPER_SWEEP_FILE), "{").expect("write");
        assert_eq!(records.last_sweep(), None);
    }

    #[test]
    fn a_boot_failure_is_kept_until_cleared() {
        let dir = tempfile::tempdir().expect("dir");
        let records = Records::new(StateDir::new(dir.path()));
        assert_eq!(records.boot_failure(), None);
        let failure = BootFailure {
            instance_id: "i-1".into(),
            paged: true,
            ..BootFailure::default()
        };
        records.save_boot_failure(&failure);
        assert_eq!(records.boot_failure(), Some(failure));
        records.clear_boot_failure();
        assert_eq!(records.boot_failure(), None);
    }
}
