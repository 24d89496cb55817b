//! The simulator backend: a demo fleet with no system dependency, Orchard's zero-configuration
//! default. Its implementation arrives with the plugin ABI (issue 3).

/// The ABI this plugin is built against.
pub const ABI_VERSION: u32 = orchard_plugin_api::ABI_VERSION;
