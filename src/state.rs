//! The state directory: small JSON records written atomically, so that a crash or power
//! loss mid-write leaves either the old record or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What `drover register` leaves behind.
pub const REGISTRATION_FILE: &str = "registration.json";

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
}
