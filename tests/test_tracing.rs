//! Tracing spans: one per received transaction (`lsn`, `xid`, `rows`), one
//! per operator unit (`operator`, `table`, `ids`, `attempt`, the `error` of
//! a failed attempt), the unit a child of its transaction, and the
//! handler's own events inside the unit.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use walflow::prelude::*;

#[event_source(table = "traced")]
#[derive(Debug, Clone, serde::Deserialize)]
struct Traced {
    id: i64,
}

on_event! {
    operator TracedHandler {
        events: [insert],
        entities: [Traced],
        handler: traced,
    }
}

static CALLS: AtomicU32 = AtomicU32::new(0);

async fn traced(_event: Event<Traced>, _ctx: Ctx) -> Result<(), std::io::Error> {
    tracing::info!("inside the handler");
    if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(std::io::Error::other("the first attempt fails"));
    }
    Ok(())
}

/// A span as seen by the layer: its name, fields, and its parent's index.
#[derive(Debug, Clone, Default)]
struct SpanRec {
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<usize>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanRec>,
    /// Live span ids → index in `spans` (ids are reused once closed).
    index: HashMap<Id, usize>,
    /// Events: their message and the index of the span they were in.
    events: Vec<(String, Option<usize>)>,
}

static SEEN: Mutex<Option<Seen>> = Mutex::new(None);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Capture;

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut seen = SEEN.lock().unwrap();
        let seen = seen.get_or_insert_default();
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .and_then(|p| seen.index.get(&p.id()).copied());
        let mut rec = SpanRec {
            name: attrs.metadata().name(),
            parent,
            ..SpanRec::default()
        };
        attrs.record(&mut Fields(&mut rec.fields));
        seen.spans.push(rec);
        let i = seen.spans.len() - 1;
        seen.index.insert(id.clone(), i);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut seen = SEEN.lock().unwrap();
        let seen = seen.get_or_insert_default();
        if let Some(&i) = seen.index.get(id) {
            values.record(&mut Fields(&mut seen.spans[i].fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let mut seen = SEEN.lock().unwrap();
        let seen = seen.get_or_insert_default();
        let span = ctx
            .event_span(event)
            .and_then(|s| seen.index.get(&s.id()).copied());
        seen.events
            .push((fields.remove("message").unwrap_or_default(), span));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_traced_from_its_transaction_to_the_operator_unit() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
        .expect("no other subscriber in this test binary");
    let db = common::db().await;
    db.exec("CREATE TABLE traced (id bigint PRIMARY KEY)").await;
    let flow = Walflow::builder()
        .database_url(&db.url)
        .slot_name(db.slot("traced"))
        .operators(["TracedHandler"])
        .min_restart_time(Duration::from_millis(10))
        .max_restart_time(Duration::from_millis(20))
        .max_retries(3)
        .start()
        .await
        .unwrap();
    db.exec("INSERT INTO traced VALUES (42)").await;
    let lsn = flow.current_lsn().await.unwrap();
    flow.wait_processed(lsn, Duration::from_secs(60))
        .await
        .unwrap();
    flow.shutdown().await.unwrap();

    let seen = SEEN.lock().unwrap().take().unwrap();
    let unit = seen
        .spans
        .iter()
        .position(|s| {
            s.name == "walflow.unit"
                && s.fields.get("operator").map(String::as_str) == Some("TracedHandler")
        })
        .expect("a unit span");
    let u = &seen.spans[unit];
    assert_eq!(u.fields["table"], "public.traced", "{u:?}");
    assert_eq!(u.fields["ids"], "42", "{u:?}");
    assert_eq!(u.fields["attempt"], "2", "{u:?}");
    assert!(
        u.fields["error"].contains("the first attempt fails"),
        "{u:?}"
    );
    assert!(!u.fields.contains_key("dead_lettered"), "{u:?}");

    let tx = &seen.spans[u.parent.expect("the unit has a parent")];
    assert_eq!(tx.name, "walflow.transaction", "{tx:?}");
    assert_eq!(tx.fields["rows"], "1", "{tx:?}");
    assert!(tx.fields["lsn"].contains('/'), "{tx:?}");
    assert!(tx.fields["xid"].parse::<u32>().unwrap() > 0, "{tx:?}");

    let inside: Vec<_> = seen
        .events
        .iter()
        .filter(|(m, _)| m == "inside the handler")
        .collect();
    assert_eq!(inside.len(), 2, "{inside:?}");
    assert!(inside.iter().all(|(_, s)| *s == Some(unit)), "{inside:?}");
}
