//! A handler on `truncate`, a handler with a target (its id types checked
//! against the target's), and a handler returning a boxed error.

use walflow::prelude::*;

#[event_source(table = "logs")]
#[derive(Debug, serde::Deserialize)]
pub struct Log {
    pub id: i64,
    pub line: String,
}

#[event_source(table = "log_stats")]
#[derive(Debug, serde::Deserialize)]
pub struct LogStat {
    pub id: i64,
}

on_event! {
    operator LogTruncated {
        events: [truncate],
        entities: [Log],
        handler: on_truncate,
    }

    pub(crate) operator LogStats for LogStat {
        events: [insert, truncate],
        entities: [Log],
        handler: handlers::on_log,
    }
}

async fn on_truncate(event: Event<Log>, _: Ctx) -> Result<(), walflow::BoxError> {
    match event {
        Event::Truncate { meta } => {
            let _ = meta.commit_time;
            Ok(())
        }
        _ => Err("expected a truncate".into()),
    }
}

mod handlers {
    use walflow::prelude::*;

    pub async fn on_log(_: Event<super::Log>, _: Ctx) -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {
    let registry = walflow::Registry::from_inventory().unwrap();
    assert_eq!(registry.operator(LogTruncated::NAME).unwrap().events, [EventKind::Truncate]);
    let stats = registry.operator(LogStats::NAME).unwrap();
    assert_eq!(stats.events, [EventKind::Insert, EventKind::Truncate]);
    assert_eq!(stats.target.unwrap().rust_name, "LogStat");
}
