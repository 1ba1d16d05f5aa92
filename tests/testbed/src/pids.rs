//! The daemons a bed starts (dockerd, moto), recorded where the script running the tests
//! finds them (scripts/beds.sh): `DROVER_TESTBED_PIDS` names a folder, one file per
//! process, named by its pid and holding the program's name and the bed's folder under /tmp
//! (one line each). Should a test process die hard (no `Drop`), the script
//! stops exactly these, never another checkout's beds. Unset: nothing is recorded.

use std::path::{Path, PathBuf};

/// The variable naming the folder.
pub const PIDS_VAR: &str = "DROVER_TESTBED_PIDS";

/// A recorded process; dropping it removes the record (the process is stopped by then).
#[derive(Debug)]
pub struct Recorded(Option<PathBuf>);

/// Records `pid` as running `program` (a word of its command line, which the script checks
/// before it signals, so that a reused pid is left alone), with the folder the script
/// removes once the process is gone.
pub fn record(pid: u32, program: &str, dir: &Path) -> Recorded {
    let Some(records) = std::env::var_os(PIDS_VAR).filter(|d| !d.is_empty()) else {
        return Recorded(None);
    };
    let records = PathBuf::from(records);
    let file = records.join(pid.to_string());
    let written = std::fs::create_dir_all(&records)
        .and_then(|()| std::fs::write(&file, format!("{program}\n{}\n", dir.display())));
    match written {
        Ok(()) => Recorded(Some(file)),
        Err(e) => {
            eprintln!(
                "testbed: cannot record pid {pid} in {}: {e}",
                records.display()
            );
            Recorded(None)
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}
