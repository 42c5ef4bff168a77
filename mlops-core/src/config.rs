//! One way to build a stage's settings: defaults, then a TOML file, then `--set key=value`
//! pairs, then the binary's named flags, merged as JSON values and deserialised once.
//!
//! A setting is declared once, as a field of the stage's config struct (with its default); every
//! field is then settable from a file and from `--set` without further code. Named flags are a
//! convenience on top: a flags struct that serialises to the dotted field names it overrides
//! (`null` means "not given"). A plain switch skips serialising itself when off
//! (`#[serde(skip_serializing_if = "std::ops::Not::not")]`), so an unset `--resume` leaves a
//! file's setting alone, and a `--no-...` switch serialises `false` when given.
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
//! #[serde(default, deny_unknown_fields)]
//! struct Inner { lr: f64 }
//! #[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { epochs: usize, optimizer: Inner }
//!
//! #[derive(serde::Serialize)]
//! struct Flags { epochs: Option<usize>, #[serde(rename = "optimizer.lr")] lr: Option<f64> }
//!
//! let sets = vec!["optimizer.lr=0.5".to_string()];
//! let flags = Flags { epochs: Some(3), lr: None };
//! let c: Config = mlops_core::config::merge(None, &sets, &flags).unwrap();
//! assert_eq!(c, Config { epochs: 3, optimizer: Inner { lr: 0.5 } });
//! ```

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Where settings come from, for error messages.
fn origin(file: Option<&Path>) -> PathBuf {
    file.map_or_else(|| PathBuf::from("<command line>"), Path::to_path_buf)
}

/// Builds a config: `C::default()`, overlaid with the TOML `file`, the `key=value` pairs of
/// `sets` (dotted keys reach nested fields; values are TOML, bare words are strings), and the
/// non-null fields of `flags` (dotted names).
pub fn merge<C, F>(file: Option<&Path>, sets: &[String], flags: &F) -> Result<C>
where
    C: Serialize + DeserializeOwned + Default,
    F: Serialize,
{
    merge_onto(C::default(), file, sets, flags)
}

/// [`merge`] onto `base` instead of the config's defaults: what a stage whose defaults depend
/// on a setting (the train stage's student recipe, once a teacher is named) merges onto.
pub fn merge_onto<C, F>(base: C, file: Option<&Path>, sets: &[String], flags: &F) -> Result<C>
where
    C: Serialize + DeserializeOwned,
    F: Serialize,
{
    let bad = |message: String| Error::Config {
        path: origin(file),
        message,
    };
    let mut value = serde_json::to_value(base).map_err(|e| bad(e.to_string()))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let overlay = serde_json::to_value(table).map_err(|e| bad(e.to_string()))?;
        overlay_value(&mut value, overlay);
    }
    for pair in sets {
        let (key, raw) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("--set {pair:?}: expected key=value")))?;
        set_path(&mut value, key.trim(), parse_value(raw.trim())).map_err(bad)?;
    }
    if let Value::Object(given) = serde_json::to_value(flags).map_err(|e| bad(e.to_string()))? {
        for (key, v) in given {
            if v.is_null() {
                continue;
            }
            // A flag that fills part of a table (`--teacher DIR` sets `teacher.model`) keeps
            // what `--set` or the file put in the rest of it (`teacher.weight`).
            match value.get_mut(&key) {
                Some(slot) if v.is_object() => overlay_value(slot, v),
                _ => set_path(&mut value, &key, v).map_err(bad)?,
            }
        }
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// The `key=value` pairs of an inline TOML table (`--settings`): `epochs = 6` and
/// `optimizer = { lr = 0.1 }` become `epochs=6` and `optimizer.lr=0.1`, in the table's order.
/// An empty text is an empty table. An orchestrator passes a stage's whole section this way as
/// one parameter (Kubeflow's pipeline parameters are single strings).
pub fn inline_sets(text: &str) -> Result<Vec<String>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| Error::Config {
        path: PathBuf::from("<--settings>"),
        message: e.to_string(),
    })?;
    Ok(table_sets(&table))
}

/// The `key=value` pairs (dotted keys, TOML values) that set every leaf of `table`.
pub fn table_sets(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    flatten("", table, &mut out);
    out
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push(format!("{key}={other}")),
        }
    }
}

