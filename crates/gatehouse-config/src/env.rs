//! Environment overrides: `GATEHOUSE__SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`, for a
//! container whose config file is baked into the image or mounted read-only.
//!
//! A variable's name after `GATEHOUSE__` is the key's path, each part upper-cased and joined by
//! `__`; a number names an entry of a list (`GATEHOUSE__ISSUERS__0__AUDIENCES`). The value is read
//! as a TOML value (`8080`, `true`, `["a", "b"]`, `{ env = "X" }`), or else as a string; where the
//! file already has a string, the value is always that string unless it is written as a quoted
//! TOML string. A secret is never an override's value: override where it is read from
//! (`GATEHOUSE__TOKENS__SIGNING_KEY__FILE=/run/secrets/key`).

use toml::Value;

/// The prefix of override variables: two underscores, so that `GATEHOUSE_CONFIG`,
/// `GATEHOUSE_LOG` and the CLI's own variables are never taken for one.
pub const ENV_PREFIX: &str = "GATEHOUSE__";

/// Applies every `GATEHOUSE__*` variable of `vars` to `table`, in name order. Returns the names
/// applied (never their values), or the first variable that cannot be applied and why.
pub(crate) fn apply(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, (String, String)> {
    let mut picked: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    picked.sort();
    let mut applied = Vec::new();
    for (name, raw) in picked {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path
            .iter()
            .any(|p| p.is_empty() || p.starts_with('_') || p.ends_with('_'))
        {
            return Err((
                name,
                "an empty key part, or one starting or ending with `_` (three underscores in a \
                 row, or a trailing `__`)"
                    .to_owned(),
            ));
        }
        set(table, &path, &raw).map_err(|m| (name.clone(), m))?;
        applied.push(name);
    }
    Ok(applied)
}

/// Sets `path` in `table` to `raw`, creating tables on the way.
fn set(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let mut root = Value::Table(std::mem::take(table));
    let result = set_in(&mut root, path, raw, 0);
    if let Value::Table(t) = root {
        *table = t;
    }
    result
}

fn set_in(here: &mut Value, path: &[String], raw: &str, depth: usize) -> Result<(), String> {
    let part = &path[depth];
    let last = depth + 1 == path.len();
    let shown = || path[..=depth].join(".");
    match here {
        Value::Table(t) => {
            if last {
                let value = value_for(raw, t.get(part.as_str()));
                t.insert(part.clone(), value);
                return Ok(());
            }
            let next = t
                .entry(part.clone())
                .or_insert_with(|| Value::Table(toml::Table::new()));
            // A deeper path replaces a value with a table: `GATEHOUSE__STORE__URL__FILE` moves
            // a URL written in the file to a secret file.
            if !matches!(next, Value::Table(_) | Value::Array(_)) {
                *next = Value::Table(toml::Table::new());
            }
            set_in(next, path, raw, depth + 1)
        }
        Value::Array(a) => {
            let i: usize = part.parse().map_err(|_| {
                format!(
                    "`{}` is a list: name an entry by its number",
                    path[..depth].join(".")
                )
            })?;
            if i > a.len() {
                return Err(format!(
                    "`{}` has {} entries: an override adds at most the next one ({})",
                    path[..depth].join("."),
                    a.len(),
                    a.len()
                ));
            }
            if last {
                let value = value_for(raw, a.get(i));
                if i == a.len() {
                    a.push(value);
                } else {
                    a[i] = value;
                }
                return Ok(());
            }
            if i == a.len() {
                a.push(Value::Table(toml::Table::new()));
            }
            set_in(&mut a[i], path, raw, depth + 1)
        }
        _ => Err(format!("`{}` is a value, not a table", shown())),
    }
}

/// The TOML value `raw` stands for: a TOML value when it reads as one, a string otherwise; where
/// the file has a string, a string (`"123"` stays text; a quoted TOML string is unquoted).
fn value_for(raw: &str, old: Option<&Value>) -> Value {
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    match (old, parsed) {
        (Some(Value::String(_)), Some(Value::String(s))) => Value::String(s),
        // A table or a list is never meant as text (`{ file = "..." }`, `["a", "b"]`).
        (Some(Value::String(_)), Some(v @ (Value::Table(_) | Value::Array(_)))) => v,
        (Some(Value::String(_)), _) => Value::String(raw.to_owned()),
        (_, Some(v)) => v,
        (_, None) => Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_set_scalars_tables_and_list_entries_and_keep_strings_strings() {
        let mut t: toml::Table = r#"
            [server]
            listen = "127.0.0.1:8080"
            [[issuers]]
            issuer = "https://a"
            audiences = ["x"]
            [tokens]
            issuer = "gh"
        "#
        .parse()
        .unwrap();
        let applied = apply(
            &mut t,
            env(&[
                ("GATEHOUSE__SERVER__LISTEN", "0.0.0.0:9000"),
                ("GATEHOUSE__SERVER__WORKER_THREADS", "4"),
                ("GATEHOUSE__ISSUERS__0__AUDIENCES", r#"["y", "z"]"#),
                ("GATEHOUSE__ISSUERS__1__ISSUER", "https://b"),
                ("GATEHOUSE__TOKENS__ISSUER", "123"),
                ("GATEHOUSE__TOKENS__SIGNING_KEY__FILE", "/run/secrets/key"),
                ("GATEHOUSE_CONFIG", "/etc/gatehouse/gatehouse.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 6, "{applied:?}");
        assert_eq!(t["server"]["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(t["server"]["worker_threads"].as_integer(), Some(4));
        assert_eq!(t["issuers"][0]["audiences"][1].as_str(), Some("z"));
        assert_eq!(t["issuers"][1]["issuer"].as_str(), Some("https://b"));
        assert_eq!(
            t["tokens"]["issuer"].as_str(),
            Some("123"),
            "a string stays a string"
        );
        assert_eq!(
            t["tokens"]["signing_key"]["file"].as_str(),
            Some("/run/secrets/key")
        );
        // A string in the file becomes a table or a list when the override says so.
        let mut t: toml::Table =
            "[store]\nurl = \"sqlite://x.db\"\n[[issuers]]\naudiences = \"a\"\n"
                .parse()
                .unwrap();
        apply(
            &mut t,
            env(&[
                ("GATEHOUSE__STORE__URL__FILE", "/run/secrets/db-url"),
                ("GATEHOUSE__ISSUERS__0__AUDIENCES", r#"["a", "b"]"#),
            ]),
        )
        .unwrap();
        assert_eq!(
            t["store"]["url"]["file"].as_str(),
            Some("/run/secrets/db-url")
        );
        assert_eq!(t["issuers"][0]["audiences"][1].as_str(), Some("b"));
    }

    #[test]
    fn an_override_that_cannot_apply_names_itself() {
        let mut t: toml::Table = "[server]\nlisten = \"a\"\n[[issuers]]\nissuer = \"i\"\n"
            .parse()
            .unwrap();
        for (name, why) in [
            ("GATEHOUSE__ISSUERS__5__ISSUER", "at most the next one"),
            ("GATEHOUSE__ISSUERS__FIRST", "name an entry by its number"),
            ("GATEHOUSE__SERVER___LISTEN", "empty key part"),
        ] {
            let (n, m) = apply(&mut t, env(&[(name, "1")])).unwrap_err();
            assert_eq!(n, name);
            assert!(m.contains(why), "{name}: {m}");
        }
    }
}
