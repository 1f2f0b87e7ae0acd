//! Realtime subscriptions fed by the WAL listener of a real PostgreSQL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use walflow::listener::ListenerMessage;
use walflow::prelude::*;
use walflow::subscribe::{
    Action, Delivery, HubOptions, Scope, Subscription, SubscriptionError, Subscriptions, WaitError,
    after_commit,
};

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Post {
    id: i64,
    title: String,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Comment {
    id: i64,
    post_id: i64,
    author: String,
}

const TIMEOUT: Duration = Duration::from_secs(20);

/// A database with `posts` and `comments`, and a hub fed by its listener in
/// commit order (what the runtime does).
async fn setup(options: HubOptions) -> (common::Db, Subscriptions, tokio::task::JoinHandle<()>) {
    let db = common::db().await;
    db.exec(
        "CREATE TABLE posts (id int8 primary key, title text not null);
         CREATE TABLE comments (id int8 primary key, post_id int8 not null, author text not null)",
    )
    .await;
    let slot = db.slot("sub");
    db.setup(&slot, &["posts", "comments"]).await;
    let mut listener = db.listener(&slot).await.unwrap();
    let hub = Subscriptions::new(options);
    let feed = hub.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(message)) = listener.recv().await {
            match message {
                ListenerMessage::Change(raw) => feed.publish(&raw),
                ListenerMessage::Commit(c) => {
                    feed.publish_commit(c.end_lsn);
                    listener.ack(c.end_lsn);
                }
                _ => {}
            }
        }
    });
    (db, hub, task)
}

async fn next<T: EventSource + serde::de::DeserializeOwned>(
    sub: &mut Subscription<T>,
) -> Result<Delivery<T>, SubscriptionError> {
    tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("no change in time")
        .expect("stream ended")
}

async fn comment(sub: &mut Subscription<Comment>) -> (Action, i64, i64) {
    let d = next(sub).await.expect("no lag");
    let row = d.row().unwrap();
    (d.action, row.id, row.post_id)
}

#[tokio::test]
async fn all_id_and_field_scopes_receive_their_rows_in_commit_order() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let mut all = hub.subscribe::<Comment>(Scope::All);
    let mut one = hub.subscribe::<Comment>(Scope::id(2));
    let mut of_post = hub.subscribe::<Comment>(Comment::POST_ID.eq(1));
    let mut both =
        hub.subscribe::<Comment>(Comment::POST_ID.eq(2).and(Comment::AUTHOR.eq("bo".into())));
    let mut posts = hub.subscribe::<Post>(Scope::All);

    db.exec("INSERT INTO posts VALUES (1, 'a'), (2, 'b')").await;
    db.exec("INSERT INTO comments VALUES (1, 1, 'ann')").await;
    db.exec("BEGIN; INSERT INTO comments VALUES (2, 2, 'bo'); INSERT INTO comments VALUES (3, 1, 'bo'); COMMIT")
        .await;
    db.exec("UPDATE comments SET author = 'cy' WHERE id = 2")
        .await;
    db.exec("DELETE FROM comments WHERE id = 1").await;

    use Action::*;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(comment(&mut all).await);
    }
    assert_eq!(
        seen,
        [
            (Insert, 1, 1),
            (Insert, 2, 2),
            (Insert, 3, 1),
            (Update, 2, 2),
            (Delete, 1, 1)
        ]
    );
    assert_eq!(comment(&mut one).await, (Insert, 2, 2));
    assert_eq!(comment(&mut one).await, (Update, 2, 2));
    assert_eq!(comment(&mut of_post).await, (Insert, 1, 1));
    assert_eq!(comment(&mut of_post).await, (Insert, 3, 1));
    assert_eq!(comment(&mut of_post).await, (Delete, 1, 1));
    // Scoped on two fields: the update changed one of them, so the row left.
    assert_eq!(comment(&mut both).await, (Insert, 2, 2));
    assert_eq!(comment(&mut both).await, (Left, 2, 2));
    let post = next(&mut posts).await.unwrap();
    assert_eq!(post.row().unwrap().title, "a");
    // Nothing else was delivered: every transaction is published.
    let mut positions = Vec::new();
    let mut all2 = hub
        .subscription::<Comment>(Scope::All)
        .after(hub.oldest().unwrap())
        .start()
        .unwrap();
    while let Some(Ok(d)) = all2.try_next() {
        positions.push(d.position());
    }
    assert_eq!(positions.len(), 5);
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(one.try_next().is_none());
    assert!(of_post.try_next().is_none());
}

