//! Leases: taken one by one (`try_lease`, `release_lease`: the digest, the delivery lanes) or
//! in bulk — one statement per scheduler pass claims every due KPI that no live process holds,
//! and one renews every run lease a process holds (`renew_leases`).

use super::{now_secs, Pool, Result, Store};

/// Names per statement on SQLite (three binds each, well under its bind limit).
const SQLITE_CHUNK: usize = 500;

impl Store {
    /// Take a named lease for `holder` for `ttl_secs` (wall clock) if it is free, expired or
    /// already held by `holder`; returns whether `holder` holds it now.
    pub async fn try_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool> {
        let now = now_secs();
        run!(self, |pool| {
            let done = sqlx::query(
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE leases.until < $4 OR leases.holder = excluded.holder",
            )
            .bind(name)
            .bind(holder)
            .bind(now + ttl_secs)
            .bind(now)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Whether a live process (any) holds the named lease now.
    pub async fn lease_held(&self, name: &str) -> Result<bool> {
        let now = now_secs();
        run!(self, |pool| {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM leases WHERE name = $1 AND until >= $2")
                .bind(name)
                .bind(now)
                .fetch_one(pool)
                .await?;
            Ok(n > 0)
        })
    }

    /// Give a lease back (only if `holder` holds it).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        run!(self, |pool| {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Take every lease of `names` that is free, expired or already held by `holder`, for
    /// `ttl_secs` (wall clock); returns the names `holder` holds now. Leases held by another
    /// live process are skipped, never waited for.
    ///
    /// PostgreSQL: one statement — missing rows are inserted, existing free ones are locked
    /// with `FOR UPDATE SKIP LOCKED` (a row another replica is claiming or renewing at this
    /// moment is skipped, not waited on) and updated. SQLite (one writer at a time): a
    /// multi-row upsert whose `RETURNING` lists the rows it took.
    pub async fn take_leases(&self, names: &[String], holder: &str, ttl_secs: i64) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_secs();
        let until = now.saturating_add(ttl_secs);
        match &self.pool {
            Pool::Postgres(pool) => Ok(sqlx::query_scalar::<_, String>(
                "WITH fresh AS (
                     INSERT INTO leases (name, holder, until)
                     SELECT n, $2, $3 FROM unnest($1::text[]) AS n
                     ON CONFLICT (name) DO NOTHING
                     RETURNING name),
                 free AS (
                     SELECT name FROM leases
                     WHERE name = ANY($1) AND (until < $4 OR holder = $2)
                     ORDER BY name
                     FOR UPDATE SKIP LOCKED),
                 taken AS (
                     UPDATE leases SET holder = $2, until = $3 FROM free
                     WHERE leases.name = free.name
                     RETURNING leases.name)
                 SELECT name FROM fresh UNION ALL SELECT name FROM taken",
            )
            .bind(names)
            .bind(holder)
            .bind(until)
            .bind(now)
            .fetch_all(pool)
            .await?),
            Pool::Sqlite(pool) => {
                let mut taken = Vec::with_capacity(names.len());
                for chunk in names.chunks(SQLITE_CHUNK) {
                    let mut q =
                        sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO leases (name, holder, until) ");
                    q.push_values(chunk, |mut row, name| {
                        row.push_bind(name).push_bind(holder).push_bind(until);
                    });
                    q.push(
                        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
                          WHERE leases.until < ",
                    )
                    .push_bind(now)
                    .push(" OR leases.holder = excluded.holder RETURNING name");
                    taken.extend(q.build_query_scalar::<String>().fetch_all(pool).await?);
                }
                Ok(taken)
            }
        }
    }

    /// Extend, to `ttl_secs` from now, every lease of `names` that `holder` still holds (one
    /// statement, or one per 500 names on SQLite); returns how many it extended. A released
    /// lease is not taken again and one another holder has taken is left alone.
    pub async fn renew_leases(&self, names: &[String], holder: &str, ttl_secs: i64) -> Result<u64> {
        if names.is_empty() {
            return Ok(0);
        }
        let until = now_secs().saturating_add(ttl_secs);
        match &self.pool {
            Pool::Postgres(pool) => Ok(sqlx::query(
                "UPDATE leases SET until = $3 WHERE holder = $2 AND name = ANY($1)",
            )
            .bind(names)
            .bind(holder)
            .bind(until)
            .execute(pool)
            .await?
            .rows_affected()),
            Pool::Sqlite(pool) => {
                let mut renewed = 0;
                for chunk in names.chunks(SQLITE_CHUNK) {
                    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE leases SET until = ");
                    q.push_bind(until)
                        .push(" WHERE holder = ")
                        .push_bind(holder)
                        .push(" AND name IN (");
                    let mut names = q.separated(", ");
                    for name in chunk {
                        names.push_bind(name);
                    }
                    q.push(")");
                    renewed += q.build().execute(pool).await?.rows_affected();
                }
                Ok(renewed)
            }
        }
    }
}
