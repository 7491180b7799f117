//! Reads every run makes of tables that change rarely — the events (excluded periods) and the
//! silences — shared by a process's runs for up to [`SHARED_READS_FOR`] instead of read by
//! each (two round trips of a steady run's dozen, at 10,000 one-minute KPIs about 330 reads a
//! second).
//!
//! A write through this process's `Store` (any clone) forgets the cached rows, and a read that
//! was under way during the write does not keep what it read, so the next run here sees the
//! write; another process's writes are seen within [`SHARED_READS_FOR`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{EventRow, Result, SilenceRow, Store};

/// How long a process's runs share one read of the events and of the silences.
pub const SHARED_READS_FOR: Duration = Duration::from_secs(1);

/// The cached reads of one store (shared by its clones).
#[derive(Debug, Default)]
pub(super) struct SharedReads {
    pub(super) events: Shared<EventRow>,
    pub(super) silences: Shared<SilenceRow>,
}

/// One table's shared read.
#[derive(Debug)]
pub(super) struct Shared<T>(Mutex<Slot<T>>);

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared(Mutex::new(Slot {
            writes: 0,
            read: None,
        }))
    }
}

#[derive(Debug)]
struct Slot<T> {
    /// Writes forgotten so far: a read that saw this number change while it ran keeps nothing.
    writes: u64,
    read: Option<Read<T>>,
}

/// Rows read at `at` for `since` (silences ending after it; 0 for the events).
#[derive(Debug)]
struct Read<T> {
    at: Instant,
    since: i64,
    rows: Arc<Vec<T>>,
}

impl<T> Shared<T> {
    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget the rows read (after a write of the table through this store).
    pub(super) fn forget(&self) {
        let mut slot = self.slot();
        slot.writes += 1;
        slot.read = None;
    }

    /// The rows read for `since` or an earlier one less than [`SHARED_READS_FOR`] ago (rows read
    /// for an earlier `since` hold every silence that ends after a later one), else `read`'s.
    async fn get<F>(&self, since: i64, read: F) -> Result<Arc<Vec<T>>>
    where
        F: Future<Output = Result<Vec<T>>>,
    {
        let writes = {
            let slot = self.slot();
            if let Some(r) = &slot.read {
                if r.at.elapsed() < SHARED_READS_FOR && since >= r.since {
                    return Ok(Arc::clone(&r.rows));
                }
            }
            slot.writes
        };
        let at = Instant::now();
        let rows = Arc::new(read.await?);
        let mut slot = self.slot();
        if slot.writes == writes {
            slot.read = Some(Read {
                at,
                since,
                rows: Arc::clone(&rows),
            });
        }
        Ok(rows)
    }
}

impl Store {
    /// Every event ([`Store::events`]), read at most [`SHARED_READS_FOR`] ago by this process
    /// (and not before its last write of an event).
    pub async fn events_shared(&self) -> Result<Arc<Vec<EventRow>>> {
        self.shared.events.get(0, self.events()).await
    }

    /// The silences that end after `since` ([`Store::silences`]) — possibly with some that
    /// ended before it — read at most [`SHARED_READS_FOR`] ago by this process (and not before
    /// its last write of a silence).
    pub async fn silences_shared(&self, since: i64) -> Result<Arc<Vec<SilenceRow>>> {
        self.shared.silences.get(since, self.silences(since)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rows(n: i64) -> Result<Vec<i64>> {
        Ok(vec![n])
    }

    #[tokio::test]
    async fn a_read_is_shared_for_a_second_and_forgotten_by_a_write() {
        let shared = Shared::<i64>::default();
        assert_eq!(*shared.get(10, rows(1)).await.expect("read"), [1]);
        assert_eq!(
            *shared.get(20, rows(2)).await.expect("shared"),
            [1],
            "a later since is served"
        );
        assert_eq!(
            *shared.get(5, rows(3)).await.expect("read again"),
            [3],
            "an earlier one is not"
        );
        shared.forget();
        assert_eq!(*shared.get(5, rows(4)).await.expect("after a write"), [4]);
    }

    #[tokio::test]
    async fn a_read_under_way_during_a_write_is_not_kept() {
        let shared = Shared::<i64>::default();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = async {
            wait.await.expect("released");
            Ok(vec![1])
        };
        let (read, ()) = tokio::join!(shared.get(0, slow), async {
            // The read has looked at the slot and is waiting for its rows; a write lands.
            tokio::task::yield_now().await;
            shared.forget();
            go.send(()).expect("reader waiting");
        });
        assert_eq!(*read.expect("read"), [1], "the reader gets what it read");
        assert_eq!(
            *shared.get(0, rows(2)).await.expect("read"),
            [2],
            "but it was not kept"
        );
    }
}
