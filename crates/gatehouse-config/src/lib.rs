//! The configuration file: its TOML schema, defaults, secret sources and the checks that make a
//! typo or an unsafe setting fail at start, loudly.
//!
//! Every struct denies unknown fields. Relative paths are resolved against the directory of the
//! config file. This crate owns parsing and validation only; it must not open sockets, read keys or
//! policies (it only names where they are), or know how other crates use the values.
#![forbid(unsafe_code)]

/// `TryFrom<String>` through the type's `parse` and `From<T> for String` through its `Display`:
/// what `#[serde(try_from = "String", into = "String")]` needs of a value written as text.
macro_rules! text_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s)
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

/// Splits `250ms` into 250 and `ms`; `what` and `examples` go into the error.
fn number_and_unit<'a>(s: &'a str, what: &str, examples: &str) -> Result<(u64, &'a str), String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n = num.parse().map_err(|_| {
        format!("invalid {what} `{s}`: expected a number and a unit, e.g. {examples}")
    })?;
    Ok((n, unit))
}

mod duration;
mod env;
mod net;
mod schema;
mod size;

pub use duration::ConfigDuration;
pub use env::ENV_PREFIX;
pub use net::IpNet;
pub use schema::*;
pub use size::ByteSize;

use std::path::{Path, PathBuf};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid or names an unknown key.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value is out of range or unsafe.
    #[error("invalid config {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The offending key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A secret could not be read from its file or environment variable.
    #[error("cannot read secret {what}: {message}")]
    Secret {
        /// Which secret.
        what: String,
        /// Why.
        message: String,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    /// Reads a config file, applies the process's `GATEHOUSE__*` environment overrides (see
    /// [`ENV_PREFIX`]), then parses and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Only `GATEHOUSE__*` variables are read, and a non-UTF-8 one is an error, not a panic
        // (`std::env::vars` panics on any non-UTF-8 variable in the whole environment).
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            if !k.to_string_lossy().starts_with(ENV_PREFIX) {
                continue;
            }
            match (k.into_string(), v.into_string()) {
                (Ok(k), Ok(v)) => vars.push((k, v)),
                (Ok(k), Err(_)) | (Err(_), Ok(k)) => {
                    return Err(ConfigError::Invalid {
                        path: path.display().to_string(),
                        key: k,
                        message: "the environment variable is not UTF-8".to_owned(),
                    });
                }
                (Err(k), Err(_)) => {
                    return Err(ConfigError::Invalid {
                        path: path.display().to_string(),
                        key: k.to_string_lossy().into_owned(),
                        message: "the environment variable is not UTF-8".to_owned(),
                    });
                }
            }
        }
        Self::parse_with_env(&text, &base, &path.display().to_string(), vars)
    }

    /// Parses and validates config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path, name: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, base, name, std::iter::empty())
    }

    /// [`Self::parse`] with environment overrides from `vars` (only `GATEHOUSE__*` ones are
    /// read). The file is checked on its own first, so that its mistakes are reported at their
    /// line; a mistake an override makes names the variable.
    pub fn parse_with_env(
        text: &str,
        base: &Path,
        name: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: name.to_owned(),
                    message: parse_message(text, &e),
                })?;
        let applied =
            env::apply(&mut table, vars).map_err(|(var, message)| ConfigError::Invalid {
                path: name.to_owned(),
                key: var,
                message,
            })?;
        let mut cfg: Config = if applied.is_empty() {
            toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: name.to_owned(),
                message: parse_message(text, &e),
            })?
        } else {
            serde::Deserialize::deserialize(toml::Value::Table(table)).map_err(
                |e: toml::de::Error| ConfigError::Parse {
                    path: name.to_owned(),
                    message: format!(
                        "{} (with the environment overrides {})",
                        e.message(),
                        applied.join(", ")
                    ),
                },
            )?
        };
        cfg.env_overrides = applied;
        cfg.resolve_paths(base);
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: name.to_owned(),
                key,
                message,
            })?;
        Ok(cfg)
    }
}

/// toml's message at its line and column, with the offending line shown up to its `=` only: a
/// value is never repeated, as it may be a secret written inline or mistyped (`client_secret =
/// hunter2`, a secret under a misspelt key), and errors reach logs.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_owned();
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let shown = match line_text.split_once('=') {
        Some((key, _)) => format!("{} = (value not shown)", key.trim_end()),
        None => line_text.trim_end().to_owned(),
    };
    format!(
        "TOML parse error at line {line}, column {column}\n{line:>4} | {shown}\n{}",
        e.message()
    )
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Reads a secret from where the config says it is.
pub fn read_secret(
    what: &str,
    src: &SecretSource,
) -> Result<gatehouse_core::Redacted<String>, ConfigError> {
    let err = |message: String| ConfigError::Secret {
        what: what.to_owned(),
        message,
    };
    match src {
        SecretSource::File { file } => std::fs::read_to_string(file)
            .map(gatehouse_core::Redacted::new)
            .map_err(|e| err(format!("{}: {e}", file.display()))),
        SecretSource::Env { env } => std::env::var(env)
            .map(gatehouse_core::Redacted::new)
            .map_err(|_| err(format!("environment variable {env} is not set"))),
    }
}

/// Whether `id` is a SPIFFE id as the SPIFFE standard defines it: `spiffe://`, a trust domain of
/// lower-case letters, digits, `.`, `-` and `_`, then a path of non-empty segments of letters,
/// digits, `.`, `-` and `_`, none of them `.` or `..`; no query, no fragment, at most 2048 bytes.
pub fn check_spiffe_id(id: &str) -> Result<(), &'static str> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("must start with spiffe://");
    };
    if id.len() > 2048 {
        return Err("longer than 2048 bytes");
    }
    let (domain, path) = rest.split_once('/').map_or((rest, ""), |(d, p)| (d, p));
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("the trust domain must be lower-case letters, digits, '.', '-' and '_'");
    }
    if !path.is_empty() || rest.ends_with('/') {
        for seg in path.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err("the path has an empty, '.' or '..' segment (or a trailing '/')");
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err("the path may hold only letters, digits, '.', '-' and '_'");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
