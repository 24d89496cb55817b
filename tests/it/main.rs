//! Integration tests: each test starts the real `orchard` binary on its own data directory
//! and drives it over HTTP and the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod abuse;
mod agents;
mod apidocs;
mod auth;
mod backend_util;
mod channels;
mod cli;
mod clusters;
mod config;
mod conformance;
mod containers;
mod faults;
mod fixtures;
mod harness;
mod libvirt;
mod lifecycle;
mod machines;
mod metrics;
mod plugins;
mod security;
mod tls;
mod ui;
mod users;
mod vms;
mod ws;
mod wsclient;