#[tokio::test]
async fn a_moved_row_leaves_the_old_scope_and_enters_the_new() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let mut post1 = hub.subscribe::<Comment>(Comment::POST_ID.eq(1));
    let mut post2 = hub.subscribe::<Comment>(Comment::POST_ID.eq(2));
    let mut all = hub.subscribe::<Comment>(Scope::All);
    db.exec("INSERT INTO comments VALUES (1, 1, 'ann')").await;
    db.exec("UPDATE comments SET post_id = 2 WHERE id = 1")
        .await;
    db.exec("UPDATE comments SET post_id = 1 WHERE id = 1")
        .await;

    assert_eq!(comment(&mut post1).await, (Action::Insert, 1, 1));
    let left = next(&mut post1).await.unwrap();
    assert_eq!(left.action, Action::Left);
    assert!(left.removes());
    // Left carries the row as it was in the scope.
    assert_eq!(left.row().unwrap().post_id, 1);
    assert_eq!(left.event.kind(), EventKind::Update);
    assert_eq!(comment(&mut post2).await, (Action::Entered, 1, 2));
    assert_eq!(comment(&mut post2).await, (Action::Left, 1, 2));
    assert_eq!(comment(&mut post1).await, (Action::Entered, 1, 1));
    for expected in [Action::Insert, Action::Update, Action::Update] {
        assert_eq!(comment(&mut all).await.0, expected);
    }
}

#[tokio::test]
async fn an_overflowing_subscriber_learns_what_it_missed_and_resumes() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let mut slow = hub
        .subscription::<Comment>(Scope::All)
        .buffer(2)
        .start()
        .unwrap();
    let mut fast = hub.subscribe::<Comment>(Scope::All);
    for i in 1..=5 {
        db.exec(&format!("INSERT INTO comments VALUES ({i}, 1, 'ann')"))
            .await;
    }
    // The slow subscriber does not hold back the others.
    for i in 1..=5 {
        assert_eq!(comment(&mut fast).await.1, i);
    }
    assert_eq!(comment(&mut slow).await.1, 1);
    let second = next(&mut slow).await.unwrap();
    assert_eq!(second.row().unwrap().id, 2);
    let Err(SubscriptionError::Lagged(lagged)) = next(&mut slow).await else {
        panic!("lagged")
    };
    assert_eq!(lagged.missed, 3);
    assert_eq!(lagged.resume_from, second.position());
    slow.resume(lagged.resume_from).unwrap();
    for i in 3..=5 {
        assert_eq!(comment(&mut slow).await.1, i);
    }
    // Live again after the replay, without repeats.
    db.exec("INSERT INTO comments VALUES (6, 1, 'ann')").await;
    assert_eq!(comment(&mut slow).await.1, 6);
    assert_eq!(comment(&mut fast).await.1, 6);
    assert!(slow.try_next().is_none());
}

#[tokio::test]
async fn resumes_from_a_position_in_the_window_and_refuses_an_older_one() {
    let options = HubOptions {
        retain_events: 3,
        ..HubOptions::default()
    };
    let (db, hub, _task) = setup(options).await;
    let mut all = hub.subscribe::<Comment>(Scope::All);
    for i in 1..=3 {
        db.exec(&format!("INSERT INTO comments VALUES ({i}, {i}, 'ann')"))
            .await;
    }
    let first = next(&mut all).await.unwrap();
    let second = next(&mut all).await.unwrap();
    next(&mut all).await.unwrap();
    // After the first: the second and third, then live changes.
    let mut resumed = hub
        .subscription::<Comment>(Scope::All)
        .after(first.position())
        .start()
        .unwrap();
    assert_eq!(comment(&mut resumed).await.1, 2);
    assert_eq!(comment(&mut resumed).await.1, 3);
    // A scoped resume gets only its rows; from an LSN: whole transactions.
    let mut scoped = hub
        .subscription::<Comment>(Comment::POST_ID.eq(3))
        .after(after_commit(first.event.meta().commit_lsn))
        .start()
        .unwrap();
    assert_eq!(comment(&mut scoped).await.1, 3);
    db.exec("INSERT INTO comments VALUES (4, 3, 'ann')").await;
    assert_eq!(comment(&mut resumed).await.1, 4);
    assert_eq!(comment(&mut scoped).await.1, 4);
    // The window now holds 2, 3 and 4: resuming after the first is fine,
    // before it is too old.
    next(&mut all).await.unwrap();
    hub.subscription::<Comment>(Scope::All)
        .after(first.position())
        .start()
        .unwrap();
    let Err(walflow::subscribe::ResumeError::TooOld(too_old)) = hub
        .subscription::<Comment>(Scope::All)
        .after(walflow::Position::default())
        .start()
    else {
        panic!("too old")
    };
    assert_eq!(too_old.requested, walflow::Position::default());
    assert!(
        too_old.to_string().contains("reload the current state"),
        "{too_old}"
    );
    let _ = second;
}

