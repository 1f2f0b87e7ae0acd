//! Unit tests of `hub`.

use std::cell::Cell;

use chrono::DateTime;

use super::*;
use crate::registry::Field;
use crate::subscribe::Feed;
use crate::value::{Record, Value};

thread_local! {
    /// Decodes on this test's thread (publishing decodes synchronously;
    /// the tests run in parallel).
    static DECODED: Cell<usize> = const { Cell::new(0) };
}

fn counted<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    DECODED.set(DECODED.get() + 1);
    <i64 as serde::Deserialize>::deserialize(d)
}

#[derive(Debug, serde::Deserialize)]
struct Item {
    #[serde(deserialize_with = "counted")]
    id: i64,
    group_id: i64,
}

impl Item {
    const GROUP_ID: Field<Item, i64> = Field::new("group_id");
}

impl EventSource for Item {
    const RUST_NAME: &'static str = "Item";
    const SCHEMA: &'static str = "public";
    const TABLE: &'static str = "items";
    const ID_COLUMN: &'static str = "id";
    const COLUMNS: &'static [&'static str] = &["id", "group_id"];
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("id", "id"), ("group_id", "group_id")];
    const REPLICA_IDENTITY_FULL: bool = true;
    type Id = i64;
    fn id(&self) -> &i64 {
        &self.id
    }
}

fn row(id: i64, group: i64) -> Record {
    Record::new(
        vec![Arc::from("id"), Arc::from("group_id")].into(),
        vec![Value::Int8(id), Value::Int8(group)],
    )
}

fn raw(kind: EventKind, new: Option<Record>, old: Option<Record>, lsn: u64) -> RawEvent {
    RawEvent {
        schema: "public".into(),
        table: "items".into(),
        kind,
        new,
        old,
        changes: None,
        columns: Arc::from(Vec::new()),
        lsn: Lsn(lsn - 8),
        commit_lsn: Lsn(lsn),
        commit_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        xid: 1,
        seq: 0,
    }
}

#[test]
fn decodes_once_per_change_and_routes_by_key() {
    let hub = Subscriptions::default();
    let all: Vec<_> = (0..5).map(|_| hub.subscribe::<Item>(Scope::All)).collect();
    let mut group1: Vec<_> = (0..5)
        .map(|_| hub.subscribe::<Item>(Item::GROUP_ID.eq(1)))
        .collect();
    let mut group2 = hub.subscribe::<Item>(Item::GROUP_ID.eq(2));
    let mut one = hub.subscribe::<Item>(Scope::id(1));
    DECODED.set(0);
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(1, 1)), None, 100)],
        Lsn(100),
    );
    assert_eq!(DECODED.get(), 1, "decoded once for 12 subscriptions");
    assert!(all.iter().all(|s| s.buffered() == 1));
    assert!(group1.iter().all(|s| s.buffered() == 1));
    assert_eq!(group2.buffered(), 0);
    assert_eq!(one.buffered(), 1);

    // A truncate reaches every scope of the table.
    hub.publish_transaction([&raw(EventKind::Truncate, None, None, 200)], Lsn(200));
    assert_eq!(group2.try_next().unwrap().unwrap().action, Action::Truncate);
    let first = group1[0].try_next().unwrap().unwrap();
    assert_eq!(first.action, Action::Insert);
    assert_eq!(first.row().unwrap().group_id, 1);
    assert_eq!(one.try_next().unwrap().unwrap().action, Action::Insert);
    assert_eq!(one.try_next().unwrap().unwrap().action, Action::Truncate);
    assert_eq!(hub.processed(), Some(Lsn(200)));
}

#[test]
fn unsubscribing_empties_the_index_and_the_stream_ends_with_the_hub() {
    let hub = Subscriptions::default();
    let mut sub = hub.subscribe::<Item>(Item::GROUP_ID.eq(1));
    sub.set_scope(Item::GROUP_ID.eq(2));
    sub.set_scope(Scope::Nothing);
    sub.set_scope(Scope::All);
    let other = hub.subscribe::<Item>(Scope::id(3));
    drop(other);
    {
        let state = lock(&hub.inner.state);
        let table = state.tables.values().next().unwrap();
        assert_eq!(table.all.len(), 1);
        assert!(table.by_key.is_empty() && table.column_sets.is_empty());
    }
    drop(hub);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(matches!(
        Pin::new(&mut sub).poll_next(&mut cx),
        Poll::Ready(None)
    ));
}

