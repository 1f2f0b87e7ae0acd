// One file of this length: the subscription index, the retained window and the typed sinks share one lock, and are read together.
//! The subscription hub: routes published changes to subscriptions.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::scope::{Scope, ScopeKey, record_key};
use super::size;
use crate::event::{Event, EventDecodeError, Position};
use crate::lsn::Lsn;
use crate::raw::{EventKind, RawEvent};
use crate::registry::EventSource;

/// How much the hub keeps and buffers.
///
/// Bytes are estimated from what a change holds (its rows' values, strings,
/// JSON and `bytea` whole, its changed fields, its names); see
/// [`Subscriptions::retained_bytes`] for how they are counted.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Changes kept for resuming ([`SubscriptionBuilder::after`],
    /// [`Subscription::resume`]): at most this many (default 10,000)...
    pub retain_events: usize,
    /// ...none older than this (default 5 minutes), also while nothing is
    /// published (a hub made inside a Tokio runtime lets go of them on a
    /// timer; one made outside, when it is next published to or subscribed
    /// to)...
    pub retain_for: Duration,
    /// ...and at most this many bytes of them (default 64 MiB). A change
    /// larger than this on its own is delivered but not retained.
    pub retain_bytes: usize,
    /// Default per-subscription buffer, in changes (default 1,024).
    pub buffer: usize,
    /// Default per-subscription buffer, in bytes (default 16 MiB): a
    /// subscription whose undelivered changes would hold more is cut off
    /// with [`Lagged`], as on [`buffer`](Self::buffer) changes. A change
    /// always fits an empty buffer. Each buffered change counts its whole
    /// estimated size, even when other subscriptions of the same type share
    /// its decoded event: the count bounds what one slow subscription alone
    /// keeps alive.
    pub buffer_bytes: usize,
    /// Everything committed after this LSN is published to the hub (the
    /// slot's confirmed position at start-up). When unset, the retained
    /// window starts at the first published change.
    pub start: Option<Lsn>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            retain_events: 10_000,
            retain_for: Duration::from_secs(300),
            retain_bytes: 64 << 20,
            buffer: 1024,
            buffer_bytes: 16 << 20,
            start: None,
        }
    }
}

/// What a change means to one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A row in scope was inserted.
    Insert,
    /// A row in scope was updated and is still in scope.
    Update,
    /// A row in scope was deleted.
    Delete,
    /// The table was truncated (sent to every scope of the table).
    Truncate,
    /// An update moved a row into the scope (insert-like: add the row).
    Entered,
    /// An update moved a row out of the scope (delete-like: remove the row).
    Left,
}

/// A change delivered to a subscription: the typed event and what it means
/// for the subscription's scope.
///
/// An update that changes a scoped column is delivered as [`Action::Left`]
/// to the subscriptions of the old value and as [`Action::Entered`] to those
/// of the new value (both carry the same update event, with the old and new
/// rows); subscriptions matching both, and unscoped ones, get
/// [`Action::Update`].
#[derive(Debug, Serialize)]
pub struct Delivery<T> {
    /// What the change means for this subscription.
    pub action: Action,
    /// The change.
    pub event: Arc<Event<T>>,
}

impl<T> Clone for Delivery<T> {
    fn clone(&self) -> Self {
        Delivery {
            action: self.action,
            event: self.event.clone(),
        }
    }
}

impl<T> Delivery<T> {
    /// The row as the subscription should see it: the new row, except for
    /// deletes and [`Action::Left`] (the old row when known).
    pub fn row(&self) -> Option<&T> {
        match (&*self.event, self.action) {
            (Event::Update { old: Some(old), .. }, Action::Left) => Some(old),
            (event, _) => event.record(),
        }
    }

    /// Where the change is in the WAL; resume after it with
    /// [`SubscriptionBuilder::after`].
    pub fn position(&self) -> Position {
        self.event.meta().position()
    }

    /// Whether the subscription should drop the row (delete or left).
    pub fn removes(&self) -> bool {
        matches!(self.action, Action::Delete | Action::Left)
    }
}

/// A subscription did not receive every change in its scope. Everything up
/// to and including `resume_from` was delivered; call
/// [`Subscription::resume`] with it to receive the rest from the retained
/// window, or reload the state.
///
/// Two causes:
///
/// - its buffer overflowed (`lost` is `false`): `missed` changes were
///   dropped, and the hub still retains them (unless the window moved on);
/// - changes were lost before they reached this hub (`lost` is `true`): a
///   node away from its `LISTEN` channel longer than the pubsub log keeps
///   them, see [`Subscriptions::publish_gap`]. `missed` does not count
///   those, and resuming fails with [`TooOld`]: reload the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged {
    /// How many changes in scope the subscription dropped (buffer
    /// overflow, or arriving before it took this error).
    pub missed: u64,
    /// The position of the last change delivered before the gap.
    pub resume_from: Position,
    /// Changes were lost before reaching this hub; resuming fails with
    /// [`TooOld`].
    pub lost: bool,
}

impl fmt::Display for Lagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lost {
            write!(
                f,
                "changes after {} were lost before reaching this node; \
                 reload the current state and subscribe again",
                self.resume_from
            )
        } else {
            write!(
                f,
                "the subscription fell behind and missed {} changes after {}",
                self.missed, self.resume_from
            )
        }
    }
}

impl std::error::Error for Lagged {}

