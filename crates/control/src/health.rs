//! Health flips into the journal: the data plane's backend states are
//! read a few times a second and every change (health checks failing or
//! passing again, an outlier ejection starting or ending) is recorded, so
//! the timeline of an incident shows the backends beside the changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::json;

use crate::change::Controller;
use crate::store::EventKind;

/// How often backend states are read. Ejections last seconds at least,
/// so none is missed.
pub const EVERY: Duration = Duration::from_millis(250);

/// Runs until the controller is gone.
pub async fn journal_flips(controller: Weak<Controller>) {
    let mut last: HashMap<(Arc<str>, SocketAddr), (bool, bool)> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = controller.upgrade() else {
            return;
        };
        let version = c.view().stable.meta.number;
        let now = c.plane().backends();
        for b in &now {
            let state = (b.healthy, b.ejected);
            let before = last.insert((b.pool.clone(), b.addr), state);
            let Some(before) = before.filter(|s| *s != state) else {
                continue;
            };
            let what = match (before, state) {
                ((true, _), (false, _)) => "failed its health checks: down",
                ((false, _), (true, _)) => "passes its health checks again: up",
                ((_, false), (_, true)) => "ejected after failing requests in a row",
                _ => "re-admitted after its ejection",
            };
            c.journal()
                .note(
                    EventKind::Health,
                    "health",
                    Some(version),
                    format!("backend {} of pool {} {what}", b.addr, b.pool),
                    json!({ "pool": &*b.pool, "backend": b.addr.to_string(), "healthy": b.healthy, "ejected": b.ejected }),
                )
                .await;
        }
        last.retain(|k, _| now.iter().any(|b| b.pool == k.0 && b.addr == k.1));
    }
}