#[test]
fn a_gap_tells_every_subscription_to_reload() {
    let hub = Subscriptions::default();
    let mut live = hub.subscribe::<Item>(Scope::All);
    let mut idle = hub.subscribe::<Item>(Item::GROUP_ID.eq(9));
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(1, 1)), None, 100)],
        Lsn(100),
    );
    let before = hub.position().unwrap();
    hub.publish_gap(Lsn(300));
    assert_eq!(hub.processed(), Some(Lsn(300)));
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(2, 1)), None, 400)],
        Lsn(400),
    );

    // What was buffered before the gap, then the gap.
    let first = live.try_next().unwrap().unwrap();
    assert_eq!(first.row().unwrap().id, 1);
    let Err(SubscriptionError::Lagged(lagged)) = live.try_next().unwrap() else {
        panic!("lagged")
    };
    assert!(lagged.lost);
    assert_eq!(lagged.resume_from, first.position());
    assert_eq!(
        lagged.missed, 1,
        "the change after the gap came before the error was taken"
    );
    assert!(
        lagged
            .to_string()
            .starts_with("changes after 0/64#0 were lost before reaching this node; reload"),
        "{lagged}"
    );
    let Err(ResumeError::TooOld(too_old)) = live.resume(lagged.resume_from) else {
        panic!("too old")
    };
    assert_eq!(too_old.oldest, OldestPosition(Some(after_commit(Lsn(300)))));
    let Err(SubscriptionError::Lagged(lagged)) = idle.try_next().unwrap() else {
        panic!("lagged")
    };
    assert!(lagged.lost && lagged.missed == 0);

    // Nothing from before the gap can be resumed; after it can.
    assert!(
        hub.subscription::<Item>(Scope::All)
            .after(before)
            .start()
            .is_err()
    );
    let mut after = hub
        .subscription::<Item>(Scope::All)
        .after(after_commit(Lsn(300)))
        .start()
        .unwrap();
    assert_eq!(after.try_next().unwrap().unwrap().row().unwrap().id, 2);
    assert!(after.try_next().is_none());
}

#[test]
fn a_relay_hands_on_whole_transactions_in_commit_order() {
    let local = Subscriptions::default();
    let mut sub = local.subscribe::<Item>(Scope::All);
    let (out, mut queued) = tokio::sync::mpsc::unbounded_channel();
    let relay = crate::subscribe::Relay::new(local.clone(), out);
    let first = Arc::new(raw(EventKind::Insert, Some(row(1, 1)), None, 100));
    let mut second = raw(EventKind::Insert, Some(row(2, 1)), None, 100);
    second.seq = 1;
    relay.change(first.clone());
    assert_eq!(sub.buffered(), 0, "nothing before the commit");
    // The listener restarted in the middle: the transaction comes again.
    relay.change(first);
    relay.change(Arc::new(second));
    relay.commit(Lsn(108));
    relay.change(Arc::new(raw(EventKind::Insert, Some(row(3, 1)), None, 200)));
    relay.commit(Lsn(208));

    let tx = queued.try_recv().unwrap();
    assert_eq!(tx.end_lsn, Lsn(108));
    let ids: Vec<i64> = tx
        .changes
        .iter()
        .map(|c| match c.new.as_ref().unwrap().get("id") {
            Some(Value::Int8(id)) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(queued.try_recv().unwrap().end_lsn, Lsn(208));
    let delivered: Vec<i64> = std::iter::from_fn(|| sub.try_next())
        .map(|d| d.unwrap().row().unwrap().id)
        .collect();
    assert_eq!(delivered, [1, 2, 3]);
    assert_eq!(local.processed(), Some(Lsn(208)));
}

#[test]
fn resuming_needs_a_retained_position() {
    let hub = Subscriptions::default();
    let err = hub
        .subscription::<Item>(Scope::All)
        .after(after_commit(Lsn(5)))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("the next change"), "{err}");
    let hub = Subscriptions::new(HubOptions {
        start: Some(Lsn(50)),
        retain_events: 1,
        ..HubOptions::default()
    });
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(1, 1)), None, 100)],
        Lsn(100),
    );
    let mut sub = hub
        .subscription::<Item>(Scope::All)
        .after(after_commit(Lsn(50)))
        .start()
        .unwrap();
    assert_eq!(sub.try_next().unwrap().unwrap().row().unwrap().id, 1);
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(2, 1)), None, 200)],
        Lsn(200),
    );
    // The first change left the window.
    assert!(
        hub.subscription::<Item>(Scope::All)
            .after(after_commit(Lsn(50)))
            .start()
            .is_err()
    );
    assert_eq!(parse_position("0/C8"), Some(after_commit(Lsn(200))));
    assert_eq!(
        parse_position(
            &Position {
                commit_lsn: Lsn(200),
                seq: 3
            }
            .to_string()
        ),
        Some(Position {
            commit_lsn: Lsn(200),
            seq: 3
        })
    );
    assert_eq!(parse_position("nonsense"), None);
}

