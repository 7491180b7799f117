#![allow(unreachable_pub)]

//! The one integration test binary: real SQLite, PostgreSQL and MariaDB sources, real
//! Prometheus and InfluxDB servers, a real SMTP server on loopback, the service driven by a
//! manual clock.

mod alerting;
mod api;
mod backtest;
mod cli;
mod detection;
mod digest;
mod dimensions;
mod e2e;
mod email;
mod events;
mod export;
mod helpers;
mod influxdb;
mod interfaces;
mod kill;
mod local_buckets;
mod metric_stores;
mod outage;
mod prometheus;
mod retention;
mod scheduler;
mod sources;
mod store;
mod ui;
