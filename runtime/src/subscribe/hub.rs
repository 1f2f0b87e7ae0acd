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
use crate::event::{Event, EventDecodeError, Position};
use crate::lsn::Lsn;
use crate::raw::{EventKind, RawEvent};
use crate::registry::EventSource;

/// How much the hub keeps and buffers.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Changes kept for resuming ([`SubscriptionBuilder::after`],
    /// [`Subscription::resume`]): at most this many (default 10,000)...
    pub retain_events: usize,
    /// ...and none older than this (default 5 minutes).
    pub retain_for: Duration,
    /// Default per-subscription buffer, in changes (default 1,024).
    pub buffer: usize,
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
            buffer: 1024,
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
/// (`16/B374D848`, meaning after that whole transaction).
pub fn parse_position(s: &str) -> Option<Position> {
    match s.split_once('#') {
        Some((lsn, seq)) => Some(Position {
            commit_lsn: lsn.trim().parse().ok()?,
            seq: seq.trim().parse().ok()?,
        }),
        None => Some(after_commit(s.trim().parse().ok()?)),
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
/// The hub retains the latest changes (by count and age, [`HubOptions`]) so a
/// subscription can start after a position (an SSE `Last-Event-ID`, the
/// LSN a page was rendered at) and first receive what it missed.
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
}

#[derive(Default)]
struct State {
    tables: HashMap<(Arc<str>, Arc<str>), TableSubs>,
    subs: HashMap<SubId, SubEntry>,
    next_id: SubId,
    window: VecDeque<(Instant, Arc<RawEvent>)>,
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
    /// Offers a decoded change; returns nothing: overflow is recorded.
    fn offer(&self, decoded: &Arc<dyn Any + Send + Sync>, action: Action, position: Position);
    /// Drops what is buffered (before a replay).
    fn clear(&self);
    /// Changes were lost before reaching the hub: yields a lost [`Lagged`].
    fn lose(&self);
    /// Ends the stream (hub dropped).
    fn close(&self);
}

type Predicate<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

struct Queue<T> {
    buf: VecDeque<Result<Delivery<T>, Undecodable>>,
    capacity: usize,
    /// Position of the last change put in the buffer.
    last: Position,
    lag: Option<Lagged>,
    waker: Option<Waker>,
    closed: bool,
}

struct TypedSink<T> {
    queue: Mutex<Queue<T>>,
    predicate: Option<Predicate<T>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: EventSource + DeserializeOwned> TypedSink<T> {
    fn push(
        &self,
        delivery: Result<Delivery<T>, Undecodable>,
        position: Position,
        unbounded: bool,
    ) {
        if let Ok(delivery) = &delivery
            && let (Some(predicate), Some(row)) = (&self.predicate, delivery.row())
            && !predicate(row)
        {
            return;
        }
        let mut q = lock(&self.queue);
        if let Some(lag) = &mut q.lag {
            lag.missed += 1;
            metrics::counter!(crate::telemetry::SUBSCRIPTION_LAGGED).increment(1);
            return;
        }
        if !unbounded && q.buf.len() >= q.capacity {
            metrics::counter!(crate::telemetry::SUBSCRIPTION_LAGGED).increment(1);
            q.lag = Some(Lagged {
                missed: 1,
                resume_from: q.last,
                lost: false,
            });
        } else {
            q.buf.push_back(delivery);
            q.last = position;
        }
        if let Some(w) = q.waker.take() {
            w.wake();
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

    fn offer(&self, decoded: &Arc<dyn Any + Send + Sync>, action: Action, position: Position) {
        if let Some(event) = decoded.downcast_ref::<Arc<Event<T>>>() {
            let delivery = Delivery {
                action,
                event: event.clone(),
            };
            self.push(Ok(delivery), position, false);
        } else if let Some(undecodable) = decoded.downcast_ref::<Undecodable>() {
            self.push(Err(undecodable.clone()), position, false);
        }
    }

    fn clear(&self) {
        let mut q = lock(&self.queue);
        q.buf.clear();
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
    }
}

impl Subscriptions {
    /// A hub with these options.
    pub fn new(options: HubOptions) -> Self {
        let state = State {
            floor: options.start.map(after_commit),
            ..State::default()
        };
        Subscriptions {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                processed: watch::channel(options.start).0,
                options,
            }),
        }
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
        deliver(&state, &raw, position);
        let now = Instant::now();
        state.window.push_back((now, raw));
        self.evict(&mut state, now);
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
            while state
                .window
                .front()
                .is_some_and(|(_, raw)| Position::from(&**raw) <= floor)
            {
                state.window.pop_front();
            }
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
        let processed = self.processed().map(after_commit);
        match (state.last, processed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The oldest position a subscription can resume after.
    pub fn oldest(&self) -> Option<Position> {
        lock(&self.inner.state).floor
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        lock(&self.inner.state).subs.len()
    }

    /// Whether there is no live subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn evict(&self, state: &mut State, now: Instant) {
        let options = &self.inner.options;
        while let Some((at, raw)) = state.window.front() {
            let too_many = state.window.len() > options.retain_events;
            let too_old = now.duration_since(*at) > options.retain_for;
            if !(too_many || too_old) {
                break;
            }
            let position = Position::from(&**raw);
            state.floor = Some(state.floor.map_or(position, |f| f.max(position)));
            state.window.pop_front();
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
            after: None,
        }
    }

    /// Waits for the first change of a row in `scope` committed after
    /// `after` (or from now on when `None`), up to `timeout`.
    ///
    /// The "create, then wait until the derived row exists" flow: take
    /// [`position`](Self::position) before writing, then wait after it; a
    /// change already published resolves at once, from the retained window.
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
        let mut sub = builder.start()?;
        match tokio::time::timeout(timeout, sub.next()).await {
            Ok(Some(Ok(delivery))) => Ok(delivery),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(None) | Err(_) => Err(WaitError::Timeout(timeout)),
        }
    }

    fn register<T: EventSource + DeserializeOwned>(
        &self,
        scope: &Scope<T>,
        sink: Arc<TypedSink<T>>,
        after: Option<Position>,
    ) -> Result<SubId, TooOld> {
        let mut state = lock(&self.inner.state);
        if let Some(after) = after {
            replay(&state, scope, &*sink, after)?;
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
    ) -> Result<(), TooOld> {
        let state = lock(&self.inner.state);
        if !state.subs.contains_key(&id) {
            return Ok(());
        }
        check_window(&state, after)?;
        sink.clear();
        replay(&state, scope, sink, after)
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

fn deliver(state: &State, raw: &RawEvent, position: Position) {
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
            entry.sink.offer(&event, action, position);
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

/// Puts the retained changes after `after` in `scope` into `sink` (beyond
/// its capacity: the window bounds them).
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
        .partition_point(|(_, raw)| Position::from(&**raw) <= after);
    for (_, raw) in state.window.range(start..) {
        if !T::is_table(raw) {
            continue;
        }
        let position = Position::from(&**raw);
        for (_, action) in table.route(raw) {
            let delivery = decode_change::<T>(raw).map(|event| Delivery { action, event });
            sink.push(delivery, position, true);
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

    /// First delivers the retained changes after `position` (a
    /// [`Delivery::position`], an SSE `Last-Event-ID`, or
    /// [`after_commit`]`(lsn)`), then the live ones, without gap or repeat.
    pub fn after(mut self, position: Position) -> Self {
        self.after = Some(position);
        self
    }

    /// Starts the subscription. Fails when the resume position is older
    /// than the retained window: reload the state and subscribe again.
    pub fn start(self) -> Result<Subscription<T>, TooOld> {
        let sink = Arc::new(TypedSink {
            queue: Mutex::new(Queue {
                buf: VecDeque::new(),
                capacity: self.buffer,
                last: Position::default(),
                lag: None,
                waker: None,
                closed: false,
            }),
            predicate: self.predicate,
        });
        let id = self.hub.register(&self.scope, sink.clone(), self.after)?;
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
    /// (usually [`Lagged::resume_from`]); the live ones follow.
    pub fn resume(&mut self, position: Position) -> Result<(), TooOld> {
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

    /// Takes a buffered change without waiting.
    pub fn try_next(&mut self) -> Option<Result<Delivery<T>, SubscriptionError>> {
        let mut q = lock(&self.sink.queue);
        if let Some(d) = q.buf.pop_front() {
            return Some(d.map_err(SubscriptionError::from));
        }
        q.lag.take().map(|l| Err(l.into()))
    }
}

impl<T: EventSource + DeserializeOwned> Stream for Subscription<T> {
    type Item = Result<Delivery<T>, SubscriptionError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut q = lock(&self.sink.queue);
        if let Some(d) = q.buf.pop_front() {
            return Poll::Ready(Some(d.map_err(SubscriptionError::from)));
        }
        if let Some(lag) = q.lag.take() {
            return Poll::Ready(Some(Err(lag.into())));
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
