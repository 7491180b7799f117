#![allow(unreachable_pub)]

//! The one integration test binary: real SQLite, PostgreSQL and MariaDB sources, a real
//! SMTP server on loopback, the service driven by a manual clock.

mod alerting;
mod api;
mod backtest;
mod cli;
mod digest;
mod e2e;
mod email;
mod helpers;
mod interfaces;
mod sources;
mod store;
mod ui;
