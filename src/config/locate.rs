//! Points an error at the config text: a key path → line and column.

use std::fmt;
use toml_edit::{Document, Item, Table, Value};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `retention.rules[1].older_than`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
    pub fn join(&self, other: &KeyPath) -> Self {
        let mut v = self.0.clone();
        v.extend(other.0.iter().cloned());
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

/// Step from `node` along `seg`: the span to point at and the child.
fn child<'a>(node: Node<'a>, seg: &Seg) -> Option<(Option<std::ops::Range<usize>>, Node<'a>)> {
    match (node, seg) {
        (Node::Item(Item::Value(v)), seg) => child(Node::Value(v), seg),
        (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => {
            let t = a.get(*i)?;
            Some((t.span(), Node::Table(t)))
        }
        (Node::Item(it), Seg::Key(k)) => {
            let (key, next) = it.as_table_like()?.get_key_value(k)?;
            Some((key.span(), Node::Item(next)))
        }
        (Node::Table(t), Seg::Key(k)) => {
            let (key, next) = t.get_key_value(k)?;
            Some((key.span(), Node::Item(next)))
        }
        (Node::Value(v), Seg::Key(k)) => {
            let (key, next) = v.as_inline_table()?.get_key_value(k)?;
            Some((key.span(), Node::Item(next)))
        }
        (Node::Value(v), Seg::Index(i)) => {
            let el = v.as_array()?.get(*i)?;
            Some((el.span(), Node::Value(el)))
        }
        _ => None,
    }
}

/// The byte offset of the deepest part of `path` present in the document:
/// the key itself where it exists, else the nearest enclosing one.
pub fn locate(doc: &Document<&str>, path: &KeyPath) -> usize {
    let mut best = 0usize;
    let mut node = Node::Item(doc.as_item());
    for seg in &path.0 {
        let Some((span, next)) = child(node, seg) else {
            break;
        };
        if let Some(span) = span {
            best = span.start;
        }
        node = next;
    }
    best
}
