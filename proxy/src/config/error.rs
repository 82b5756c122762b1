//! Config errors. Every message names the file, the line (when known) and the key path,
//! because the person reading it is an operator with an editor open on that file.

use super::yaml_index::YamlIndex;
use serde_saphyr::MessageFormatter;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A value in the file (or set by an environment variable) is wrong.
    #[error("{}", Located { file, line: *line, key, message })]
    Invalid {
        file: String,
        line: Option<u64>,
        /// Dotted key path, e.g. `nodes[1].port`; empty for document-level errors.
        key: String,
        message: String,
    },
    /// An environment override could not be parsed.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

struct Located<'a> {
    file: &'a str,
    line: Option<u64>,
    key: &'a str,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(self.message)
    }
}

/// serde-saphyr speaks of parser events and Rust types; operators think in YAML.
const FRIENDLIER: &[(&str, &str)] = &[
    ("expected mapping start", "expected a mapping (key: value)"),
    ("expected sequence start", "expected a list"),
    (
        "invalid u16",
        "invalid value: expected an integer from 0 to 65535",
    ),
    (
        "invalid usize",
        "invalid value: expected a non-negative integer",
    ),
    (
        "invalid u64",
        "invalid value: expected a non-negative integer",
    ),
];

impl ConfigError {
    /// Converts a serde-saphyr error, adding the key path its position belongs to.
    pub(crate) fn from_yaml(
        file: &str,
        index: &YamlIndex,
        err: &serde_saphyr::Error,
    ) -> ConfigError {
        let mut message = serde_saphyr::UserMessageFormatter
            .format_message(err)
            .into_owned();
        for (from, to) in FRIENDLIER {
            message = message.replace(from, to);
        }
        let location = err.location().filter(|l| l.line() > 0);
        // "missing field" points at the mapping that lacks it, which starts exactly where
        // its first key does: name the mapping, not that key.
        let outermost = message.contains("missing field");
        let key = location
            .and_then(|l| index.path_at(l.line(), l.column(), outermost))
            .unwrap_or_default()
            .to_string();
        ConfigError::Invalid {
            file: file.to_string(),
            line: location.map(|l| l.line()),
            key,
            message,
        }
    }
}
