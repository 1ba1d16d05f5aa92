//! Paging about a take-out that failed, and resolving the incident once a later attempt
//! succeeds: the incident is built from the record and its timeline. A take-out that went
//! well is reported too, to a webhook that asked to hear of every one.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::record::Timeline;
use super::Settings;
use crate::pager::{Incident, IncidentKind, Paging, Report, Severity};
use crate::state::TakeOutRecord;

/// Budget for paging, so that paging never holds the hook for long.
pub const PAGE_BUDGET: Duration = Duration::from_secs(30);

/// Pages that `step` failed with `error`; marks the record as paged when a pager took it.
pub async fn page<P: Paging>(
    pager: &P,
    settings: &Settings,
    record: &mut TakeOutRecord,
    timeline: &mut Timeline,
    step: &str,
    error: &str,
) {
    if !pager.is_configured() {
        tracing::error!(
            "{step} failed for {}: {error} (no pager configured)",
            record.instance_id
        );
        return;
    }
    let details = BTreeMap::from([
        ("source".to_string(), record.source.clone()),
        ("rancher_url".to_string(), settings.cluster_url.clone()),
        (
            "on_failure".to_string(),
            settings.on_failure.as_str().to_string(),
        ),
    ]);
    let incident = Incident {
        kind: IncidentKind::TakeOut,
        instance_id: record.instance_id.clone(),
        host_id: record.host_id.clone(),
        group: record.group.clone(),
        hostname: None,
        failed_step: step.to_string(),
        error: error.to_string(),
        severity: Severity::Critical,
        timeline: timeline.entries().to_vec(),
        details,
    };
    match pager.trigger(&incident, Instant::now() + PAGE_BUDGET).await {
        Ok(()) => {
            timeline.push(format!("paged: {step} failed"));
            record.paged = true;
        }
        Err(e) => {
            tracing::error!(
                "PAGING FAILED for {} ({step} failed): {e}",
                record.instance_id
            );
            timeline.push(format!("paging failed: {e}"));
        }
    }
}

/// Resolves the incident an earlier attempt opened, now that the host is out and its hook
/// completed.
pub async fn resolve<P: Paging>(pager: &P, record: &mut TakeOutRecord, timeline: &mut Timeline) {
    let summary = format!(
        "drover: {} taken out and its hook completed",
        record.instance_id
    );
    if pager
        .resolve(
            IncidentKind::TakeOut,
            &record.instance_id,
            &summary,
            Instant::now() + PAGE_BUDGET,
        )
        .await
        .is_ok()
    {
        timeline.push("resolved the earlier incident");
        record.paged = false;
    }
}

/// Tells the pager how a take-out that needed no page went, with its timeline; the pager
/// passes it on only where it was asked to (`pager.webhook_events = "all"`). A failure is
/// logged: the take-out is done whatever the webhook says.
pub async fn report<P: Paging>(pager: &P, record: &TakeOutRecord) {
    let report = Report {
        instance_id: record.instance_id.clone(),
        host_id: record.host_id.clone(),
        group: record.group.clone(),
        source: record.source.clone(),
        hook_completed: record.hook_completed,
        timeline: record.timeline.clone(),
    };
    if let Err(e) = pager.report(&report, Instant::now() + PAGE_BUDGET).await {
        tracing::warn!(
            "telling the webhook that {} was taken out failed: {e}",
            record.instance_id
        );
    }
}
