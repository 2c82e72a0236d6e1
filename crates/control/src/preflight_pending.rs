//! Until the pre-flight probes land (branch `control-parts`): no probe is
//! sent and nothing is refused by one. Removed when they do.

use crate::preflight::ProbeReport;
use fulcrum_config::Snapshot;
use fulcrum_config::standards::Standards;

pub async fn probe(_: Option<&Snapshot>, _: &Snapshot, _: &[&Standards]) -> ProbeReport {
    ProbeReport::default()
}

pub fn refusals(_: &ProbeReport, _: &Snapshot, _: &[&Standards]) -> Vec<String> {
    Vec::new()
}

pub fn warnings(_: &ProbeReport, _: &Snapshot, _: &[&Standards]) -> Vec<String> {
    Vec::new()
}
