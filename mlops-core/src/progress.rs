//! Progress of a stage's long work, reported to whoever called the stage.
//!
//! Libraries never draw: a stage's `run_with` takes a `&dyn Progress` and tells it what it is
//! doing. The stage binaries render it with indicatif (`telemetry::Bars`, feature `cli`); a
//! program embedding a stage passes [`Silent`], or a closure that forwards [`Event`]s to its
//! own UI, log or channel.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use mlops_core::progress::{Event, Progress};
//!
//! let done = AtomicU64::new(0);
//! let observer = |event: Event<'_>| {
//!     if let Event::Advance(n) = event {
//!         done.fetch_add(n, Ordering::Relaxed);
//!     }
//! };
//! {
//!     let task = observer.task("decode", 3);
//!     (0..3).for_each(|_| task.inc(1));
//! }
//! assert_eq!(done.load(Ordering::Relaxed), 3);
//! ```

/// What a stage reports while it works. One task runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A task of `total` units named `what` (e.g. "decode", "epoch 3/30") begins.
    Start {
        /// What the stage is doing, for a label.
        what: &'a str,
        /// Units of work in the task (images, shards, ...).
        total: u64,
    },
    /// This many more units of the current task are done.
    Advance(u64),
    /// A short status of the current task replacing its label (e.g. the running loss).
    Note(&'a str),
    /// The current task ended (finished, or abandoned on an error).
    Finish,
}

/// Receives a stage's [`Event`]s. Implemented by closures `Fn(Event)` and by [`Silent`].
pub trait Progress: Sync {
    /// Called for every event, from the stage's thread.
    fn event(&self, event: Event<'_>);

    /// Starts a task; the returned guard reports `Advance` and `Finish` (on drop).
    fn task(&self, what: &str, total: u64) -> Task<'_>
    where
        Self: Sized,
    {
        start(self, what, total)
    }
}

/// Starts a task on a trait object (what the stages hold).
pub fn start<'a>(progress: &'a dyn Progress, what: &str, total: u64) -> Task<'a> {
    progress.event(Event::Start { what, total });
    Task { progress }
}

/// A running task: `inc` advances it, dropping it finishes it (also on early return with `?`).
pub struct Task<'a> {
    progress: &'a dyn Progress,
}

impl Task<'_> {
    /// Reports `n` more units done.
    pub fn inc(&self, n: u64) {
        self.progress.event(Event::Advance(n));
    }

    /// Replaces the task's label with a short status (e.g. "epoch 3/30 loss 1.234").
    pub fn note(&self, text: &str) {
        self.progress.event(Event::Note(text));
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        self.progress.event(Event::Finish);
    }
}

/// Ignores every event: for programs that want no progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event<'_>) {}
}

impl<F: Fn(Event<'_>) + Sync> Progress for F {
    fn event(&self, event: Event<'_>) {
        self(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_task_reports_start_advances_and_finish_even_on_early_exit() {
        let seen = Mutex::new(Vec::new());
        let observer = |e: Event<'_>| seen.lock().unwrap().push(format!("{e:?}"));
        let work = |fail: bool| -> Result<(), ()> {
            let task = start(&observer, "write", 2);
            task.inc(1);
            if fail {
                return Err(());
            }
            task.inc(1);
            Ok(())
        };
        work(true).unwrap_err();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "Start { what: \"write\", total: 2 }",
                "Advance(1)",
                "Finish"
            ]
        );
        Silent.task("nothing", 1).inc(1);
    }
}
