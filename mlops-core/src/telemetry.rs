//! Logging, progress bars and error reports for the stage binaries (feature `cli`).

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::{Event, Progress};

/// Installs a `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`),
/// with colours only when stderr is a terminal (a log file gets plain text). Safe to call more
/// than once.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A progress bar on stderr for `len` units of work; hidden when stderr is not a terminal.
fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Draws a stage's [`Progress`] as indicatif bars on stderr (hidden when stderr is not a
/// terminal): what every stage binary passes to its library's `run_with`.
#[derive(Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn event(&self, event: Event<'_>) {
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Start { what, total } => {
                if let Some(old) = bar.replace(progress(total, what)) {
                    old.finish_and_clear();
                }
            }
            Event::Advance(n) => {
                if let Some(bar) = bar.as_ref() {
                    bar.inc(n);
                }
            }
            Event::Note(text) => {
                if let Some(bar) = bar.as_ref() {
                    bar.set_message(text.to_string());
                }
            }
            Event::Finish => {
                if let Some(old) = bar.take() {
                    old.finish_and_clear();
                }
            }
        }
    }
}

/// Prints an error and its chain of causes as one paragraph, the way every stage binary reports
/// failures, and returns the exit code for runtime failures (1).
pub fn report_error(err: &(dyn std::error::Error + 'static)) -> std::process::ExitCode {
    let mut text = format!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // thiserror variants often repeat their source's text; print each message once.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    eprintln!("{text}");
    std::process::ExitCode::from(1)
}
