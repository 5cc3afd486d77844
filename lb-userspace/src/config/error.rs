//! Config errors that name the file, the line, the key, the value and what is
//! allowed; and finding a key's line in the file by its path.

use std::{fmt, ops::Range, path::PathBuf};

use toml_edit::{ImDocument, Item, Value};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// Dotted key path, such as `frontend[0].listen`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Why a config file was refused: every problem found in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Everything wrong with it, in file order.
        problems: Vec<Problem>,
    },
}

fn render(path: &std::path::Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&p.display_in(path).to_string());
    }
    out
}

impl Problem {
    /// `FILE:LINE: key: message`.
    pub fn display_in<'a>(&'a self, path: &'a std::path::Path) -> impl fmt::Display + 'a {
        struct D<'a>(&'a Problem, &'a std::path::Path);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.1.display())?;
                if let Some(line) = self.0.line {
                    write!(f, ":{line}")?;
                }
                if self.0.key.is_empty() {
                    write!(f, ": {}", self.0.message)
                } else {
                    write!(f, ": {}: {}", self.0.key, self.0.message)
                }
            }
        }
        D(self, path)
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    /// A key of a table or inline table.
    Key(&'a str),
    /// An index of an array or array of tables.
    Index(usize),
}

/// The text of a config file, for turning byte offsets and key paths into
/// line numbers.
pub struct Source<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Source<'a> {
    /// Wraps the file text (parsed once more, with spans kept).
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// The trimmed text of a 1-based line.
    pub fn line_text(&self, line: usize) -> &'a str {
        self.text.lines().nth(line - 1).unwrap_or("").trim()
    }

    /// The line of the key at `path` (or of the closest enclosing table that
    /// exists), if the file has it.
    pub fn line_of_path(&self, path: &[Seg<'_>]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best: Option<Range<usize>> = None;
        let mut cur = Cursor::Table(doc.as_table());
        for seg in path {
            let (next, span) = cur.step(*seg);
            if span.is_some() {
                best = span;
            }
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
        best.map(|r| self.line_of(r.start))
    }
}

#[derive(Clone, Copy)]
enum Cursor<'d> {
    Table(&'d toml_edit::Table),
    Item(&'d Item),
    Value(&'d Value),
}

impl<'d> Cursor<'d> {
    fn step(&self, seg: Seg<'_>) -> (Option<Cursor<'d>>, Option<Range<usize>>) {
        match (*self, seg) {
            (Cursor::Table(t), Seg::Key(k)) | (Cursor::Item(Item::Table(t)), Seg::Key(k)) => {
                let span = t.key(k).and_then(toml_edit::Key::span);
                (t.get(k).map(Cursor::Item), span)
            }
            (Cursor::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => {
                let t = a.get(i);
                (t.map(Cursor::Table), t.and_then(toml_edit::Table::span))
            }
            (Cursor::Item(Item::Value(v)) | Cursor::Value(v), seg) => match (v, seg) {
                (Value::InlineTable(t), Seg::Key(k)) => {
                    let span = t.key(k).and_then(toml_edit::Key::span);
                    (t.get(k).map(Cursor::Value), span)
                }
                (Value::Array(a), Seg::Index(i)) => {
                    let v = a.get(i);
                    (v.map(Cursor::Value), v.and_then(Value::span))
                }
                _ => (None, None),
            },
            _ => (None, None),
        }
    }
}
