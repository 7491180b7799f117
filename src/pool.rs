//! Connection-pool options shared by the state store and the SQL sources.

use std::time::Duration;

/// A pooled connection idle for less than this is handed out without a ping.
pub const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// `opts` pinging a connection before handing it out only when it has been idle for
/// [`PING_WHEN_IDLE_FOR`] (sqlx pings on every acquire by default: one more round trip per
/// statement, about a third of a steady run's). A connection that broke within that second
/// (a restarted server) fails its one statement and is dropped; the run retries on the next
/// tick.
pub(crate) fn ping_when_idle<DB: sqlx::Database>(
    opts: sqlx::pool::PoolOptions<DB>,
) -> sqlx::pool::PoolOptions<DB> {
    opts.test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_WHEN_IDLE_FOR {
                sqlx::Connection::ping(conn).await?;
            }
            Ok(true)
        })
    })
}
