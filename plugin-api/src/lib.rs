//! The Orchard backend plugin ABI.
//!
//! Orchard drives machines only through backend plugins loaded at run time. This crate will
//! hold the versioned C ABI, the safe Rust trait and the export macro that plugins use
//! (issue 3); it is a workspace member now so that the layout and the lints are in place.

/// The ABI major version a plugin must export and the daemon compares exactly on load.
pub const ABI_VERSION: u32 = 1;
