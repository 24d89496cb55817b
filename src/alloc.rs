//! Memory housekeeping for the C allocator.
//!
//! Each password hash takes a 19 MiB block (argon2id at the OWASP parameters). glibc serves
//! blocks that large from `mmap` but then raises its threshold to the size of the first one
//! freed, so later ones come from per-thread arenas and stay resident after they are freed:
//! a few concurrent logins would pin ~100 MB for the life of the daemon. Fixing the threshold
//! keeps large blocks on `mmap`, so they go back to the system when freed.
//!
//! The threshold is glibc's own starting value, 128 KiB, so that large request bodies (up to
//! `http.max_body_bytes`) do not stay resident either: with 1 MiB, 10,000 concurrent logins
//! with 256 KiB bodies (32 at a time) left 6 to 17 MiB of freed buffers in the arenas; with
//! 128 KiB, 2 to 3 MiB (`security::accounts`). Blocks that large are rare and short-lived;
//! each costs a map, fresh pages and an unmap (in that test, about 0.45 ms more daemon CPU
//! per 256 KiB request, debug build).

/// Blocks at least this large are always mapped and unmapped on their own.
const MMAP_THRESHOLD: i32 = 128 * 1024;

pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets an allocator parameter; it is called once at start-up,
        // before any other thread exists, with a documented option and a valid value.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if ok != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
        }
    }
}
