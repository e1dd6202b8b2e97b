//! The `KODO_<SECTION>_<KEY>` overlay: environment variables over the file.
//!
//! Hand-written rather than a layered config crate (figment, config-rs):
//! the keys have underscores of their own (`KODO_API_MAX_BODY_BYTES` is
//! `api.max_body_bytes`), which a generic splitter on `_` gets wrong; a
//! misspelt variable gets a "did you mean" warning; and an error names the
//! variable and the key. The crates would add a second `toml` major version
//! (figment 0.10 uses toml 0.8, this workspace 1.x). It is 100 lines.

use super::{Config, ConfigError};
use std::collections::BTreeMap;

/// `KODO_*` variables that are not config keys: kodo sets them for flows.
const NOT_CONFIG: &[&str] = &[
    "KODO_FID",
    "KODO_FLOW",
    "KODO_OWNER",
    "KODO_ATTEMPT",
    "KODO_JOURNAL",
    "KODO_LAUNCH",
    // Where the bundled Python package goes (runtime/src/python.rs).
    "KODO_PYTHON_DIR",
];

/// Sections whose keys `KODO_*` variables may override.
const OVERRIDABLE: &[&str] = &[
    "node",
    "api",
    "metrics",
    "telemetry",
    "store",
    "transport",
    "cluster",
    "spooler",
    "limits",
    "log",
    "execution",
    "temporal",
];

/// Applies `KODO_<SECTION>_<KEY>` variables to the parsed file. Returns the
/// keys they set (key -> variable) and a warning for each `KODO_*` variable
/// that names no key.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(BTreeMap<String, String>, Vec<String>), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let known: Vec<(String, &str, &String, &toml::Value)> = OVERRIDABLE
        .iter()
        .filter_map(|section| Some((*section, defaults.get(*section)?.as_table()?)))
        .flat_map(|(section, keys)| {
            keys.iter().map(move |(key, default)| {
                (
                    format!("KODO_{section}_{key}").to_uppercase(),
                    section,
                    key,
                    default,
                )
            })
        })
        .collect();
    let (mut set, mut warnings) = (BTreeMap::new(), Vec::new());
    for (var, raw) in env {
        if !var.starts_with("KODO_")
            || NOT_CONFIG.contains(&var.as_str())
            || var.starts_with("KODO_TEST_")
        {
            continue;
        }
        let Some((_, section, key, default)) = known.iter().find(|(name, ..)| *name == var) else {
            let nearest = known
                .iter()
                .map(|(name, ..)| (strsim::levenshtein(name, &var), name))
                .min()
                .filter(|(distance, _)| *distance <= 3)
                .map(|(_, name)| format!(" (did you mean {name}?)"))
                .unwrap_or_default();
            warnings.push(format!(
                "ignoring the environment variable {var}: it names no config key{nearest}"
            ));
            continue;
        };
        let (section, key) = (*section, (*key).clone());
        let bad = |message: String| ConfigError {
            source_name: var.clone(),
            key: format!("{section}.{key}"),
            message,
        };
        let value = match default {
            toml::Value::Integer(_) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| bad(format!("expected an integer, got {raw:?}")))?,
            toml::Value::Float(_) => raw
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| bad(format!("expected a number, got {raw:?}")))?,
            toml::Value::Boolean(_) => raw
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| bad(format!("expected true or false, got {raw:?}")))?,
            _ => toml::Value::String(raw),
        };
        let section_table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table.as_table_mut() {
            Some(t) => {
                t.insert(key.clone(), value);
            }
            None => return Err(bad(format!("[{section}] is not a table in the file"))),
        }
        set.insert(format!("{section}.{key}"), var);
    }
    Ok((set, warnings))
}
