//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds `migrations/` at
//! compile time, and cargo does not watch that directory by itself (a new `0010_*.sql` was
//! left out of the binary until some Rust source changed).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
