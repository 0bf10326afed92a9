//! A command whose output goes to `head` ends quietly when the reader does, as Unix tools do.
//! Rust ignores SIGPIPE, so `println!` on the closed pipe panics ("failed printing to stdout:
//! Broken pipe", exit 101 with a backtrace). SIGPIPE is not restored to its default instead:
//! librdkafka's TLS writes do not all suppress it, and a broker connection reset would then kill
//! a `publish` or `dlq replay` halfway without a word.

/// Makes that one panic a quiet exit (status 141, as a shell reports a reader gone); every other
/// panic is reported as before.
pub(crate) fn end_quietly_on_a_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
