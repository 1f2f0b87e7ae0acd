use walflow::prelude::*;
use walflow::subscribe::Subscriptions;

include!("../../common/entities.rs");

fn main() {
    let hub = Subscriptions::default();
    let _sub = hub.subscribe::<Post>(Comment::POST_ID.eq(5));
}
