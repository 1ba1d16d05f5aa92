//! The metrics textfile (`[metrics] textfile`): what this drover did, in the text format
//! that node_exporter's textfile collector reads, written again on every change.
//!
//! The workflow, the queue source, the reaper and the pager report [`Event`]s to a
//! [`Metrics`] handle passed down to them; nothing reads back. The handle's writer owns the
//! file: every event updates the counters and rewrites the whole file atomically (a temp
//! file beside it, fsync, rename), so that the collector never reads half a file. Off
//! (`textfile = ""`), the handle does nothing. A file that cannot be written is logged once
//! per kind of failure and never stops the work: metrics are worth less than a take-out.
//!
//! Counters count this drover process's life (a restart starts them at zero); the gauges
//! hold the last time or duration of something.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::work::{Outcome, Source};

/// Something worth counting, as its reporter saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A registration ended (not one cut short, not a warm pool's "nothing to register").
    Registration { registered: bool, took: Duration },
    /// A take-out was attempted and ended so.
    TakeOut {
        source: Source,
        outcome: Outcome,
        took: Duration,
    },
    /// A sweep's decision about one host or warmed instance that it did not leave alone.
    Reap { outcome: ReapOutcome },
    /// A sweep ended (refused or not) at `at`.
    Sweep { refused: bool, at: SystemTime },
    /// A page (a trigger) went out, or did not.
    Page { delivered: bool },
    /// A lifecycle queue message was received.
    QueueReceived,
    /// A lifecycle queue message was deleted (its hook completed).
    QueueDeleted,
    /// A lifecycle queue message was handed back to the queue at once (visibility 0).
    QueueHandedBack,
}

/// How a reap ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapOutcome {
    Reaped,
    Failed,
    /// Auto Scaling no longer confirmed it when the workflow asked again.
    NotConfirmed,
    Interrupted,
    /// More candidates than `reaper.max_per_sweep`: for a later sweep.
    Deferred,
    /// A dry run's "would reap".
    WouldReap,
}

impl ReapOutcome {
    fn label(self) -> &'static str {
        match self {
            ReapOutcome::Reaped => "reaped",
            ReapOutcome::Failed => "failed",
            ReapOutcome::NotConfirmed => "not_confirmed",
            ReapOutcome::Interrupted => "interrupted",
            ReapOutcome::Deferred => "deferred",
            ReapOutcome::WouldReap => "would_reap",
        }
    }
}

/// The `outcome` label of a take-out.
fn take_out_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Done => "done",
        Outcome::FailedButCompleted => "failed",
        Outcome::NotCompleted => "not_completed",
        Outcome::NotHere => "not_here",
    }
}

/// The handle every reporter holds: cheap to clone, a no-op when metrics are off.
#[derive(Clone, Default)]
pub struct Metrics {
    writer: Option<Arc<Mutex<Textfile>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.writer {
            Some(w) => match w.lock() {
                Ok(w) => write!(f, "Metrics({})", w.path.display()),
                Err(_) => f.write_str("Metrics(..)"),
            },
            None => f.write_str("Metrics(off)"),
        }
    }
}

impl Metrics {
    /// Metrics off: every event is dropped.
    pub fn off() -> Metrics {
        Metrics::default()
    }

    /// Metrics written to `path` (none when `None`); the file is written at once, with every
    /// counter at zero, so that the collector sees this drover from its start.
    pub fn to_textfile(path: Option<&Path>) -> Metrics {
        let Some(path) = path else {
            return Metrics::off();
        };
        let textfile = Textfile::new(path.to_path_buf());
        let metrics = Metrics {
            writer: Some(Arc::new(Mutex::new(textfile))),
        };
        metrics.with(Textfile::write);
        metrics
    }

    /// Counts `event` and rewrites the file.
    pub fn record(&self, event: Event) {
        self.with(|t| {
            t.count(&event);
            t.write();
        });
    }

    fn with(&self, f: impl FnOnce(&mut Textfile)) {
        if let Some(writer) = &self.writer {
            // A reporter that panicked mid-write left counters that are still counters.
            let mut guard = writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard);
        }
    }
}

/// The metrics themselves, registered in a registry of their own (never the global one).
struct Families {
    registry: Registry,
    registrations: IntCounterVec,
    registration_seconds: Gauge,
    take_outs: IntCounterVec,
    take_out_seconds: GaugeVec,
    reaps: IntCounterVec,
    sweeps: IntCounterVec,
    last_sweep: Gauge,
    pages: IntCounterVec,
    queue_received: IntCounter,
    queue_deleted: IntCounter,
    queue_handed_back: IntCounter,
}

/// Said in every counter's help: the number starts at zero with each drover process.
const LIFE: &str = "since this drover process started";

