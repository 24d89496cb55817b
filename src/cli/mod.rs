//! The command line: `serve`, `user …`, `db repair`, `plugin check`, `agent`, `--version`,
//! `help`.

pub mod db;
pub mod plugin;
pub mod user;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "orchard",
    version,
    about = "A self-contained host daemon for virtual machines and containers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that opens the data directory.
#[derive(Args, Clone, Default)]
pub struct Common {
    /// Configuration file (TOML)
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// State directory (overrides storage.data_dir)
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon
    Serve {
        #[command(flatten)]
        common: Common,
        /// Listen address, IP:port (overrides http.listen)
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Plugin tools
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Run the host agent: connect to a daemon, send this host's metrics, run its jobs
    Agent {
        /// The daemon: wss://HOST[:PORT], or ws://127.0.0.1:PORT on loopback
        #[arg(long, value_name = "URL")]
        server: String,
        /// File holding the API key of this server (never given in argv)
        #[arg(long, value_name = "FILE")]
        api_key_file: PathBuf,
        /// Run commands, docker commands and package operations sent by the daemon
        #[arg(long)]
        allow_commands: bool,
        /// CA certificates (PEM) to verify a wss:// server with, instead of the system's
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Seconds between metrics messages
        #[arg(long, value_name = "SECS", default_value_t = 5.0)]
        metrics_interval: f64,
        /// Forward new lines of this file as log messages (repeatable)
        #[arg(long = "log-file", value_name = "FILE")]
        log_files: Vec<PathBuf>,
        /// Forward new systemd journal entries as log messages
        #[arg(long)]
        journal: bool,
    },
    /// Administer users offline, directly on the database (the daemon must be stopped)
    User {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Database maintenance, offline (the daemon must be stopped)
    Db {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: DbAction,
    },
}

#[derive(Subcommand)]
pub enum DbAction {
    /// Check the database; when it is damaged, copy it aside and salvage every row that still
    /// reads back into a fresh file, reporting what was kept and what was lost
    Repair,
}

#[derive(Subcommand)]
pub enum UserAction {
    /// Create a user; the password is read from standard input
    Add {
        username: String,
        /// Read the password from standard input (passwords are never taken from argv)
        #[arg(long, required = true)]
        password_stdin: bool,
        /// administrator or client
        #[arg(long, default_value = "client")]
        account_type: String,
        /// A permission to grant (repeatable); administrators get all of them when none is given
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<String>,
    },
    /// Set a user's password from standard input (revokes the user's tokens)
    Passwd {
        username: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Delete a user
    Del { username: String },
    /// List users
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PluginAction {
    /// Load a plugin as the daemon does and run a conformance pass
    Check {
        /// The plugin's shared library
        path: PathBuf,
        /// Settings for the plugin's init, as JSON
        #[arg(long, value_name = "JSON")]
        settings: Option<String>,
        /// Seconds each call may take
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}
