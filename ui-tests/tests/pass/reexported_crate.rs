//! A crate that re-exports walflow hands the macros its path.

mod app {
    /// How this crate reaches walflow.
    pub mod infra {
        pub use walflow as events;
    }
}

use walflow::prelude::{event_enum, event_source, on_event};

#[event_source(table = "posts", crate = "crate::app::infra::events")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Post {
    pub id: i64,
    pub title: String,
}

#[event_source(table = "post_titles", crate = "crate::app::infra::events")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PostTitle {
    pub id: i64,
    pub title: String,
}

on_event! {
    crate = "crate::app::infra::events";

    operator Titles for PostTitle {
        events: all,
        entities: [Post],
        id: [Post.id],
        query: "INSERT INTO post_titles SELECT id, title FROM posts WHERE id = $1
                ON CONFLICT (id) DO UPDATE SET title = excluded.title",
    }

    operator Log {
        events: all,
        entities: [Post],
        id: [Post.id],
        handler: log,
    }
}

async fn log(
    event: app::infra::events::Event<Post>,
    _ctx: app::infra::events::Ctx,
) -> Result<(), app::infra::events::BoxError> {
    let _ = event.record().map(|p| &p.title);
    Ok(())
}

#[event_enum(crate = "crate::app::infra::events")]
pub enum AnyPost {
    Post(app::infra::events::Event<Post>),
}

fn main() {
    let registry = app::infra::events::Registry::from_inventory().expect("the declarations fit");
    assert!(registry.operator("Titles").is_some());
    assert!(registry.operator("Log").is_some());
    let _ = <PostTitle as app::infra::events::EventSource>::TABLE;
}
