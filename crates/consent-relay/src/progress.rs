//! Progress of long commands on stderr (`reconcile`, `import`, `dlq replay`): a bar rewritten
//! on a terminal, periodic lines otherwise (or log records where logs are machine-read), so that
//! work of minutes is never silent.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress on stderr: one line rewritten on a terminal, a line per tenth (or per 30 s when the
/// total is unknown) otherwise.
pub struct Progress {
    label: String,
    log: bool,
    interactive: bool,
    pub total: Option<u64>,
    shown_tenth: u64,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: String, total: Option<u64>, log: bool) -> Self {
        Progress {
            label,
            log,
            interactive: !log && std::io::stderr().is_terminal(),
            total,
            shown_tenth: 0,
            last_line: Instant::now(),
        }
    }

    pub fn update(&mut self, done: u64, what: &str) {
        let text = match self.total {
            Some(total) if total > 0 => {
                format!("{done}/{total} {what} ({}%)", done * 100 / total)
            }
            _ => format!("{done} {what}"),
        };
        if self.interactive {
            let width = 30usize;
            let bar = match self.total {
                Some(total) if total > 0 => {
                    let filled = usize::try_from(done * width as u64 / total).unwrap_or(width);
                    format!(
                        "[{}{}] ",
                        "#".repeat(filled),
                        "-".repeat(width - filled.min(width))
                    )
                }
                _ => String::new(),
            };
            eprint!("\r{}: {bar}{text}", self.label);
            let _ = std::io::stderr().flush();
            return;
        }
        let due = match self.total {
            Some(total) if total > 0 => {
                let tenth = done * 10 / total;
                let due = tenth > self.shown_tenth;
                if due {
                    self.shown_tenth = tenth;
                }
                due
            }
            _ => self.last_line.elapsed() >= Duration::from_secs(30),
        };
        if due {
            self.last_line = Instant::now();
            if self.log {
                tracing::info!("{}: {text}", self.label);
            } else {
                eprintln!("{}: {text}", self.label);
            }
        }
    }

    pub fn finish(&self) {
        if self.interactive {
            eprintln!();
        }
    }
}
