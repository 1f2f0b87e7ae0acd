//! Columns follow `#[serde(rename)]` and `#[serde(rename_all)]`; skipped
//! fields are no columns; an `id` entry names the field, the registration
//! its column.

use walflow::prelude::*;

#[event_source(table = "authors", id = "author_id")]
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Author {
    pub author_id: i64,
    #[serde(rename = "display_name")]
    pub name: String,
    #[serde(skip)]
    pub cached: Option<String>,
}

#[event_source(table = "books")]
#[derive(Debug, serde::Deserialize)]
pub struct Book {
    pub id: i64,
    #[serde(rename = "writer")]
    pub author: i64,
    pub r#type: String,
}

#[event_source(table = "author_books")]
#[derive(Debug, serde::Deserialize)]
pub struct AuthorBooks {
    pub id: i64,
}

on_event! {
    operator AuthorBooksCount for AuthorBooks {
        events: all,
        entities: [Book, Author],
        id: [Book.author],
        query: "SELECT $1",
    }
}

fn main() {
    assert_eq!(<Author as EventSource>::COLUMNS, ["authorId", "display_name"]);
    assert_eq!(<Author as EventSource>::ID_COLUMN, "authorId");
    assert_eq!(Author::NAME.column(), "display_name");
    assert_eq!(Book::AUTHOR.column(), "writer");
    assert_eq!(Book::TYPE.column(), "type");
    let registry = walflow::Registry::from_inventory().unwrap();
    let op = registry.operator("AuthorBooksCount").unwrap();
    let mapping: Vec<_> = op.id_mapping.iter().map(|m| (m.table.table, m.column)).collect();
    assert_eq!(mapping, [("books", "writer"), ("authors", "authorId")]);
}