#[tokio::test]
async fn the_authorization_predicate_runs_once_per_change_and_subscription() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut ann = hub
        .subscription::<Comment>(Scope::All)
        .authorize(move |c: &Comment| {
            counted.fetch_add(1, Ordering::SeqCst);
            c.author == "ann"
        })
        .start()
        .unwrap();
    let mut all = hub.subscribe::<Comment>(Scope::All);
    db.exec("INSERT INTO comments VALUES (1, 1, 'bo'), (2, 1, 'ann'), (3, 1, 'bo')")
        .await;
    db.exec("INSERT INTO comments VALUES (4, 1, 'ann')").await;
    assert_eq!(comment(&mut ann).await.1, 2);
    assert_eq!(comment(&mut ann).await.1, 4);
    for _ in 0..4 {
        comment(&mut all).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(ann.try_next().is_none());
}

// EventStreamex's listener cases: subscribe and unsubscribe per scope, a
// missing parameter is a no-op, several scopes at once, resubscribing when
// the id changes.
#[tokio::test]
async fn subscribe_unsubscribe_missing_parameter_and_several_scopes() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let mut post = hub.subscribe::<Post>(Scope::id_opt(None));
    let mut comments =
        hub.subscribe::<Comment>(Option::<walflow::subscribe::Filter<Comment>>::None);
    let mut sentinel = hub.subscribe::<Comment>(Scope::All);
    let dropped = hub.subscribe::<Comment>(Comment::POST_ID.eq(1));
    assert_eq!(hub.len(), 4);
    drop(dropped);
    assert_eq!(hub.len(), 3);

    db.exec("INSERT INTO posts VALUES (1, 'a')").await;
    db.exec("INSERT INTO comments VALUES (1, 1, 'ann')").await;
    comment(&mut sentinel).await;
    assert!(post.try_next().is_none(), "no parameter, no subscription");
    assert!(comments.try_next().is_none());

    // The parameter arrives (or changes): the same subscriptions follow it.
    post.set_scope(Scope::id(1));
    comments.set_scope(Comment::POST_ID.eq(1));
    db.exec("BEGIN; UPDATE posts SET title = 'b' WHERE id = 1; INSERT INTO comments VALUES (2, 1, 'bo'); COMMIT")
        .await;
    assert_eq!(next(&mut post).await.unwrap().row().unwrap().title, "b");
    assert_eq!(comment(&mut comments).await, (Action::Insert, 2, 1));
    post.set_scope(Scope::id(2));
    comments.set_scope(Comment::POST_ID.eq(2));
    db.exec("BEGIN; UPDATE posts SET title = 'c' WHERE id = 1; INSERT INTO comments VALUES (3, 1, 'bo'); INSERT INTO posts VALUES (2, 'x'); INSERT INTO comments VALUES (4, 2, 'bo'); COMMIT")
        .await;
    assert_eq!(next(&mut post).await.unwrap().row().unwrap().title, "x");
    assert_eq!(comment(&mut comments).await, (Action::Insert, 4, 2));
    assert!(post.try_next().is_none());
    assert!(comments.try_next().is_none());
    drop((post, comments, sentinel));
    assert!(hub.is_empty());
}

#[tokio::test]
async fn wait_for_resolves_with_the_first_change_or_at_once_from_the_window() {
    let (db, hub, _task) = setup(HubOptions::default()).await;
    let waiting = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.wait_for::<Post>(Scope::id(7), None, TIMEOUT).await })
    };
    common::wait_until(TIMEOUT, || async { hub.len() == 1 }).await;
    db.exec("INSERT INTO posts VALUES (6, 'other'), (7, 'mine')")
        .await;
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.row().unwrap().title, "mine");

    // Already processed: resolves at once from the retained window.
    let before = got.event.meta().commit_lsn;
    let again = hub
        .wait_for::<Post>(
            Scope::id(7),
            Some(after_commit(walflow::Lsn(before.0 - 1))),
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    assert_eq!(again.position(), got.position());
    let timeout = hub
        .wait_for::<Post>(Scope::id(8), hub.position(), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(timeout, WaitError::Timeout(_)));
}
