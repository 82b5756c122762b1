//! Maps YAML positions to key paths (`nodes[1].port`) and back.
//!
//! serde-saphyr reports *where* a value failed (line and column) but not *which key* it
//! belonged to, and semantic validation knows the key but not the line. Operators need
//! both to fix a file quickly, so we re-read the YAML events once and remember where
//! every key and value starts. Best effort: if the text does not parse, the index is
//! simply empty and errors carry whatever the deserializer reported.

use serde_saphyr::granit_parser::{Event, Parser};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    /// 1-based, as serde-saphyr reports them.
    line: u64,
    column: u64,
    /// Nesting level; a key counts one deeper than the mapping that starts where it does.
    depth: usize,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Debug, Default)]
pub struct YamlIndex {
    entries: Vec<Entry>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl YamlIndex {
    pub fn build(yaml: &str) -> YamlIndex {
        let mut entries = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(yaml);
        while let Some(Ok((event, span))) = parser.next_event() {
            let is_start = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
            let is_node = is_start || matches!(event, Event::Scalar(..) | Event::Alias(..));
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
                continue;
            }
            if !is_node {
                continue;
            }
            let line = span.start.line() as u64;
            let column = span.start.col() as u64 + 1;
            let depth = stack.len();
            // Where does this node sit: a mapping key, a mapping value, a list item, the root?
            let (path, is_key) = match stack.last_mut() {
                None => (String::new(), false),
                Some(Frame::Seq { path, next }) => {
                    let p = format!("{path}[{next}]");
                    *next += 1;
                    (p, false)
                }
                Some(Frame::Map { path, key }) => match key.take() {
                    Some(k) => (join(path, &k), false),
                    None => {
                        let name = match &event {
                            Event::Scalar(text, ..) => text.to_string(),
                            _ => "?".to_string(),
                        };
                        let p = join(path, &name);
                        *key = Some(name);
                        (p, true)
                    }
                },
            };
            entries.push(Entry {
                path: path.clone(),
                line,
                column,
                depth: depth + usize::from(is_key),
            });
            if is_start {
                // A complex (non-scalar) key gets a frame too, so its end pops correctly.
                stack.push(match event {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, next: 0 },
                });
            }
        }
        YamlIndex { entries }
    }

    /// The key path of the node at `line:column`. `outermost` picks the container when
    /// several nodes start there (a "missing field" error points at the mapping, which
    /// starts exactly where its first key does).
    pub fn path_at(&self, line: u64, column: u64, outermost: bool) -> Option<&str> {
        let exact = self
            .entries
            .iter()
            .filter(|e| e.line == line && e.column == column);
        let found = if outermost {
            exact.min_by_key(|e| e.depth)
        } else {
            exact.max_by_key(|e| e.depth)
        };
        found
            .or_else(|| {
                // Not at a node start (e.g. inside a scalar): the last node that began before.
                self.entries
                    .iter()
                    .filter(|e| (e.line, e.column) <= (line, column))
                    .max_by_key(|e| (e.line, e.column, e.depth))
            })
            .map(|e| e.path.as_str())
    }

    /// The line where `path` is written (its key, or the item for list elements).
    pub fn line_of(&self, path: &str) -> Option<u64> {
        self.entries.iter().find(|e| e.path == path).map(|e| e.line)
    }

    /// Every key path written in the document (list indices included).
    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: 1.2.3.4:5
nodes:
  - name: a
    port: 1
  - name: b
    port: x
pool: {size: 3}
";

    #[test]
    fn line_of_paths() {
        let idx = YamlIndex::build(DOC);
        let cases: &[(&str, Option<u64>)] = &[
            ("listen", Some(1)),
            ("nodes", Some(2)),
            ("nodes[0]", Some(3)),
            ("nodes[0].name", Some(3)),
            ("nodes[1].port", Some(6)),
            ("pool.size", Some(7)),
            ("pool.idle_timeout", None),
            ("nodes[2]", None),
        ];
        for (path, line) in cases {
            assert_eq!(idx.line_of(path), *line, "{path}");
        }
    }

    #[test]
    fn path_at_positions() {
        let idx = YamlIndex::build(DOC);
        let cases: &[(u64, u64, bool, Option<&str>)] = &[
            (6, 11, false, Some("nodes[1].port")),
            (6, 5, false, Some("nodes[1].port")),
            (5, 5, true, Some("nodes[1]")),
            (5, 5, false, Some("nodes[1].name")),
            (1, 1, true, Some("")),
            (1, 1, false, Some("listen")),
            (7, 14, false, Some("pool.size")),
            (1, 12, false, Some("listen")),
        ];
        for (line, col, outer, want) in cases {
            assert_eq!(
                idx.path_at(*line, *col, *outer),
                *want,
                "{line}:{col} outer={outer}"
            );
        }
    }

    #[test]
    fn broken_yaml_gives_partial_index() {
        let idx = YamlIndex::build("listen: x\nnodes: [\n");
        assert_eq!(idx.line_of("listen"), Some(1));
        assert!(YamlIndex::build("").path_at(1, 1, false).is_none());
    }
}