/// A change in scope whose row does not deserialize into the
/// subscription's type (a value that did not parse for its column's type,
/// see [`Value::Invalid`](crate::Value::Invalid), or a field that does not
/// fit). It is reported once, in its place; the stream goes on with the
/// next change, so a subscriber can skip it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the change at {position} cannot be read: {error}")]
pub struct Undecodable {
    /// Where the change is in the WAL.
    pub position: Position,
    /// What did not deserialize: table, column and why.
    pub error: EventDecodeError,
}

/// What a [`Subscription`] yields besides its changes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// It missed changes; resume or reload (see [`Lagged`]).
    #[error(transparent)]
    Lagged(#[from] Lagged),
    /// One change could not be read; the next ones follow.
    #[error(transparent)]
    Undecodable(#[from] Undecodable),
}

/// Resuming from a position the hub no longer retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot resume after {requested}: changes are retained only after {oldest}; \
     reload the current state and subscribe again"
)]
pub struct TooOld {
    /// The position asked for.
    pub requested: Position,
    /// The oldest position the hub can resume after (`None`: nothing
    /// published yet and no start position configured).
    pub oldest: OldestPosition,
}

/// Resuming from a position this hub has not reached: after every change
/// it has published ([`Subscriptions::position`]). The hub did not give it
/// out: it was mistyped or forged, or comes from a node or an earlier run
/// of the flow that had gone further. What lies between is unknown, so the
/// subscriber reloads rather than silently missing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot resume after {requested}: this hub has published changes only up to {reached}, \
     so the position did not come from it; reload the current state and subscribe again"
)]
pub struct FromTheFuture {
    /// The position asked for.
    pub requested: Position,
    /// The last position the hub has published.
    pub reached: Position,
}

/// Why a subscription cannot start after a position
/// ([`SubscriptionBuilder::start`]) or [`Subscription::resume`] from it:
/// either way, reload the current state and subscribe again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The position is older than the retained window.
    #[error(transparent)]
    TooOld(#[from] TooOld),
    /// The position is after everything the hub has published.
    #[error(transparent)]
    FromTheFuture(#[from] FromTheFuture),
}

/// A resume position (an SSE `Last-Event-ID`, an `after` parameter) that
/// does not read as a [`Position`]: see [`read_position`]. A subscriber
/// that sent it meant to resume, so it reloads rather than silently
/// missing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the resume position {} cannot be read: expected an LSN and the change's index, \
     such as `16/B374D848#3`, or an LSN alone; reload the current state and subscribe again",
    self.shown()
)]
pub struct UnreadablePosition {
    /// The text's first characters (at most 40).
    pub start: String,
    /// The text's length, in bytes.
    pub len: usize,
}

impl UnreadablePosition {
    fn new(text: &str) -> Self {
        let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
        UnreadablePosition {
            start: text[..end].to_owned(),
            len: text.len(),
        }
    }

    fn shown(&self) -> String {
        if self.start.len() == self.len {
            format!("{:?}", self.start)
        } else {
            format!("{:?}… ({} bytes)", self.start, self.len)
        }
    }
}

/// The oldest position a hub can resume after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestPosition(pub Option<Position>);

impl fmt::Display for OldestPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("the next change"),
        }
    }
}

