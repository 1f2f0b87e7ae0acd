//! Declarations an application never names compile without warnings: private
//! operators, field descriptors and event enums are used by what the macros
//! generate.
#![deny(warnings)]

use walflow::prelude::*;

#[event_source(table = "notes")]
#[derive(serde::Deserialize)]
struct Note {
    id: i64,
    text: String,
}

#[event_source(table = "tags")]
#[derive(serde::Deserialize)]
struct Tag {
    id: i64,
}

#[event_source(table = "note_counts")]
#[derive(serde::Deserialize)]
struct NoteCount {
    id: i64,
}

on_event! {
    operator CountNotes for NoteCount {
        events: all,
        entities: [Note],
        query: "SELECT $1",
    }

    operator Log {
        events: [insert],
        entities: [Note, Tag],
        handler: log,
    }
}

#[event_enum]
enum Change {
    Note(Event<Note>),
    Tag(Event<Tag>),
}

async fn log(change: Change, _: Ctx) -> Result<(), std::io::Error> {
    match change.into_parts() {
        (Some(note), _) => {
            let _ = (note.id, note.text);
        }
        (None, Some(tag)) => {
            let _ = tag.id;
        }
        (None, None) => {}
    }
    Ok(())
}

impl Change {
    fn into_parts(self) -> (Option<Note>, Option<Tag>) {
        match self {
            Change::Note(e) => (e.into_record(), None),
            Change::Tag(e) => (None, e.into_record()),
        }
    }
}

fn main() {
    let _ = NoteCount { id: 0 }.id;
}
