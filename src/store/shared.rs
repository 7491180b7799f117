//! Reads every run makes of tables that change rarely — the events (excluded periods) and the
//! silences — shared by a process's runs for up to [`SHARED_READS_FOR`] instead of read by
//! each (two round trips of a steady run's dozen, at 10,000 one-minute KPIs about 330 reads a
//! second).
//!
//! A write through this process's `Store` (any clone) forgets the cached rows at once, so the
//! API's changes apply to the next run here; another process's changes apply within
//! [`SHARED_READS_FOR`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{EventRow, Result, SilenceRow, Store};

/// How long a process's runs share one read of the events and of the silences.
pub const SHARED_READS_FOR: Duration = Duration::from_secs(1);

/// The cached reads of one store (shared by its clones).
#[derive(Debug, Default)]
pub(super) struct SharedReads {
    events: Mutex<Option<Cached<EventRow>>>,
    silences: Mutex<Option<Cached<SilenceRow>>>,
}

/// Rows read at `at`; silences are those ending after `since`.
#[derive(Debug)]
struct Cached<T> {
    at: Instant,
    since: i64,
    rows: Arc<Vec<T>>,
}

impl<T> Cached<T> {
    fn fresh(&self, since: i64) -> Option<Arc<Vec<T>>> {
        // Rows read for an earlier `since` still hold every silence that ends after a later
        // one (and some that have ended, which the caller checks against its time anyway).
        (self.at.elapsed() < SHARED_READS_FOR && since >= self.since).then(|| Arc::clone(&self.rows))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedReads {
    pub(super) fn forget_events(&self) {
        *lock(&self.events) = None;
    }

    pub(super) fn forget_silences(&self) {
        *lock(&self.silences) = None;
    }
}

impl Store {
    /// Every event ([`Store::events`]), read at most [`SHARED_READS_FOR`] ago by this process
    /// (or since its last write of an event).
    pub async fn events_shared(&self) -> Result<Arc<Vec<EventRow>>> {
        if let Some(rows) = lock(&self.shared.events).as_ref().and_then(|c| c.fresh(0)) {
            return Ok(rows);
        }
        let at = Instant::now();
        let rows = Arc::new(self.events().await?);
        *lock(&self.shared.events) = Some(Cached {
            at,
            since: 0,
            rows: Arc::clone(&rows),
        });
        Ok(rows)
    }

    /// The silences that end after `since` ([`Store::silences`]) — possibly with some that
    /// ended before it — read at most [`SHARED_READS_FOR`] ago by this process (or since its
    /// last write of a silence).
    pub async fn silences_shared(&self, since: i64) -> Result<Arc<Vec<SilenceRow>>> {
        if let Some(rows) = lock(&self.shared.silences).as_ref().and_then(|c| c.fresh(since)) {
            return Ok(rows);
        }
        let at = Instant::now();
        let rows = Arc::new(self.silences(since).await?);
        *lock(&self.shared.silences) = Some(Cached {
            at,
            since,
            rows: Arc::clone(&rows),
        });
        Ok(rows)
    }
}