/// A `--set` value: TOML syntax (`3`, `0.5`, `true`, `[1, 2]`, `"text"`), or a bare string.
fn parse_value(raw: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn overlay_value(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => overlay_value(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Sets the dotted `key` in `value`, creating tables where a level is missing or null.
fn set_path(value: &mut Value, key: &str, new: Value) -> std::result::Result<(), String> {
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("invalid setting name {key:?}"));
    }
    let mut slot = value;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        slot = match slot {
            Value::Object(map) => map
                .entry(part.to_string())
                .or_insert(Value::Object(Map::new())),
            _ => return Err(format!("{key}: {part} is not a table of settings")),
        };
    }
    match slot {
        Value::Object(map) => {
            map.insert(parts[parts.len() - 1].to_string(), new);
            Ok(())
        }
        _ => Err(format!("{key}: not a table of settings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        lr: Option<f64>,
        names: Vec<String>,
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        epochs: usize,
        flag: bool,
        inner: Inner,
    }

    impl Default for Inner {
        fn default() -> Self {
            Inner {
                lr: None,
                names: vec!["a".into()],
            }
        }
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                epochs: 12,
                flag: true,
                inner: Inner::default(),
            }
        }
    }

    #[derive(Serialize)]
    struct NoFlags {}

    #[test]
    fn inline_settings_become_sets() {
        let sets = inline_sets("epochs = 6\ninner = { lr = 0.1, names = [\"b\"] }\n").unwrap();
        assert_eq!(sets, ["epochs=6", "inner.lr=0.1", "inner.names=[\"b\"]"]);
        let c: Config = merge(None, &sets, &NoFlags {}).unwrap();
        assert_eq!(c.epochs, 6);
        assert_eq!(c.inner.lr, Some(0.1));
        assert_eq!(c.inner.names, vec!["b"]);
        assert!(inline_sets("").unwrap().is_empty());
        let err = inline_sets("epochs = ").unwrap_err().to_string();
        assert!(err.contains("<--settings>"), "{err}");
    }

    #[test]
    fn file_then_sets_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "epochs = 3\n[inner]\nlr = 0.25\n").unwrap();
        let c: Config = merge(Some(&file), &[], &NoFlags {}).unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.inner.lr, Some(0.25));
        assert_eq!(c.inner.names, vec!["a"], "untouched nested defaults stay");

        let sets = vec!["epochs=5".into(), "inner.names=[\"x\", \"y\"]".into()];
        #[derive(Serialize)]
        struct Flags {
            epochs: Option<usize>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            flag: bool,
        }
        let c: Config = merge(
            Some(&file),
            &sets,
            &Flags {
                epochs: Some(7),
                flag: false,
            },
        )
        .unwrap();
        assert_eq!(c.epochs, 7, "flags win over --set and the file");
        assert!(c.flag, "an unset switch leaves the setting alone");
        assert_eq!(c.inner.names, vec!["x", "y"]);
        // A `--no-...` switch given: `false` reaches the setting (`--no-test-time-flip`).
        #[derive(Serialize)]
        struct Off {
            flag: Option<bool>,
        }
        let c: Config = merge(None, &[], &Off { flag: Some(false) }).unwrap();
        assert!(!c.flag, "a negative switch turns the setting off");
    }

    /// `--teacher DIR` sets `teacher.model` and must keep `--set teacher.weight=30`: a flag
    /// holding part of a table overlays it instead of replacing it.
    #[test]
    fn a_flag_filling_part_of_a_table_keeps_the_rest() {
        #[derive(Serialize)]
        struct Flags {
            inner: Option<serde_json::Value>,
        }
        let flags = Flags {
            inner: Some(serde_json::json!({ "lr": 0.5 })),
        };
        let sets = vec!["inner.names=[\"x\"]".into()];
        let c: Config = merge(None, &sets, &flags).unwrap();
        assert_eq!(c.inner.lr, Some(0.5), "the flag wins for what it sets");
        assert_eq!(
            c.inner.names,
            vec!["x"],
            "--set keeps the rest of the table"
        );
    }

    #[test]
    fn errors_name_the_source() {
        let err = merge::<Config, _>(None, &["nope=1".into()], &NoFlags {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("<command line>") && err.contains("nope"),
            "{err}"
        );
        let err = merge::<Config, _>(None, &["epochs".into()], &NoFlags {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("key=value"), "{err}");
        let err = merge::<Config, _>(None, &["epochs=many".into()], &NoFlags {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid type"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "epochs = [").unwrap();
        let err = merge::<Config, _>(Some(&file), &[], &NoFlags {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }
}
