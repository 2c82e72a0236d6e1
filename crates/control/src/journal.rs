//! The journal as the rest of the control plane writes it: each event made
//! durable in the [`Store`] first, then handed to live subscribers (the
//! admin API's event stream, the log). Store calls run on the blocking
//! pool, so an fsync never stalls a runtime that serves requests.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::store::{Event, EventKind, Store, StoreError};

/// Events buffered for a slow live subscriber before it misses some (it
/// can read them back from the store).
const LIVE: usize = 1024;

#[derive(Clone)]
pub struct Journal {
    store: Arc<dyn Store>,
    live: broadcast::Sender<Event>,
}

impl Journal {
    pub fn new(store: Arc<dyn Store>) -> Journal {
        Journal {
            store,
            live: broadcast::channel(LIVE).0,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Append an event; it is durable when this returns `Ok`.
    pub async fn record(
        &self,
        kind: EventKind,
        actor: &str,
        version: Option<u64>,
        summary: String,
        detail: serde_json::Value,
    ) -> Result<Event, StoreError> {
        let event = Event {
            seq: 0,
            time: SystemTime::now(),
            kind,
            actor: actor.to_owned(),
            version,
            summary,
            detail,
        };
        let event = blocking(&self.store, move |s| s.append(event)).await?;
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// [`Journal::record`] where nothing can be undone any more (the change
    /// already serves): a failure is logged, not returned.
    pub async fn note(
        &self,
        kind: EventKind,
        actor: &str,
        version: Option<u64>,
        summary: String,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self.record(kind, actor, version, summary, detail).await {
            tracing::error!(error = %e, "cannot write the journal");
        }
    }

    /// Events as they are recorded, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

/// Run a store call on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> T + Send + 'static,
) -> T {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .expect("a store call does not panic")
}
