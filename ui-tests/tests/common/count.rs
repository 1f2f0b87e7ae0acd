// A derived table for the query operators of the ui-tests, included with
// `include!("../../common/count.rs");`.

#[event_source(table = "counts")]
#[derive(serde::Deserialize)]
pub struct Count {
    pub id: i64,
}
