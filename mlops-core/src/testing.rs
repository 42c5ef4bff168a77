//! Helpers for the stage crates' integration tests, which all drive their binary the same way.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// Runs a stage binary (`env!("CARGO_BIN_EXE_...")`) with logging off; returns its exit code
/// (-1 when killed by a signal) and stderr.
pub fn run_stage<I, S>(bin: &str, args: I) -> (i32, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the stage contract for bad input: exit code 1, stderr containing every string of
/// `expect`, no panic, and no `manifest.json` in the output directory `out`.
pub fn assert_failed_cleanly((code, stderr): &(i32, String), out: &Path, expect: &[&str]) {
    assert_eq!(*code, 1, "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "{stderr:?} should contain {e:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.join(crate::MANIFEST_FILE).exists());
}

/// Asserts that `out`, if it exists, holds nothing: no partial output was left behind.
pub fn assert_empty_or_absent(out: &Path) {
    if out.exists() {
        let left = std::fs::read_dir(out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "partial output left in {}", out.display());
    }
}
