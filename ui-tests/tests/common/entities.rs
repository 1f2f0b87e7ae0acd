// The entities most ui-tests declare operators over, included with
// `include!("../../common/entities.rs");` (the mistake under test is
// in the test's own file).

#[event_source(table = "posts")]
#[derive(serde::Deserialize)]
pub struct Post {
    pub id: i64,
}

#[event_source(table = "comments")]
#[derive(serde::Deserialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
}
