//! ARCHITECTURE.md's dependency rule, checked against `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The `deps` block of ARCHITECTURE.md: crate -> allowed workspace dependencies (`*` = any).
fn documented(root: &Path) -> Result<Graph> {
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md"))?;
    let block = text
        .split("```deps\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .context("ARCHITECTURE.md has no ```deps block")?;
    let mut graph = Graph::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (name, deps) = line
            .split_once(':')
            .with_context(|| format!("bad deps line {line:?}"))?;
        let deps = deps.split_whitespace().map(str::to_string).collect();
        graph.insert(name.trim().to_string(), deps);
    }
    Ok(graph)
}

/// Workspace crate -> (normal and build dependencies, dev dependencies) within the workspace.
fn actual(root: &Path) -> Result<Actual> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"].as_array().context("no packages")?;
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut graph = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().context("package without a name")?;
        let (mut normal, mut dev) = (BTreeSet::new(), BTreeSet::new());
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default().to_string();
            if !members.contains(&dep) {
                continue;
            }
            match d["kind"].as_str() {
                Some("dev") => dev.insert(dep),
                _ => normal.insert(dep),
            };
        }
        graph.insert(name.to_string(), (normal, dev));
    }
    Ok(graph)
}

type Actual = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

/// Every way `graph` breaks `rule`, one line each.
fn violations(rule: &Graph, graph: &Actual) -> Vec<String> {
    let test_allowed = rule.get("tests").cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for (name, (normal, dev)) in graph {
        let Some(allowed) = rule.get(name) else {
            problems.push(format!("{name} is not in ARCHITECTURE.md's deps block"));
            continue;
        };
        if !allowed.contains("*") {
            for dep in normal.difference(allowed) {
                problems.push(format!("{name} -> {dep} is not an allowed edge"));
            }
            for dep in allowed.difference(normal) {
                problems.push(format!("{name} -> {dep} is documented but does not exist"));
            }
            for dep in dev {
                let ok = dep == name || allowed.contains(dep) || test_allowed.contains(dep);
                if !ok {
                    problems.push(format!("{name} -> {dep} (dev) is not allowed for tests"));
                }
            }
        }
        let uses_train = normal.contains("mlops-train") || dev.contains("mlops-train");
        // The facade re-exports every stage, training included; no stage or server does.
        if uses_train && !["xtask", "mlops-benches", "mlops"].contains(&name.as_str()) {
            problems.push(format!("{name} depends on the training code"));
        }
    }
    for name in rule.keys().filter(|n| *n != "tests") {
        if !graph.contains_key(name) {
            problems.push(format!(
                "ARCHITECTURE.md lists {name}, which is not in the workspace"
            ));
        }
    }
    problems
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn dependency_edges_follow_architecture_md() -> Result<()> {
    let problems = violations(&documented(root())?, &actual(root())?);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn the_check_catches_forbidden_and_stale_edges() -> Result<()> {
    let rule = documented(root())?;
    let mut graph = actual(root())?;
    let add = |graph: &mut Actual, from: &str, to: &str, dev: bool| {
        let entry = graph.get_mut(from).unwrap();
        if dev { &mut entry.1 } else { &mut entry.0 }.insert(to.to_string());
    };
    add(&mut graph, "mlops-deploy", "mlops-train", false);
    add(&mut graph, "mlops-index", "mlops-train", true);
    add(&mut graph, "mlops-eval", "mlops-data", false);
    graph
        .get_mut("mlops-validate")
        .unwrap()
        .0
        .remove("mlops-core");
    let problems = violations(&rule, &graph).join("\n");
    for expected in [
        "mlops-deploy -> mlops-train is not an allowed edge",
        "mlops-deploy depends on the training code",
        "mlops-index -> mlops-train (dev) is not allowed for tests",
        "mlops-eval -> mlops-data is not an allowed edge",
        "mlops-validate -> mlops-core is documented but does not exist",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not in:\n{problems}"
        );
    }
    Ok(())
}