fn item_with(id: i64, text_bytes: usize, lsn: u64) -> RawEvent {
    let mut raw = raw(EventKind::Insert, Some(row(id, 1)), None, lsn);
    // A wide column the subscriptions' type does not read.
    raw.new = Some(Record::new(
        vec![Arc::from("id"), Arc::from("group_id"), Arc::from("pad")].into(),
        vec![
            Value::Int8(id),
            Value::Int8(1),
            Value::Text("x".repeat(text_bytes)),
        ],
    ));
    raw
}

#[test]
fn the_window_keeps_at_most_its_bytes() {
    let hub = Subscriptions::new(HubOptions {
        start: Some(Lsn(50)),
        retain_bytes: 3 << 20,
        ..HubOptions::default()
    });
    for i in 1..=10u64 {
        hub.publish_transaction([&item_with(i as i64, 1 << 20, 100 * i)], Lsn(100 * i));
        assert!(hub.retained_bytes() <= 3 << 20, "{}", hub.retained_bytes());
    }
    assert_eq!(
        hub.retained_changes(),
        2,
        "two changes of a bit over 1 MiB fit"
    );
    assert!(hub.retained_bytes() > 2 << 20);
    // Resuming from an evicted position: reload.
    let err = hub
        .subscription::<Item>(Scope::All)
        .after(after_commit(Lsn(500)))
        .start()
        .unwrap_err();
    assert!(matches!(err, ResumeError::TooOld(_)), "{err}");
    // From a retained one: what followed it.
    let mut sub = hub
        .subscription::<Item>(Scope::All)
        .after(after_commit(Lsn(900)))
        .start()
        .unwrap();
    assert_eq!(sub.try_next().unwrap().unwrap().row().unwrap().id, 10);
    // A change larger than the whole budget is delivered, not retained.
    let mut live = hub.subscribe::<Item>(Scope::All);
    hub.publish_transaction([&item_with(11, 4 << 20, 1100)], Lsn(1100));
    assert_eq!(live.try_next().unwrap().unwrap().row().unwrap().id, 11);
    assert_eq!((hub.retained_changes(), hub.retained_bytes()), (0, 0));
    assert_eq!(hub.oldest(), Some(Position::from(&item_with(11, 0, 1100))));
}

#[test]
fn a_slow_subscription_is_cut_off_at_its_bytes() {
    let hub = Subscriptions::new(HubOptions {
        start: Some(Lsn(50)),
        buffer_bytes: 2 << 20,
        ..HubOptions::default()
    });
    let mut slow = hub.subscribe::<Item>(Scope::All);
    let mut big = hub
        .subscription::<Item>(Scope::All)
        .buffer_bytes(64 << 20)
        .start()
        .unwrap();
    for i in 1..=5u64 {
        hub.publish_transaction([&item_with(i as i64, 900 << 10, 100 * i)], Lsn(100 * i));
    }
    assert_eq!(slow.buffered(), 2, "two changes of 900 KiB fit in 2 MiB");
    assert!(slow.buffered_bytes() <= 2 << 20);
    assert_eq!(big.buffered(), 5);
    for id in 1..=2 {
        assert_eq!(slow.try_next().unwrap().unwrap().row().unwrap().id, id);
    }
    let Some(Err(SubscriptionError::Lagged(lagged))) = slow.try_next() else {
        panic!("lagged")
    };
    assert_eq!(lagged.missed, 3);
    assert_eq!(slow.buffered_bytes(), 0);
    // Resuming replays in chunks of the buffer: never more than its bytes.
    slow.resume(lagged.resume_from).unwrap();
    assert_eq!(slow.buffered(), 2);
    for id in 3..=4 {
        assert_eq!(slow.try_next().unwrap().unwrap().row().unwrap().id, id);
    }
    let Some(Err(SubscriptionError::Lagged(lagged))) = slow.try_next() else {
        panic!("lagged")
    };
    slow.resume(lagged.resume_from).unwrap();
    assert_eq!(slow.try_next().unwrap().unwrap().row().unwrap().id, 5);
    assert!(slow.try_next().is_none());
    // A single change larger than the buffer still goes through.
    hub.publish_transaction([&item_with(6, 3 << 20, 600)], Lsn(600));
    assert_eq!(slow.try_next().unwrap().unwrap().row().unwrap().id, 6);
    let _ = big.try_next();
}

