//! The timeline a take-out writes as it goes, kept in its record (a drover killed mid-way
//! resumes from it) and carried by its page.

use std::time::SystemTime;

use crate::state::TakeOutRecord;

/// An ordered log of what happened to one take-out, for the record and the page; every
/// entry is logged as it is added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline(Vec<(String, String)>);

impl Timeline {
    /// Continues a recorded timeline (a resumed take-out).
    pub fn from_record(record: &TakeOutRecord) -> Timeline {
        Timeline(record.timeline.clone())
    }

    pub fn push(&mut self, event: impl Into<String>) {
        self.push_at(SystemTime::now(), event);
    }

    /// An event that happened at `at` (a step of the take-out, reported when it ended).
    pub fn push_at(&mut self, at: SystemTime, event: impl Into<String>) {
        let event = event.into();
        tracing::info!("{event}");
        self.0
            .push((humantime::format_rfc3339_seconds(at).to_string(), event));
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_continues_its_record() {
        let record = TakeOutRecord {
            timeline: vec![("2026-11-23T12:00:00Z".into(), "earlier".into())],
            ..TakeOutRecord::default()
        };
        let mut timeline = Timeline::from_record(&record);
        timeline.push("later");
        let events: Vec<&str> = timeline.entries().iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(events, ["earlier", "later"]);
    }
}
