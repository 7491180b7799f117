//! What a read-only transaction lets through but a KPI query must not do.
//!
//! A read-only transaction refuses writes to tables, but some statements and functions act
//! outside it: MySQL/MariaDB's `SELECT … INTO OUTFILE`/`DUMPFILE` writes a file on the
//! database server, `SELECT … INTO @v` and `@v := …` set session variables, `GET_LOCK` takes a
//! lock that outlives the transaction; PostgreSQL's session-level advisory locks survive the
//! rollback and `lo_export`/`lo_import` touch server files. These are refused before the query
//! is sent, like writes. The scan is lexical: string literals, quoted identifiers and comments
//! do not count (MySQL's executable `/*! … */` comments do).

use super::placeholders::Dialect;

/// The first thing `sql` does that a read-only KPI query must not, described for the error
/// message; `None` when there is none.
pub(crate) fn forbidden(sql: &str, dialect: Dialect) -> Option<String> {
    let tokens = tokens(sql, dialect);
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    for (i, t) in tokens.iter().enumerate() {
        match (dialect, t) {
            (Dialect::QuestionMark, Token::Word(w)) if w == "INTO" => {
                match (word(i + 1), tokens.get(i + 1)) {
                    (Some(target @ ("OUTFILE" | "DUMPFILE")), _) => {
                        return Some(format!(
                            "SELECT … INTO {target} writes a file on the database server"
                        ))
                    }
                    (_, Some(Token::At)) => {
                        return Some("SELECT … INTO @variable sets session state".to_owned())
                    }
                    _ => {}
                }
            }
            (Dialect::QuestionMark, Token::At)
                if matches!(tokens.get(i + 1), Some(Token::Word(_)))
                    && tokens.get(i + 2) == Some(&Token::Assign) =>
            {
                return Some("@variable := … sets session state".to_owned());
            }
            (_, Token::Word(w)) if tokens.get(i + 1) == Some(&Token::Open) => {
                let banned: &[&str] = match dialect {
                    Dialect::QuestionMark => &["GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS"],
                    Dialect::Postgres => &[
                        "PG_ADVISORY_LOCK",
                        "PG_ADVISORY_LOCK_SHARED",
                        "PG_TRY_ADVISORY_LOCK",
                        "PG_TRY_ADVISORY_LOCK_SHARED",
                        "LO_EXPORT",
                        "LO_IMPORT",
                    ],
                };
                if banned.contains(&w.as_str()) {
                    return Some(format!(
                        "{}() acts outside the read-only transaction",
                        w.to_ascii_lowercase()
                    ));
                }
            }
            _ => {}
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An identifier or keyword, upper-cased.
    Word(String),
    Open,
    At,
    /// `:=`
    Assign,
    Other,
}

fn tokens(sql: &str, dialect: Dialect) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mysql = dialect == Dialect::QuestionMark;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    if b[i] == b'\\' && c == b'\'' && mysql {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push(Token::Other);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'#' if mysql => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            // MySQL runs the body of `/*! … */` (and `/*!50100 … */`): scan it as code.
            b'/' if b.get(i + 1) == Some(&b'*') && mysql && b.get(i + 2) == Some(&b'!') => {
                i += 3;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            b'*' if mysql && b.get(i + 1) == Some(&b'/') => i += 2,
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b'@' => {
                out.push(Token::At);
                i += 1;
            }
            b':' if b.get(i + 1) == Some(&b'=') => {
                out.push(Token::Assign);
                i += 2;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Token::Word(
                    String::from_utf8_lossy(&b[start..i]).to_ascii_uppercase(),
                ));
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                out.push(Token::Other);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MY: Dialect = Dialect::QuestionMark;
    const PG: Dialect = Dialect::Postgres;

    #[test]
    fn file_writes_locks_and_session_variables_are_refused_on_mysql() {
        for sql in [
            "SELECT * FROM t INTO OUTFILE '/tmp/x'",
            "select a from t into dumpfile '/tmp/y'",
            "SELECT count(*) FROM t INTO @n",
            "SELECT GET_LOCK('k', 0) AS value, now() AS ts",
            "SELECT release_lock ('k')",
            "SELECT /*!50000 get_lock('k', 0) */ AS v",
            "SELECT @n := count(*) FROM t",
        ] {
            assert!(forbidden(sql, MY).is_some(), "{sql}");
        }
    }

    #[test]
    fn the_same_words_in_literals_comments_and_names_pass() {
        for sql in [
            "SELECT 'INTO OUTFILE' AS value, ts FROM t",
            "SELECT ts, v AS value FROM t -- no GET_LOCK(here)\n",
            "SELECT ts, v AS value FROM t # into outfile\n",
            "SELECT ts, v AS value FROM t /* get_lock('k') */",
            "SELECT ts, `get_lock` AS value FROM t",
            "SELECT ts, outfile AS value FROM t WHERE ts >= :start AND ts < :end",
            "SELECT 'it''s INTO @x' AS value FROM t",
        ] {
            assert_eq!(forbidden(sql, MY), None, "{sql}");
        }
    }

    #[test]
    fn session_advisory_locks_and_server_files_are_refused_on_postgres() {
        assert!(forbidden("SELECT pg_advisory_lock(1), now() AS ts", PG).is_some());
        assert!(forbidden("SELECT lo_export(1, '/tmp/x')", PG).is_some());
        // Transaction-level locks end with the rollback.
        assert_eq!(forbidden("SELECT pg_advisory_xact_lock(1)", PG), None);
        assert_eq!(
            forbidden(
                "SELECT date_trunc('hour', ts) AS ts, count(*)::float8 AS value FROM t",
                PG
            ),
            None
        );
    }
}