impl Families {
    fn new() -> Result<Families, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: String, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let counter = |name: &str, help: String| {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let families = Families {
            registrations: counter_vec(
                "drover_registrations_total",
                format!("Registrations of this host with Rancher that ended, by outcome (registered, failed), {LIFE}."),
                &["outcome"],
            )?,
            registration_seconds: gauge(
                "drover_registration_duration_seconds",
                "How long the last registration took, from its start to the host active in Rancher or the failure.",
            )?,
            take_outs: counter_vec(
                "drover_take_outs_total",
                format!("Take-outs of a host (this one or a peer's) by the source of the termination and the outcome (done, failed: taken out failed but the lifecycle action answered, not_completed: the lifecycle action not answered), {LIFE}."),
                &["source", "outcome"],
            )?,
            take_out_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "drover_take_out_duration_seconds",
                        "How long the last take-out of each source and outcome took, to the lifecycle action answered.",
                    ),
                    &["source", "outcome"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            reaps: counter_vec(
                "drover_reaps_total",
                format!("Hosts (and warmed instances) that reaper sweeps set out to take out, by outcome (reaped, failed, not_confirmed, interrupted, deferred, would_reap), {LIFE}."),
                &["outcome"],
            )?,
            sweeps: counter_vec(
                "drover_reaper_sweeps_total",
                format!("Reaper sweeps, by outcome (swept, refused), {LIFE}."),
                &["outcome"],
            )?,
            last_sweep: gauge(
                "drover_reaper_last_sweep_timestamp_seconds",
                "When the last reaper sweep of this drover ended, in seconds since the Unix epoch.",
            )?,
            pages: counter_vec(
                "drover_pages_total",
                format!("Pages triggered (PagerDuty and the webhook), by outcome (sent: every target took it, failed), {LIFE}."),
                &["outcome"],
            )?,
            queue_received: counter(
                "drover_queue_messages_received_total",
                format!("Lifecycle queue messages received, {LIFE}."),
            )?,
            queue_deleted: counter(
                "drover_queue_messages_deleted_total",
                format!("Lifecycle queue messages deleted once their hook was completed, {LIFE}."),
            )?,
            queue_handed_back: counter(
                "drover_queue_messages_handed_back_total",
                format!("Lifecycle queue messages handed back to the queue at once (not for a host here, or at a stop), {LIFE}."),
            )?,
            registry,
        };
        // Zeros from the start, so that a rate over the first event is right.
        for outcome in ["sent", "failed"] {
            families.pages.with_label_values(&[outcome]);
        }
        for outcome in ["swept", "refused"] {
            families.sweeps.with_label_values(&[outcome]);
        }
        Ok(families)
    }

    fn count(&self, event: &Event) {
        match event {
            Event::Registration { registered, took } => {
                let outcome = if *registered { "registered" } else { "failed" };
                self.registrations.with_label_values(&[outcome]).inc();
                self.registration_seconds.set(took.as_secs_f64());
            }
            Event::TakeOut {
                source,
                outcome,
                took,
            } => {
                let source = source.to_string();
                let labels = [source.as_str(), take_out_label(*outcome)];
                self.take_outs.with_label_values(&labels).inc();
                self.take_out_seconds
                    .with_label_values(&labels)
                    .set(took.as_secs_f64());
            }
            Event::Reap { outcome } => self.reaps.with_label_values(&[outcome.label()]).inc(),
            Event::Sweep { refused, at } => {
                let outcome = if *refused { "refused" } else { "swept" };
                self.sweeps.with_label_values(&[outcome]).inc();
                let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                self.last_sweep.set(secs.as_secs_f64());
            }
            Event::Page { delivered } => {
                let outcome = if *delivered { "sent" } else { "failed" };
                self.pages.with_label_values(&[outcome]).inc();
            }
            Event::QueueReceived => self.queue_received.inc(),
            Event::QueueDeleted => self.queue_deleted.inc(),
            Event::QueueHandedBack => self.queue_handed_back.inc(),
        }
    }

    /// The whole exposition, in the text format.
    fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut text = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(text)
    }
}

/// The file and what was already said about failing to write it.
struct Textfile {
    path: PathBuf,
    families: Option<Families>,
    /// Failures logged once each, until a write succeeds again.
    logged: HashSet<String>,
}

impl Textfile {
    fn new(path: PathBuf) -> Textfile {
        let families = match Families::new() {
            Ok(f) => Some(f),
            Err(e) => {
                // Fixed names and labels: only a programming error gets here.
                tracing::error!("metrics are off: {e}");
                None
            }
        };
        Textfile {
            path,
            families,
            logged: HashSet::new(),
        }
    }

    fn count(&self, event: &Event) {
        if let Some(f) = &self.families {
            f.count(event);
        }
    }

