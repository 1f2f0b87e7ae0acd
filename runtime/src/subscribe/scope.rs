//! Which rows a subscription follows: [`Scope`] and typed [`Filter`]s built
//! from the `#[event_source]` field descriptors.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;

use crate::registry::{EventSource, Field};
use crate::value::Record;

/// Which rows of `T` a subscription follows.
///
/// - [`Scope::All`]: every row of the table (EventStreamex's "unscoped").
/// - [`Scope::id`]: one row, by its id field (EventStreamex's "direct").
/// - a [`Filter`] built from field descriptors, such as
///   `Comment::POST_ID.eq(5)` or `Comment::POST_ID.eq(5).and(Comment::AUTHOR.eq(a))`
///   (EventStreamex's "scoped").
/// - [`Scope::Nothing`]: no row at all; what a page without the parameter it
///   scopes by subscribes to, so that the subscription exists and can later be
///   given a scope with [`Subscription::set_scope`](super::Subscription::set_scope).
///
/// Values compare by their JSON form: the value given to `eq` serialized
/// with serde, the column's value as [`Value::to_plain_json`](crate::Value::to_plain_json)
/// renders it (integers, text, uuids, booleans and timestamps compare as
/// expected; a float scope matches only a float column of the same value).
pub enum Scope<T> {
    /// Every row.
    All,
    /// Rows whose columns equal the filter's values.
    Where(Filter<T>),
    /// No row.
    Nothing,
}

impl<T> Clone for Scope<T> {
    fn clone(&self) -> Self {
        match self {
            Scope::All => Scope::All,
            Scope::Where(f) => Scope::Where(f.clone()),
            Scope::Nothing => Scope::Nothing,
        }
    }
}

impl<T> fmt::Debug for Scope<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("All"),
            Scope::Where(filter) => write!(f, "Where({filter:?})"),
            Scope::Nothing => f.write_str("Nothing"),
        }
    }
}

impl<T: EventSource> Scope<T> {
    /// The row whose id field equals `id`.
    pub fn id(id: T::Id) -> Self
    where
        T::Id: Serialize,
    {
        Scope::Where(Filter::column(T::ID_COLUMN, &id))
    }

    /// [`Scope::id`] when the id is known, [`Scope::Nothing`] otherwise
    /// (a missing parameter subscribes to nothing rather than failing).
    pub fn id_opt(id: Option<T::Id>) -> Self
    where
        T::Id: Serialize,
    {
        id.map_or(Scope::Nothing, Scope::id)
    }
}

impl<T> From<Filter<T>> for Scope<T> {
    fn from(filter: Filter<T>) -> Self {
        Scope::Where(filter)
    }
}

impl<T> From<Option<Filter<T>>> for Scope<T> {
    /// `None` (a missing parameter) subscribes to nothing.
    fn from(filter: Option<Filter<T>>) -> Self {
        filter.map_or(Scope::Nothing, Scope::Where)
    }
}

/// Equalities on columns of `T`, built with [`Field::eq`] and combined with
/// [`Filter::and`]. A filter on another entity's field, or with a value of
/// another type than the field's, does not compile.
pub struct Filter<T> {
    /// `(column, value as JSON text)`, sorted by column, one per column.
    terms: Vec<(&'static str, String)>,
    _entity: PhantomData<fn() -> T>,
}

impl<T> Clone for Filter<T> {
    fn clone(&self) -> Self {
        Filter {
            terms: self.terms.clone(),
            _entity: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Filter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (column, value) in &self.terms {
            list.entry(&format_args!("{column} = {value}"));
        }
        list.finish()
    }
}

impl<T> Filter<T> {
    fn column<V: Serialize + ?Sized>(column: &'static str, value: &V) -> Self {
        Filter {
            terms: vec![(column, json_text(value))],
            _entity: PhantomData,
        }
    }

    /// Both this filter and `other` (the later value wins when both constrain
    /// one column).
    pub fn and(mut self, other: Filter<T>) -> Self {
        for (column, value) in other.terms {
            match self.terms.binary_search_by(|(c, _)| c.cmp(&column)) {
                Ok(i) => self.terms[i].1 = value,
                Err(i) => self.terms.insert(i, (column, value)),
            }
        }
        self
    }

    /// The columns the filter constrains, sorted.
    pub fn columns(&self) -> Vec<&'static str> {
        self.terms.iter().map(|(c, _)| *c).collect()
    }

    /// The index key of this filter.
    pub(crate) fn key(&self) -> ScopeKey {
        let mut key = String::new();
        for (column, value) in &self.terms {
            push_term(&mut key, column, value);
        }
        ScopeKey {
            columns: self.columns(),
            key,
        }
    }
}

impl<T, V: Serialize> Field<T, V> {
    /// Rows whose column equals `value`: `Comment::POST_ID.eq(5)`.
    pub fn eq(self, value: V) -> Filter<T> {
        Filter::column(self.column(), &value)
    }
}

/// The columns a filter constrains and its values, as a lookup key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ScopeKey {
    pub(crate) columns: Vec<&'static str>,
    pub(crate) key: String,
}

fn json_text<V: Serialize + ?Sized>(value: &V) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn push_term(key: &mut String, column: &str, value: &str) {
    key.push_str(column);
    key.push('\u{0}');
    key.push_str(value);
    key.push('\u{1}');
}

/// The key a record has for `columns`, or `None` when it lacks one of them
/// (an old row without `REPLICA IDENTITY FULL`).
pub(crate) fn record_key(record: &Record, columns: &[&'static str]) -> Option<String> {
    let mut key = String::new();
    for column in columns {
        let value = record.get(column)?;
        if matches!(value, crate::Value::UnchangedToast) {
            return None;
        }
        push_term(&mut key, column, &value.to_plain_json().to_string());
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Value;

    struct Comment;
    const POST_ID: Field<Comment, i64> = Field::new("post_id");
    const AUTHOR: Field<Comment, String> = Field::new("author");

    #[test]
    fn filters_key_like_records() {
        let filter = AUTHOR.eq("ann".into()).and(POST_ID.eq(5));
        let key = filter.key();
        assert_eq!(key.columns, ["author", "post_id"]);
        let record = Record::new(
            Arc::from(vec![
                Arc::from("id"),
                Arc::from("post_id"),
                Arc::from("author"),
            ]),
            vec![Value::Int8(1), Value::Int4(5), Value::Text("ann".into())],
        );
        assert_eq!(record_key(&record, &key.columns).unwrap(), key.key);
        let other = POST_ID.eq(6).and(AUTHOR.eq("ann".into()));
        assert_ne!(record_key(&record, &key.columns).unwrap(), other.key().key);
        assert!(record_key(&record, &["missing"]).is_none());
    }

    #[test]
    fn and_replaces_a_column() {
        let filter = POST_ID.eq(5).and(POST_ID.eq(6));
        assert_eq!(format!("{filter:?}"), "[post_id = 6]");
    }
}
