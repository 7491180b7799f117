//! Rewrites the named window parameters `:start` and `:end` into a driver's placeholders.
//!
//! The SQL is scanned token-aware: string literals, quoted identifiers, comments and
//! Postgres `::type` casts are left alone. Values are always bound, never spliced.

/// Placeholder style of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `$1`, `$2` (numbered; may repeat).
    Postgres,
    /// `?` per occurrence, bound in order (MySQL, SQLite).
    QuestionMark,
}

/// Which window bound a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `:start`, inclusive.
    Start,
    /// `:end`, exclusive.
    End,
}

/// Rewrite `sql` for `dialect`. Returns the new text and the parameters to bind, in order.
pub fn rewrite(sql: &str, dialect: Dialect) -> (String, Vec<Param>) {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut params = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        // A doubled quote is an escaped quote inside the literal.
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    if bytes[i] == b'\\' && quote == b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            b':' if bytes.get(i + 1) == Some(&b':') => i += 2,
            b':' => {
                let rest = &sql[i + 1..];
                let word_len = rest
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                let param = match &rest[..word_len] {
                    "start" => Some(Param::Start),
                    "end" => Some(Param::End),
                    _ => None,
                };
                if let Some(param) = param {
                    out.push_str(&sql[copied..i]);
                    match dialect {
                        Dialect::Postgres => out.push_str(match param {
                            Param::Start => "$1",
                            Param::End => "$2",
                        }),
                        Dialect::QuestionMark => {
                            out.push('?');
                            params.push(param);
                        }
                    }
                    i += 1 + word_len;
                    copied = i;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    if dialect == Dialect::Postgres {
        params = vec![Param::Start, Param::End];
    }
    (out, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_numbered_for_postgres() {
        let (sql, params) = rewrite(
            "SELECT date_trunc('hour', t)::timestamptz AS ts FROM x WHERE t >= :start AND t < :end AND t < :end",
            Dialect::Postgres,
        );
        assert_eq!(
            sql,
            "SELECT date_trunc('hour', t)::timestamptz AS ts FROM x WHERE t >= $1 AND t < $2 AND t < $2"
        );
        assert_eq!(params, vec![Param::Start, Param::End]);
    }

    #[test]
    fn question_marks_are_bound_in_order_of_use() {
        let (sql, params) = rewrite("WHERE t < :end AND t >= :start", Dialect::QuestionMark);
        assert_eq!(sql, "WHERE t < ? AND t >= ?");
        assert_eq!(params, vec![Param::End, Param::Start]);
    }

    #[test]
    fn literals_comments_and_lookalikes_are_left_alone() {
        let src = "SELECT ':start', \"a:end\", `:end` -- :start\n/* :end */ FROM t WHERE x = :starting AND t >= :start";
        let (sql, params) = rewrite(src, Dialect::QuestionMark);
        assert_eq!(
            sql,
            "SELECT ':start', \"a:end\", `:end` -- :start\n/* :end */ FROM t WHERE x = :starting AND t >= ?"
        );
        assert_eq!(params, vec![Param::Start]);
    }

    #[test]
    fn escaped_quotes_do_not_end_a_literal() {
        let (sql, _) = rewrite("SELECT 'it''s :end' WHERE a = :end", Dialect::QuestionMark);
        assert_eq!(sql, "SELECT 'it''s :end' WHERE a = ?");
    }
}