/// Why [`Subscriptions::wait_for`] did not resolve with a change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No change in scope within the timeout.
    #[error("no change in scope within {0:?}")]
    Timeout(Duration),
    /// The position to wait after is no longer retained.
    #[error(transparent)]
    TooOld(#[from] TooOld),
    /// The hub's subscription fell behind (buffer overflow).
    #[error(transparent)]
    Lagged(#[from] Lagged),
    /// The first change in scope could not be read.
    #[error(transparent)]
    Undecodable(#[from] Undecodable),
}

impl From<SubscriptionError> for WaitError {
    fn from(e: SubscriptionError) -> Self {
        match e {
            SubscriptionError::Lagged(l) => WaitError::Lagged(l),
            SubscriptionError::Undecodable(u) => WaitError::Undecodable(u),
        }
    }
}

/// The position just after every change of transaction `lsn` (its commit
/// `end_lsn`): resuming after it delivers the transactions committed later.
pub fn after_commit(lsn: Lsn) -> Position {
    Position {
        commit_lsn: lsn,
        seq: u32::MAX,
    }
}

/// Parses a [`Position`] as displayed (`16/B374D848#3`) or a bare LSN
/// (`16/B374D848`, meaning after that whole transaction); `None` when it
/// does not read ([`read_position`] says why).
pub fn parse_position(s: &str) -> Option<Position> {
    read_position(s).ok()
}

/// Reads a [`Position`] as displayed (`16/B374D848#3`: two hexadecimal
/// halves of at most 8 digits, `#`, a change index up to 4,294,967,295) or
/// a bare LSN (`16/B374D848`, meaning after that whole transaction),
/// surrounding spaces ignored. Anything else is [`UnreadablePosition`],
/// which quotes at most the text's first 40 characters.
pub fn read_position(s: &str) -> Result<Position, UnreadablePosition> {
    let err = || UnreadablePosition::new(s);
    match s.split_once('#') {
        Some((lsn, seq)) => Ok(Position {
            commit_lsn: lsn.trim().parse().map_err(|_| err())?,
            seq: seq.trim().parse().map_err(|_| err())?,
        }),
        None => Ok(after_commit(s.trim().parse().map_err(|_| err())?)),
    }
}

type SubId = u64;
type Decoded = Option<Arc<dyn Any + Send + Sync>>;

/// The hub: receives changes in commit order ([`publish`](Self::publish),
/// [`publish_commit`](Self::publish_commit)) and delivers them to the
/// subscriptions whose scope they touch.
///
/// Routing is indexed: by table, then by the scope's key (the values of the
/// scoped columns), so a change costs one lookup per distinct set of scoped
/// columns of its table, not one test per subscription. Each change is
/// decoded into `T` once per change and type, shared by every subscription
/// (as an `Arc<Event<T>>`). Publishing never waits for a subscriber: each has
/// a bounded buffer, and one that overflows is told with [`Lagged`].
///
/// The hub retains the latest changes (by count, age and bytes,
/// [`HubOptions`]) so a subscription can start after a position (an SSE
/// `Last-Event-ID`, the LSN a page was rendered at) and first receive what
/// it missed.
///
/// Cheap to clone: clones share the hub.
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    options: HubOptions,
    processed: watch::Sender<Option<Lsn>>,
    /// Wakes the expiry timer when the window gets its first change (and
    /// when the hub is dropped).
    expiry: Arc<tokio::sync::Notify>,
}

/// A change the hub retains.
struct Retained {
    /// When it was published.
    at: Instant,
    raw: Arc<RawEvent>,
    /// Its estimated size ([`size::change_bytes`]).
    bytes: usize,
}

#[derive(Default)]
struct State {
    tables: HashMap<(Arc<str>, Arc<str>), TableSubs>,
    subs: HashMap<SubId, SubEntry>,
    next_id: SubId,
    window: VecDeque<Retained>,
    /// The estimated bytes of `window`.
    bytes: usize,
    /// Changes at or before this position are not retained.
    floor: Option<Position>,
    last: Option<Position>,
    /// Set by [`Subscriptions::close`]: every stream has ended.
    closed: bool,
}

#[derive(Default)]
struct TableSubs {
    all: HashSet<SubId>,
    by_key: HashMap<String, HashSet<SubId>>,
    /// Column sets scoped on, with how many subscriptions use each.
    column_sets: HashMap<Vec<&'static str>, usize>,
}

struct SubEntry {
    table: (Arc<str>, Arc<str>),
    scope: IndexedScope,
    sink: Arc<dyn Sink>,
}

#[derive(Clone)]
enum IndexedScope {
    All,
    Key(ScopeKey),
    Nothing,
}

impl<T> From<&Scope<T>> for IndexedScope {
    fn from(scope: &Scope<T>) -> Self {
        match scope {
            Scope::All => IndexedScope::All,
            Scope::Where(filter) => IndexedScope::Key(filter.key()),
            Scope::Nothing => IndexedScope::Nothing,
        }
    }
}

impl TableSubs {
    fn add(&mut self, id: SubId, scope: &IndexedScope) {
        match scope {
            IndexedScope::All => {
                self.all.insert(id);
            }
            IndexedScope::Key(key) => {
                self.by_key.entry(key.key.clone()).or_default().insert(id);
                *self.column_sets.entry(key.columns.clone()).or_default() += 1;
            }
            IndexedScope::Nothing => {}
        }
    }

    fn remove(&mut self, id: SubId, scope: &IndexedScope) {
        match scope {
            IndexedScope::All => {
                self.all.remove(&id);
            }
            IndexedScope::Key(key) => {
                if let Some(set) = self.by_key.get_mut(&key.key) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_key.remove(&key.key);
                    }
                }
                if let Some(n) = self.column_sets.get_mut(&key.columns) {
                    *n -= 1;
                    if *n == 0 {
                        self.column_sets.remove(&key.columns);
                    }
                }
            }
            IndexedScope::Nothing => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_key.is_empty()
    }

    /// The subscriptions a change touches, with what it means to each, in
    /// subscription order.
    fn route(&self, raw: &RawEvent) -> Vec<(SubId, Action)> {
        let mut out: Vec<(SubId, Action)> = Vec::new();
        match raw.kind {
            EventKind::Truncate => {
                out.extend(self.all.iter().map(|id| (*id, Action::Truncate)));
                for set in self.by_key.values() {
                    out.extend(set.iter().map(|id| (*id, Action::Truncate)));
                }
            }
            kind => {
                let action = match kind {
                    EventKind::Insert => Action::Insert,
                    EventKind::Delete => Action::Delete,
                    _ => Action::Update,
                };
                out.extend(self.all.iter().map(|id| (*id, action)));
                for columns in self.column_sets.keys() {
                    let new_key = raw.new.as_ref().and_then(|r| record_key(r, columns));
                    // The old row of an update without REPLICA IDENTITY FULL
                    // lacks the scoped columns: they did not change then
                    // unless they are key columns, which it carries.
                    let old_key = match kind {
                        EventKind::Update => raw
                            .old
                            .as_ref()
                            .and_then(|r| record_key(r, columns))
                            .or_else(|| new_key.clone()),
                        _ => raw.old.as_ref().and_then(|r| record_key(r, columns)),
                    };
                    let subs = |key: &Option<String>| {
                        key.as_ref()
                            .and_then(|k| self.by_key.get(k))
                            .into_iter()
                            .flatten()
                            .copied()
                    };
                    match kind {
                        EventKind::Insert => out.extend(subs(&new_key).map(|id| (id, action))),
                        EventKind::Delete => out.extend(subs(&old_key).map(|id| (id, action))),
                        _ if old_key == new_key => {
                            out.extend(subs(&new_key).map(|id| (id, Action::Update)))
                        }
                        _ => {
                            out.extend(subs(&old_key).map(|id| (id, Action::Left)));
                            out.extend(subs(&new_key).map(|id| (id, Action::Entered)));
                        }
                    }
                }
            }
        }
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }
}

