//! A read command whose output goes to `head` ends when the reader does, as Unix tools do. Rust
//! ignores SIGPIPE, so `println!` on the closed pipe would panic (exit 101, a backtrace). Not for
//! the servers (`run`, `ingest`), which must never die of a peer that went away.

/// Restores SIGPIPE's default action. Call first thing in `main`, before any thread exists.
#[cfg(unix)]
#[expect(
    unsafe_code,
    reason = "signal is a C function; with mallopt (malloc.rs) the workspace's only unsafe calls"
)]
pub(crate) fn end_quietly_on_a_closed_pipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE, and no other thread exists yet that
    // could be changing signal dispositions at the same time.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
pub(crate) fn end_quietly_on_a_closed_pipe() {}