#[tokio::test]
async fn an_idle_hub_lets_go_of_old_changes() {
    let hub = Subscriptions::new(HubOptions {
        start: Some(Lsn(50)),
        retain_for: Duration::from_millis(300),
        ..HubOptions::default()
    });
    hub.publish_transaction([&item_with(1, 1 << 20, 100)], Lsn(100));
    assert_eq!(hub.retained_changes(), 1);
    // Nothing else is published or subscribed: the timer evicts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.retained_changes() > 0 {
        assert!(Instant::now() < deadline, "still retained: {hub:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.retained_bytes(), 0);
    assert!(
        hub.subscription::<Item>(Scope::All)
            .after(after_commit(Lsn(50)))
            .start()
            .is_err()
    );
    // It wakes again for the next change.
    hub.publish_transaction([&item_with(2, 10, 200)], Lsn(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.retained_changes() > 0 {
        assert!(Instant::now() < deadline, "still retained: {hub:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_position_after_everything_published_is_refused() {
    let hub = Subscriptions::new(HubOptions {
        start: Some(Lsn(50)),
        ..HubOptions::default()
    });
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(1, 1)), None, 100)],
        Lsn(100),
    );
    let ahead = Position {
        commit_lsn: Lsn(u64::MAX),
        seq: u32::MAX,
    };
    let err = hub
        .subscription::<Item>(Scope::All)
        .after(ahead)
        .start()
        .unwrap_err();
    let ResumeError::FromTheFuture(future) = err else {
        panic!("{err}")
    };
    assert_eq!(future.reached, after_commit(Lsn(100)));
    assert!(
        err.to_string()
            .contains("this hub has published changes only up to 0/64#4294967295"),
        "{err}"
    );
    // Up to where the hub is: fine.
    assert!(
        hub.subscription::<Item>(Scope::All)
            .after(after_commit(Lsn(100)))
            .start()
            .is_ok()
    );
    let mut sub = hub.subscribe::<Item>(Scope::All);
    assert!(matches!(
        sub.resume(after_commit(Lsn(101))),
        Err(ResumeError::FromTheFuture(_))
    ));
}

#[tokio::test]
async fn waiting_after_a_position_not_reached_yet_skips_up_to_it() {
    let hub = Subscriptions::new(HubOptions {
        start: Some(Lsn(50)),
        ..HubOptions::default()
    });
    let waiter = tokio::spawn({
        let hub = hub.clone();
        async move {
            hub.wait_for::<Item>(
                Scope::All,
                Some(after_commit(Lsn(100))),
                Duration::from_secs(10),
            )
            .await
        }
    });
    tokio::task::yield_now().await;
    while hub.is_empty() {
        tokio::task::yield_now().await;
    }
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(1, 1)), None, 100)],
        Lsn(100),
    );
    hub.publish_transaction(
        [&raw(EventKind::Insert, Some(row(2, 1)), None, 200)],
        Lsn(200),
    );
    let delivery = waiter.await.unwrap().unwrap();
    assert_eq!(delivery.row().unwrap().id, 2);
}

#[test]
fn unreadable_positions_say_what_they_were() {
    for text in [
        "garbage",
        "-1",
        "FFFFFFFFF/0",
        "0/1#99999999999999999999",
        "0/1#-1",
        "",
        "#3",
    ] {
        let err = read_position(text).unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }
    let long = "F".repeat(50_000);
    let err = read_position(&long).unwrap_err();
    assert_eq!(err.len, 50_000);
    let shown = err.to_string();
    assert!(shown.len() < 300, "{shown}");
    assert!(shown.contains("… (50000 bytes)"), "{shown}");
    assert_eq!(
        read_position(" FFFFFFFF/FFFFFFFF#4294967295 "),
        Ok(Position {
            commit_lsn: Lsn(u64::MAX),
            seq: u32::MAX
        })
    );
}