/// A change as the subscriptions of `T` receive it.
fn decode_change<T: EventSource + DeserializeOwned>(
    raw: &RawEvent,
) -> Result<Arc<Event<T>>, Undecodable> {
    Event::<T>::from_raw(raw).map(Arc::new).map_err(|e| {
        tracing::warn!(error = %e, "subscription: a change cannot be read; its subscribers are told");
        Undecodable {
            position: Position::from(raw),
            error: e,
        }
    })
}

/// The type-erased side of a subscription the hub delivers to.
trait Sink: Send + Sync {
    fn event_type(&self) -> TypeId;
    fn decode(&self, raw: &RawEvent) -> Decoded;
    /// Offers a decoded change of `bytes` (estimated); returns nothing:
    /// overflow is recorded.
    fn offer(
        &self,
        decoded: &Arc<dyn Any + Send + Sync>,
        action: Action,
        position: Position,
        bytes: usize,
    );
    /// Drops what is buffered (before a replay).
    fn clear(&self);
    /// Changes were lost before reaching the hub: yields a lost [`Lagged`].
    fn lose(&self);
    /// Ends the stream (hub dropped).
    fn close(&self);
}

type Predicate<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// What an undecodable change counts in a buffer: its error, not its row.
const UNDECODABLE_BYTES: usize = 1024;

struct Queue<T> {
    /// Each change with its estimated bytes.
    buf: VecDeque<(Result<Delivery<T>, Undecodable>, usize)>,
    capacity: usize,
    capacity_bytes: usize,
    /// The estimated bytes of `buf`.
    bytes: usize,
    /// Position of the last change put in the buffer.
    last: Position,
    lag: Option<Lagged>,
    waker: Option<Waker>,
    closed: bool,
    /// Changes at or before this position are not delivered (a wait after
    /// a position the hub had not reached yet).
    skip_through: Option<Position>,
}

impl<T> Queue<T> {
    fn new(capacity: usize, capacity_bytes: usize) -> Self {
        Queue {
            buf: VecDeque::new(),
            capacity,
            capacity_bytes,
            bytes: 0,
            last: Position::default(),
            lag: None,
            waker: None,
            closed: false,
            skip_through: None,
        }
    }

    /// Takes the next buffered change, else the pending lag.
    fn take(&mut self) -> Option<Result<Delivery<T>, SubscriptionError>> {
        if let Some((d, bytes)) = self.buf.pop_front() {
            self.bytes -= bytes;
            return Some(d.map_err(SubscriptionError::from));
        }
        self.lag.take().map(|l| Err(l.into()))
    }
}

