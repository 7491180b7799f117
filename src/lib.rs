//! kpiwatch: catches business incidents that infrastructure monitoring misses.
//!
//! It runs the KPI queries teams register against their own databases and metric stores
//! (SQL, PromQL, InfluxQL) on a schedule, fits seasonal baselines, and alerts the owning team
//! when a metric leaves its band.
//!
//! # Layout
//!
//! - [`kpi`]: domain types and the `models/` loader (everything depends on it).
//! - [`config`], [`telemetry`], [`clock`]: leaves; [`format`]: how KPI values read for people.
//! - [`sources`]: the databases and metric stores KPI queries run against (IO edge).
//! - [`baseline`]: the pure detector (no IO); [`detect`] is its offline CSV front end.
//! - [`calendar`]: events and holidays, excluded from learning and alerting.
//! - [`backtest`], [`tuning`]: replays at other settings; a sensitivity by alert budget, injected incidents.
//! - [`store`]: the only owner of the state database.
//! - [`alerting`]: incident lifecycle, messages, e-mail delivery (IO edge).
//! - [`pipeline`]: the single path source → store → baseline → alerting.
//! - [`slices`]: a query's rows → the KPI's total and its slices; [`rootcause`]: which
//!   slices explain a change of the total (pure).
//! - [`scheduler`], [`api`]: drive the pipeline / read the store; [`app`] wires them.
//! - [`digest`]: the daily digest e-mail (built from the store, sent through the outbox).
//! - [`export`]: stored buckets as tables (Parquet/CSV with the `export` feature).
//! - [`check`], [`demo`]: the `kpiwatch check` and `kpiwatch demo` commands.
//!
//! See `ARCHITECTURE.md` for the data flow and invariants.

pub mod alerting;
pub mod api;
pub mod app;
pub mod backtest;
pub mod baseline;
pub mod calendar;
pub mod check;
pub mod clock;
pub mod config;
pub mod demo;
pub mod detect;
pub mod digest;
pub mod export;
pub mod format;
pub mod kpi;
pub mod pipeline;
pub mod pool;
pub mod reading;
pub mod rootcause;
pub mod scheduler;
pub mod slices;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod tuning;