    /// Writes the file; a failure is logged once per kind, never returned.
    fn write(&mut self) {
        let Some(families) = &self.families else {
            return;
        };
        let outcome = families
            .encode()
            .map_err(|e| ("encoding", io::Error::other(e.to_string())))
            .and_then(|text| replace(&self.path, &text));
        match outcome {
            Ok(()) => {
                if !self.logged.is_empty() {
                    tracing::info!(path = %self.path.display(), "metrics textfile written again");
                    self.logged.clear();
                }
            }
            Err((step, e)) => {
                let kind = format!("{step}: {:?}", e.kind());
                if self.logged.insert(kind) {
                    tracing::warn!(
                        path = %self.path.display(),
                        "cannot write the metrics textfile ({step}: {e}); metrics.textfile stays stale until a write succeeds"
                    );
                }
            }
        }
    }
}

/// Replaces `path` with `text` atomically: a temp file in the same directory (a name the
/// collector ignores: it reads `*.prom` only), written, fsynced, made readable by the
/// collector's user, renamed over. The step that failed, and why.
fn replace(path: &Path, text: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let name = path
        .file_name()
        .ok_or_else(|| ("naming", io::Error::other("the path has no file name")))?;
    let mut temp_name = name.to_os_string();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = (|| {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // node_exporter runs as a user of its own; drover's unit sets UMask=0077.
            .mode(0o644)
            .open(&temp)
            .map_err(|e| ("creating the temp file", e))?;
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| ("setting the temp file's mode", e))?;
        file.write_all(text).map_err(|e| ("writing", e))?;
        file.sync_all().map_err(|e| ("fsync", e))?;
        fs::rename(&temp, path).map_err(|e| ("renaming", e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        fs::read_to_string(path).expect("the textfile")
    }

    #[test]
    fn off_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = Metrics::to_textfile(None);
        metrics.record(Event::QueueReceived);
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
        assert_eq!(format!("{metrics:?}"), "Metrics(off)");
    }

    #[test]
    fn the_file_is_there_from_the_start_with_zero_counters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("drover.prom");
        let _metrics = Metrics::to_textfile(Some(&path));
        let text = read(&path);
        assert!(text.contains("# TYPE drover_queue_messages_received_total counter"));
        assert!(
            text.contains("\ndrover_queue_messages_received_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("drover_pages_total{outcome=\"failed\"} 0"),
            "{text}"
        );
        assert!(text.contains("since this drover process started"), "{text}");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn events_are_counted_with_their_labels() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("drover.prom");
        let metrics = Metrics::to_textfile(Some(&path));
        metrics.record(Event::Registration {
            registered: true,
            took: Duration::from_millis(2500),
        });
        for _ in 0..2 {
            metrics.record(Event::TakeOut {
                source: Source::Sqs,
                outcome: Outcome::Done,
                took: Duration::from_secs(7),
            });
        }
        metrics.record(Event::TakeOut {
            source: Source::Reaper,
            outcome: Outcome::FailedButCompleted,
            took: Duration::from_secs(1),
        });
        metrics.record(Event::Reap {
            outcome: ReapOutcome::Reaped,
        });
        metrics.record(Event::Sweep {
            refused: false,
            at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        });
        metrics.record(Event::Page { delivered: true });
        metrics.record(Event::QueueReceived);
        metrics.record(Event::QueueDeleted);
        metrics.record(Event::QueueHandedBack);
        let text = read(&path);
        for line in [
            "drover_registrations_total{outcome=\"registered\"} 1",
            "drover_registration_duration_seconds 2.5",
            "drover_take_outs_total{outcome=\"done\",source=\"sqs\"} 2",
            "drover_take_outs_total{outcome=\"failed\",source=\"reaper\"} 1",
            "drover_take_out_duration_seconds{outcome=\"done\",source=\"sqs\"} 7",
            "drover_reaps_total{outcome=\"reaped\"} 1",
            "drover_reaper_sweeps_total{outcome=\"swept\"} 1",
            "drover_reaper_last_sweep_timestamp_seconds 1700000000",
            "drover_pages_total{outcome=\"sent\"} 1",
            "drover_queue_messages_received_total 1",
            "drover_queue_messages_deleted_total 1",
            "drover_queue_messages_handed_back_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        // No temp file left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("drover.prom")]);
    }

    #[test]
    fn a_missing_directory_is_not_fatal_and_is_written_once_it_appears() {
        let dir = tempfile::tempdir().expect("temp dir");
        let later = dir.path().join("textfile_collector");
        let path = later.join("drover.prom");
        let metrics = Metrics::to_textfile(Some(&path));
        metrics.record(Event::QueueReceived);
        assert!(!path.exists());
        fs::create_dir(&later).expect("mkdir");
        metrics.record(Event::QueueReceived);
        assert!(
            read(&path).contains("\ndrover_queue_messages_received_total 2\n"),
            "counted while the directory was missing too"
        );
    }
}