struct TypedSink<T> {
    queue: Mutex<Queue<T>>,
    predicate: Option<Predicate<T>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: EventSource + DeserializeOwned> TypedSink<T> {
    /// Buffers a change of `bytes` (estimated), or records the overflow.
    /// A replay (`replaying`) is bounded by bytes only: its changes come
    /// from the retained window, which bounds their number.
    fn push(
        &self,
        delivery: Result<Delivery<T>, Undecodable>,
        position: Position,
        bytes: usize,
        replaying: bool,
    ) {
        if let Ok(delivery) = &delivery
            && let (Some(predicate), Some(row)) = (&self.predicate, delivery.row())
            && !predicate(row)
        {
            return;
        }
        let mut q = lock(&self.queue);
        if let Some(skip) = q.skip_through {
            if position <= skip {
                return;
            }
            q.skip_through = None;
        }
        if let Some(lag) = &mut q.lag {
            lag.missed += 1;
            metrics::counter!(crate::telemetry::SUBSCRIPTION_LAGGED).increment(1);
            return;
        }
        let bytes = if delivery.is_ok() {
            bytes
        } else {
            UNDECODABLE_BYTES
        };
        let over_count = !replaying && q.buf.len() >= q.capacity;
        let over_bytes = !q.buf.is_empty() && q.bytes + bytes > q.capacity_bytes;
        if over_count || over_bytes {
            metrics::counter!(crate::telemetry::SUBSCRIPTION_LAGGED).increment(1);
            q.lag = Some(Lagged {
                missed: 1,
                resume_from: q.last,
                lost: false,
            });
        } else {
            q.buf.push_back((delivery, bytes));
            q.bytes += bytes;
            q.last = position;
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

impl<T: EventSource + DeserializeOwned> TypedSink<T> {
    /// Counts a change the subscription missed while cut off.
    fn push_missed(&self) {
        if let Some(lag) = &mut lock(&self.queue).lag {
            lag.missed += 1;
            metrics::counter!(crate::telemetry::SUBSCRIPTION_LAGGED).increment(1);
        }
    }
}

impl<T: EventSource + DeserializeOwned> Sink for TypedSink<T> {
    fn event_type(&self) -> TypeId {
        TypeId::of::<T>()
    }

    fn decode(&self, raw: &RawEvent) -> Decoded {
        Some(match decode_change::<T>(raw) {
            Ok(event) => Arc::new(event),
            Err(undecodable) => Arc::new(undecodable),
        })
    }

    fn offer(
        &self,
        decoded: &Arc<dyn Any + Send + Sync>,
        action: Action,
        position: Position,
        bytes: usize,
    ) {
        if let Some(event) = decoded.downcast_ref::<Arc<Event<T>>>() {
            let delivery = Delivery {
                action,
                event: event.clone(),
            };
            self.push(Ok(delivery), position, bytes, false);
        } else if let Some(undecodable) = decoded.downcast_ref::<Undecodable>() {
            self.push(Err(undecodable.clone()), position, bytes, false);
        }
    }

    fn clear(&self) {
        let mut q = lock(&self.queue);
        q.buf.clear();
        q.bytes = 0;
        q.lag = None;
    }

    fn lose(&self) {
        let mut q = lock(&self.queue);
        let resume_from = q.last;
        q.lag
            .get_or_insert(Lagged {
                missed: 0,
                resume_from,
                lost: true,
            })
            .lost = true;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    fn close(&self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions::new(HubOptions::default())
    }
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.inner.state);
        f.debug_struct("Subscriptions")
            .field("subscriptions", &state.subs.len())
            .field("retained", &state.window.len())
            .field("retained_bytes", &state.bytes)
            .field("processed", &*self.inner.processed.borrow())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = lock(&self.state);
        for entry in state.subs.values() {
            entry.sink.close();
        }
        retained_gauge(-(state.bytes as f64));
        // The expiry timer finds the hub gone and ends.
        self.expiry.notify_one();
    }
}

/// Moves the retained-bytes gauge (every hub of the process adds to it).
fn retained_gauge(delta: f64) {
    if delta != 0.0 {
        metrics::gauge!(crate::telemetry::HUB_RETAINED_BYTES).increment(delta);
    }
}

/// Lets go of the changes older than `retain_for` while nothing is
/// published: sleeps until the oldest one expires (or, with an empty
/// window, until a change arrives), evicts, and again, until the hub is
/// dropped. It holds the hub only while it evicts.
fn spawn_expiry(inner: &Arc<Inner>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let hub = Arc::downgrade(inner);
    let wake = inner.expiry.clone();
    runtime.spawn(async move {
        loop {
            let next = {
                let Some(inner) = hub.upgrade() else {
                    return;
                };
                let hub = Subscriptions { inner };
                let mut state = lock(&hub.inner.state);
                hub.evict(&mut state, Instant::now());
                // Just past the age at which the oldest change goes.
                state
                    .window
                    .front()
                    .map(|r| r.at + hub.inner.options.retain_for + Duration::from_millis(1))
            };
            match next {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
    });
}

impl Subscriptions {
    /// A hub with these options.
    pub fn new(options: HubOptions) -> Self {
        let state = State {
            floor: options.start.map(after_commit),
            ..State::default()
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            processed: watch::channel(options.start).0,
            options,
            expiry: Arc::new(tokio::sync::Notify::new()),
        });
        spawn_expiry(&inner);
        Subscriptions { inner }
    }

    /// Ends every subscription's stream (after what it has buffered), and
    /// those started from now on at once: the flow closes its hub when it
    /// shuts down, so that long-lived responses (Server-Sent Events) end
    /// and a server's graceful shutdown can finish.
    pub fn close(&self) {
        let mut state = lock(&self.inner.state);
        state.closed = true;
        for entry in state.subs.values() {
            entry.sink.close();
        }
    }

    /// The options.
    pub fn options(&self) -> &HubOptions {
        &self.inner.options
    }

    /// Delivers one change to the subscriptions it touches and retains it.
    /// Call in commit order, for every change of every transaction, then
    /// [`publish_commit`](Self::publish_commit) with the transaction's end.
    ///
    /// A change at or before the last one published is ignored: a feed that
    /// restarts inside a transaction receives it again from its start, and
    /// positions only grow in commit order, so what was delivered before the
    /// restart is not delivered twice.
    pub fn publish(&self, raw: &RawEvent) {
        self.publish_arc(Arc::new(raw.clone()));
    }

    /// [`publish`](Self::publish) without copying the change.
    pub fn publish_arc(&self, raw: Arc<RawEvent>) {
        let mut state = lock(&self.inner.state);
        let position = Position::from(&*raw);
        if state.last.is_some_and(|last| position <= last) {
            return;
        }
        if state.floor.is_none() {
            state.floor = Some(after_commit(Lsn(raw.commit_lsn.0.saturating_sub(1))));
        }
        state.last = Some(position);
        let bytes = size::change_bytes(&raw);
        deliver(&state, &raw, position, bytes);
        let now = Instant::now();
        let was_empty = state.window.is_empty();
        state.window.push_back(Retained {
            at: now,
            raw,
            bytes,
        });
        state.bytes += bytes;
        retained_gauge(bytes as f64);
        self.evict(&mut state, now);
        if was_empty && !state.window.is_empty() {
            self.inner.expiry.notify_one();
        }
    }

    /// Marks the transaction ending at `end_lsn` as published (every change
    /// of it went through [`publish`](Self::publish)). [`Subscriptions::processed`]
    /// then returns it.
    pub fn publish_commit(&self, end_lsn: Lsn) {
        {
            let mut state = lock(&self.inner.state);
            let now = Instant::now();
            self.evict(&mut state, now);
        }
        self.inner.processed.send_if_modified(|p| {
            if p.is_none_or(|p| p < end_lsn) {
                *p = Some(end_lsn);
                true
            } else {
                false
            }
        });
    }

    /// Records that the transactions committed after the last one published
    /// and up to `through` (an end LSN) will never be published to this hub:
    /// they were lost before reaching it (a node away from its `LISTEN`
    /// channel longer than the pubsub log keeps transactions, a broadcast
    /// lost in a crash).
    ///
    /// Every live subscription gets a [`Lagged`] with `lost` set after what
    /// it has buffered, and no position before the gap can be resumed after
    /// any more ([`TooOld`]): subscribers reload their state.
    /// [`processed`](Self::processed) moves to `through`.
    pub fn publish_gap(&self, through: Lsn) {
        {
            let mut state = lock(&self.inner.state);
            let floor = after_commit(through);
            state.floor = Some(state.floor.map_or(floor, |f| f.max(floor)));
            let mut freed = 0;
            while state
                .window
                .front()
                .is_some_and(|r| Position::from(&*r.raw) <= floor)
            {
                if let Some(r) = state.window.pop_front() {
                    freed += r.bytes;
                }
            }
            state.bytes -= freed;
            retained_gauge(-(freed as f64));
            for entry in state.subs.values() {
                entry.sink.lose();
            }
        }
        self.inner.processed.send_if_modified(|p| {
            if p.is_none_or(|p| p < through) {
                *p = Some(through);
                true
            } else {
                false
            }
        });
    }

    /// Publishes a whole committed transaction: its changes, then its end.
    pub fn publish_transaction<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a RawEvent>,
        end_lsn: Lsn,
    ) {
        for raw in changes {
            self.publish(raw);
        }
        self.publish_commit(end_lsn);
    }

    /// The end of the last transaction published, if any.
    pub fn processed(&self) -> Option<Lsn> {
        *self.inner.processed.borrow()
    }

    /// The position a subscription can resume after to receive everything
    /// published from now on (`after_commit(processed)`, or the last change
    /// published if later).
    pub fn position(&self) -> Option<Position> {
        let state = lock(&self.inner.state);
        self.reached(&state)
    }

    /// [`position`](Self::position), the state locked.
    fn reached(&self, state: &State) -> Option<Position> {
        let processed = self.processed().map(after_commit);
        match (state.last, processed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The oldest position a subscription can resume after.
    pub fn oldest(&self) -> Option<Position> {
        let mut state = lock(&self.inner.state);
        self.evict(&mut state, Instant::now());
        state.floor
    }

    /// How many changes the hub retains now.
    pub fn retained_changes(&self) -> usize {
        lock(&self.inner.state).window.len()
    }

    /// The estimated bytes of the changes the hub retains now, bounded by
    /// [`HubOptions::retain_bytes`] (and the gauge
    /// `walflow_hub_retained_bytes`, over every hub of the process).
    ///
    /// Each change counts: itself and its `Arc`; each row's values (at
    /// `size_of::<Value>()` each) and what they own: every string, numeric
    /// text, `bytea` and invalid value's text whole, arrays and JSON
    /// recursively (an object entry as its key, its value and 32 bytes for
    /// the map's node); an update's changed fields (both values, the column
    /// name and 32 bytes each); the schema, table and column names, even
    /// when rows of a table share them. The allocator's rounding is not
    /// counted. The decoded events subscriptions receive are not counted
    /// here but in each subscription's buffer
    /// ([`Subscription::buffered_bytes`]), at the same size.
    pub fn retained_bytes(&self) -> usize {
        lock(&self.inner.state).bytes
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        lock(&self.inner.state).subs.len()
    }

    /// Whether there is no live subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets go of the oldest changes while the window holds too many, too
    /// old or too many bytes of them.
    fn evict(&self, state: &mut State, now: Instant) {
        let options = &self.inner.options;
        let mut freed = 0;
        while let Some(oldest) = state.window.front() {
            let too_many = state.window.len() > options.retain_events;
            let too_old = now.saturating_duration_since(oldest.at) > options.retain_for;
            let too_big = state.bytes - freed > options.retain_bytes;
            if !(too_many || too_old || too_big) {
                break;
            }
            let position = Position::from(&*oldest.raw);
            freed += oldest.bytes;
            state.floor = Some(state.floor.map_or(position, |f| f.max(position)));
            state.window.pop_front();
        }
        if freed > 0 {
            state.bytes -= freed;
            retained_gauge(-(freed as f64));
        }
    }

    /// A live subscription to the rows of `T` in `scope`, with the default
    /// buffer and no predicate.
    pub fn subscribe<T>(&self, scope: impl Into<Scope<T>>) -> Subscription<T>
    where
        T: EventSource + DeserializeOwned,
    {
        self.subscription(scope)
            .start()
            .expect("a live subscription does not resume")
    }

    /// A subscription to configure: predicate, buffer, resume position.
    pub fn subscription<T>(&self, scope: impl Into<Scope<T>>) -> SubscriptionBuilder<T>
    where
        T: EventSource + DeserializeOwned,
    {
        SubscriptionBuilder {
            hub: self.clone(),
            scope: scope.into(),
            predicate: None,
            buffer: self.inner.options.buffer,
            buffer_bytes: self.inner.options.buffer_bytes,
            after: None,
        }
    }

    /// Waits for the first change of a row in `scope` committed after
    /// `after` (or from now on when `None`), up to `timeout`.
    ///
    /// The "create, then wait until the derived row exists" flow: take
    /// [`position`](Self::position) before writing, then wait after it; a
    /// change already published resolves at once, from the retained window.
    /// A position the hub has not reached yet (the database's current LSN,
    /// read before writing) is waited for: the changes up to it are
    /// skipped.
    pub async fn wait_for<T>(
        &self,
        scope: impl Into<Scope<T>>,
        after: Option<Position>,
        timeout: Duration,
    ) -> Result<Delivery<T>, WaitError>
    where
        T: EventSource + DeserializeOwned,
    {
        use futures_util::StreamExt;
        let mut builder = self.subscription(scope);
        if let Some(after) = after {
            builder = builder.after(after);
        }
        let mut sub = builder.start_with(|_| Ok::<(), TooOld>(()))?;
        match tokio::time::timeout(timeout, sub.next()).await {
            Ok(Some(Ok(delivery))) => Ok(delivery),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(None) | Err(_) => Err(WaitError::Timeout(timeout)),
        }
    }

    /// Adds a subscription, first replaying what it missed after `after`.
    /// A position the hub has not reached is handed to `ahead`: an error
    /// refuses it, `Ok` waits for it (the changes up to it are skipped).
    fn register<T: EventSource + DeserializeOwned, E: From<TooOld>>(
        &self,
        scope: &Scope<T>,
        sink: Arc<TypedSink<T>>,
        after: Option<Position>,
        ahead: impl FnOnce(FromTheFuture) -> Result<(), E>,
    ) -> Result<SubId, E> {
        let mut state = lock(&self.inner.state);
        self.evict(&mut state, Instant::now());
        if let Some(after) = after {
            match self.reached(&state) {
                Some(reached) if after > reached => {
                    ahead(FromTheFuture {
                        requested: after,
                        reached,
                    })?;
                    let mut q = lock(&sink.queue);
                    q.skip_through = Some(after);
                    q.last = after;
                }
                _ => replay(&state, scope, &*sink, after)?,
            }
        }
        if state.closed {
            sink.close();
        }
        let id = state.next_id;
        state.next_id += 1;
        let table: (Arc<str>, Arc<str>) = (Arc::from(T::SCHEMA), Arc::from(T::TABLE));
        let indexed = IndexedScope::from(scope);
        state
            .tables
            .entry(table.clone())
            .or_default()
            .add(id, &indexed);
        state.subs.insert(
            id,
            SubEntry {
                table,
                scope: indexed,
                sink,
            },
        );
        Ok(id)
    }

    fn set_scope<T: EventSource + DeserializeOwned>(&self, id: SubId, scope: &Scope<T>) {
        let mut state = lock(&self.inner.state);
        let state = &mut *state;
        if let Some(entry) = state.subs.get_mut(&id) {
            let indexed = IndexedScope::from(scope);
            let table = state.tables.entry(entry.table.clone()).or_default();
            table.remove(id, &entry.scope);
            table.add(id, &indexed);
            entry.scope = indexed;
        }
    }

    fn resume<T: EventSource + DeserializeOwned>(
        &self,
        id: SubId,
        scope: &Scope<T>,
        sink: &TypedSink<T>,
        after: Position,
    ) -> Result<(), ResumeError> {
        let mut state = lock(&self.inner.state);
        if !state.subs.contains_key(&id) {
            return Ok(());
        }
        self.evict(&mut state, Instant::now());
        if let Some(reached) = self.reached(&state).filter(|r| after > *r) {
            return Err(FromTheFuture {
                requested: after,
                reached,
            }
            .into());
        }
        check_window(&state, after)?;
        sink.clear();
        Ok(replay(&state, scope, sink, after)?)
    }

    fn unsubscribe(&self, id: SubId) {
        let mut state = lock(&self.inner.state);
        if let Some(entry) = state.subs.remove(&id)
            && let Some(table) = state.tables.get_mut(&entry.table)
        {
            table.remove(id, &entry.scope);
            if table.is_empty() {
                state.tables.remove(&entry.table);
            }
        }
    }
}

fn deliver(state: &State, raw: &RawEvent, position: Position, bytes: usize) {
    let Some(table) = state
        .tables
        .get(&(raw.schema.clone(), raw.table.clone()) as &(Arc<str>, Arc<str>))
    else {
        return;
    };
    let routes = table.route(raw);
    if routes.is_empty() {
        return;
    }
    // Decode once per type, shared by every subscription of that type.
    let mut decoded: Vec<(TypeId, Decoded)> = Vec::with_capacity(1);
    for (id, action) in routes {
        let Some(entry) = state.subs.get(&id) else {
            continue;
        };
        let type_id = entry.sink.event_type();
        let event = match decoded.iter().find(|(t, _)| *t == type_id) {
            Some((_, event)) => event.clone(),
            None => {
                let event = entry.sink.decode(raw);
                decoded.push((type_id, event.clone()));
                event
            }
        };
        if let Some(event) = event {
            entry.sink.offer(&event, action, position, bytes);
        }
    }
}

fn check_window(state: &State, after: Position) -> Result<(), TooOld> {
    match state.floor {
        Some(floor) if after >= floor => Ok(()),
        floor => Err(TooOld {
            requested: after,
            oldest: OldestPosition(floor),
        }),
    }
}

/// Puts the retained changes after `after` in `scope` into `sink`: beyond
/// its capacity in changes (the window bounds them), not beyond its bytes
/// (each replay decodes its own copies): past them the subscription yields
/// [`Lagged`] and resumes from there, in chunks of its buffer.
fn replay<T: EventSource + DeserializeOwned>(
    state: &State,
    scope: &Scope<T>,
    sink: &TypedSink<T>,
    after: Position,
) -> Result<(), TooOld> {
    check_window(state, after)?;
    let mut table = TableSubs::default();
    table.add(0, &IndexedScope::from(scope));
    let start = state
        .window
        .partition_point(|r| Position::from(&*r.raw) <= after);
    for retained in state.window.range(start..) {
        let raw = &retained.raw;
        if !T::is_table(raw) {
            continue;
        }
        let position = Position::from(&**raw);
        for (_, action) in table.route(raw) {
            if lock(&sink.queue).lag.is_some() {
                // Cut off: the rest is counted as missed (before the
                // predicate, which would need each change decoded).
                sink.push_missed();
                continue;
            }
            let delivery = decode_change::<T>(raw).map(|event| Delivery { action, event });
            sink.push(delivery, position, retained.bytes, true);
        }
    }
    if let Some(last) = state.last.filter(|l| *l > after) {
        lock(&sink.queue).last = last;
    } else {
        lock(&sink.queue).last = after;
    }
    Ok(())
}

/// Configures a subscription before it starts: see
/// [`Subscriptions::subscription`].
pub struct SubscriptionBuilder<T> {
    hub: Subscriptions,
    scope: Scope<T>,
    predicate: Option<Predicate<T>>,
    buffer: usize,
    buffer_bytes: usize,
    after: Option<Position>,
}

impl<T: EventSource + DeserializeOwned> SubscriptionBuilder<T> {
    /// Delivers only the rows `predicate` accepts (authorization): evaluated
    /// once per change, on the row [`Delivery::row`] returns, before it is
    /// buffered. Truncates are always delivered.
    pub fn authorize(mut self, predicate: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Arc::new(predicate));
        self
    }

    /// Buffers at most `changes` undelivered changes (at least 1).
    pub fn buffer(mut self, changes: usize) -> Self {
        self.buffer = changes.max(1);
        self
    }

    /// Buffers at most `bytes` (estimated, see
    /// [`HubOptions::buffer_bytes`]) of undelivered changes; a change
    /// always fits an empty buffer.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes;
        self
    }

    /// First delivers the retained changes after `position` (a
    /// [`Delivery::position`], an SSE `Last-Event-ID`, or
    /// [`after_commit`]`(lsn)`), then the live ones, without gap or repeat.
    pub fn after(mut self, position: Position) -> Self {
        self.after = Some(position);
        self
    }

    /// Starts the subscription. Fails when the resume position is older
    /// than the retained window ([`ResumeError::TooOld`]) or after
    /// everything the hub has published ([`ResumeError::FromTheFuture`]):
    /// reload the state and subscribe again.
    pub fn start(self) -> Result<Subscription<T>, ResumeError> {
        self.start_with(|ahead| Err(ResumeError::from(ahead)))
    }

    /// [`start`](Self::start), a position the hub has not reached handed
    /// to `ahead` (see [`Subscriptions::register`]).
    fn start_with<E: From<TooOld>>(
        self,
        ahead: impl FnOnce(FromTheFuture) -> Result<(), E>,
    ) -> Result<Subscription<T>, E> {
        let sink = Arc::new(TypedSink {
            queue: Mutex::new(Queue::new(self.buffer, self.buffer_bytes)),
            predicate: self.predicate,
        });
        let id = self
            .hub
            .register(&self.scope, sink.clone(), self.after, ahead)?;
        metrics::gauge!(crate::telemetry::SUBSCRIBERS).increment(1.0);
        Ok(Subscription {
            hub: Arc::downgrade(&self.hub.inner),
            id,
            scope: self.scope,
            sink,
            _types: PhantomData,
        })
    }
}

/// A stream of the changes of rows of `T` in a scope, in commit order:
/// `Ok(`[`Delivery`]`)`; `Err(`[`SubscriptionError::Lagged`]`)` once after
/// a buffer overflow (then the later changes; [`resume`](Self::resume)
/// fills the gap); `Err(`[`SubscriptionError::Undecodable`]`)` in place of
/// a change that does not deserialize into `T` (skip it: the next changes
/// follow).
///
/// Dropping it unsubscribes. The stream ends when the hub is dropped.
pub struct Subscription<T> {
    hub: Weak<Inner>,
    id: SubId,
    scope: Scope<T>,
    sink: Arc<TypedSink<T>>,
    _types: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .finish()
    }
}

impl<T: EventSource + DeserializeOwned> Subscription<T> {
    /// The current scope.
    pub fn scope(&self) -> &Scope<T> {
        &self.scope
    }

    /// Follows another scope from now on (the changes already buffered stay).
    pub fn set_scope(&mut self, scope: impl Into<Scope<T>>) {
        self.scope = scope.into();
        if let Some(inner) = self.hub.upgrade() {
            Subscriptions { inner }.set_scope(self.id, &self.scope);
        }
    }

    /// Replaces what is buffered with the retained changes after `position`
    /// (usually [`Lagged::resume_from`]); the live ones follow. Fails
    /// (reload the state) when `position` is older than the retained window
    /// ([`ResumeError::TooOld`]) or after everything the hub has published
    /// ([`ResumeError::FromTheFuture`]).
    pub fn resume(&mut self, position: Position) -> Result<(), ResumeError> {
        match self.hub.upgrade() {
            Some(inner) => {
                Subscriptions { inner }.resume(self.id, &self.scope, &self.sink, position)
            }
            None => Ok(()),
        }
    }

    /// Number of changes buffered, not yet taken.
    pub fn buffered(&self) -> usize {
        lock(&self.sink.queue).buf.len()
    }

    /// Estimated bytes of the changes buffered, not yet taken (bounded by
    /// [`HubOptions::buffer_bytes`], see there how they are counted).
    pub fn buffered_bytes(&self) -> usize {
        lock(&self.sink.queue).bytes
    }

    /// Takes a buffered change without waiting.
    pub fn try_next(&mut self) -> Option<Result<Delivery<T>, SubscriptionError>> {
        lock(&self.sink.queue).take()
    }
}

impl<T: EventSource + DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<Delivery<T>, SubscriptionError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut q = lock(&self.sink.queue);
        if let Some(item) = q.take() {
            return Poll::Ready(Some(item));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::SUBSCRIBERS).decrement(1.0);
        if let Some(inner) = self.hub.upgrade() {
            Subscriptions { inner }.unsubscribe(self.id);
        }
    }
}

#[cfg(test)]
mod tests;

impl crate::subscribe::Feed for Subscriptions {
    fn change(&self, raw: Arc<RawEvent>) {
        self.publish_arc(raw);
    }

    fn commit(&self, end_lsn: Lsn) {
        self.publish_commit(end_lsn);
    }
}
