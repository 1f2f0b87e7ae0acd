use walflow::prelude::*;

include!("../../common/entities.rs");
include!("../../common/count.rs");

// Every mistake of one invocation is reported in one build, macro checks and
// type checks alike.
on_event! {
    operator Counter for Count {
        events: [insret],
        entities: [Comment, Post],
        id: [Comment.postid],
        delete_with: [Count],
        query: "SELECT 1",
    }

    operator Audit {
        evnts: all,
        entities: [Post],
        handler: on_post,
    }
}

async fn on_post(_: Event<Post>, _: Ctx) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
