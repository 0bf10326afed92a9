//! The C allocator's one setting the relay depends on for its memory bound (issue 15).
//!
//! librdkafka (linked into this binary) receives every fetch response into one buffer of up to
//! `fetch.max.bytes`, and the relay holds messages of up to the broker's size limit. glibc
//! serves an allocation of 128 KiB or more with its own mapping, returned when freed, but raises
//! that threshold to the size of every such block freed, up to 32 MiB: after the first few
//! responses, megabyte buffers come from the heap arenas of a hundred threads, and what they
//! leave behind stays resident. Draining hostile input that made the relay's peak RSS 202 MiB
//! against 119 MiB of live heap; with the threshold fixed, 135 MiB (same run, same input).
//! The environment variable `MALLOC_MMAP_THRESHOLD_` would do the same, but only if every
//! deployment remembered to set it.

/// glibc's default threshold, fixed so that it no longer adapts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Fixes the threshold. Call first thing in `main`, before any thread exists.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "mallopt is a C function; the workspace's only unsafe call"
)]
pub(crate) fn fix_mmap_threshold() {
    // SAFETY: mallopt takes two integers and changes a setting of glibc's allocator. glibc
    // marks it MT-Unsafe: it is called as the first statement of a synchronous `main`, before
    // any other thread exists, and the Rust side allocates through the same system allocator.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

/// Other C libraries choose their own policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn fix_mmap_threshold() {}
