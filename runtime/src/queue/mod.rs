//! The queue protocol: how a committed transaction becomes queue rows, how
//! the rows become operator runs, and why nothing is lost, applied twice
//! or applied on the state before its own transaction — rule by rule, with
//! what a crash between any two steps leaves behind.
//!
//! Every statement on walflow's own tables (`walflow.queue`,
//! `pending_status`, `process_status`, `dead_letters`, `streams`,
//! `progress`, `nodes`) is in this module, those of the flow and those of
//! the tools beside it (the `walflow` command) alike; only their
//! definitions are elsewhere ([`crate::migrate`]):
//! - [`enqueue`]: queueing a batch (one statement) and what a start needs
//!   to read the position safely;
//! - [`dequeue`]: reading an operator's rows back, deleting a unit's rows
//!   with the process status they release, dead letters in and out;
//! - [`status`]: the LSN fence, the process status and the dead letters as
//!   the API reports them;
//! - [`nodes`]: the flows running a slot's operators (`walflow.nodes`),
//!   registered at start, kept alive by a heartbeat, which the fence reads;
//! - [`admin`]: what the tools read and change ([`crate::admin`]): the
//!   status figures, the dead letters listed, shown, discarded and looked
//!   up for a retry request, and an operator's rows moved to the dead letters
//!   when it is dropped;
//! - [`memory`]: the bookkeeping of the rows held in memory (the stream
//!   storage: what is outstanding, the position safe to acknowledge) and
//!   the process status in memory (`process_status_storage = memory`);
//! - [`progress`]: whether a unit whose `COMMIT` got no reply committed
//!   (rule 10), and the progress record, which tells the stream storage
//!   which events delivered again are applied (rule 12);
//! - [`store`]: the one place that chooses between the storages;
//! - [`handover`]: the consumer ↔ executor hand-over (inboxes, pending
//!   hosts, covered runs, the flush counter).
//!
//! The consumer ([`crate::flow`]) only dispatches changes into batches,
//! hands them over and enqueues them; the executors ([`crate::operator`])
//! only fetch, run, complete or dead-letter; [`Walflow`](crate::Walflow)
//! delegates to [`store::Store`].
//!
//! # Terms
//!
//! - A transaction `T` has a 32-bit id `xid(T)`, a commit position `c(T)`
//!   (the LSN of its commit record) and an end `e(T)`. The slot delivers
//!   committed transactions whole, in commit order; a transaction's events
//!   are numbered by `seq`.
//! - A *queue row* is one event for one operator and mapped id, keyed by
//!   `(slot, operator, commit_lsn, seq, part)`; `walflow.streams.enqueued_lsn`
//!   is the end of the last transaction queued, `partial_lsn`/`partial_seq`
//!   how far into a transaction too big to hold the queue got.
//! - A *flush* is one statement ([`enqueue`]) that inserts a batch's rows,
//!   its process status marks and the new position, after checking that the
//!   batch's transactions are visible. Flushes are numbered; one runs at a
//!   time, so they commit in order.
//! - A *unit* is one run of an operator for one id: its statements and the
//!   deletion of its rows, in one transaction.
//!
//! # Rules
//!
//! **1. Acknowledged only once queued.** The listener is acknowledged
//! `e(T)` only after a flush that recorded it has committed (the consumer
//! acknowledges in flush order). The listener reports to the server only
//! acknowledged positions, or, when nothing delivered is unacknowledged and
//! no transaction is open, the server's keepalive position (everything
//! before it was received). *Crash* before the acknowledgement: the slot
//! delivers `T` again; rule 2 skips it.
//!
//! **2. Delivered again, queued once.** The rows and `enqueued_lsn` are
//! written by the same statement, so `enqueued_lsn ≥ e(T)` exactly when
//! `T`'s rows are (or were) in the queue. At start the consumer takes
//! `enqueued_lsn` as its watermark and skips (acknowledging) every
//! transaction ending at or before it. A big transaction queued in chunks
//! records `(c(T), last seq queued)` with each chunk; its changes up to
//! that seq are skipped when it comes again. Two cases where a statement's
//! outcome is unknown:
//! - the connection broke while a flush ran: before trying again, the
//!   flush reads the position on a new connection, and a flush found
//!   recorded is done (inserting again could bring back rows an executor
//!   has applied and deleted since);
//! - the process was killed while a flush ran: the statement goes on in its
//!   server session and may commit later. A starting flow waits (bounded)
//!   until no session with the queue connection's `application_name`
//!   (`walflow queue <slot>`) is running a statement, then reads the
//!   position.
//!
//! **3. Visible before it runs.** PostgreSQL flushes `T`'s commit record,
//! and the WAL sender sends it, *before* `T` leaves the set of running
//! transactions that snapshots consult (with synchronous replication, until
//! a standby confirms). A query run in that gap computes the state before
//! `T`, and its unit would still count `T`'s event as applied. So:
//! - a flush ends with `walflow.require_visible(xids)`, every transaction
//!   of the batch included (also those without rows): unless a snapshot
//!   taken in the flush sees them all, it raises `WF001` and the flush,
//!   rows and position, rolls back; the consumer polls
//!   `walflow.invisible_xids` until they are visible and flushes again;
//! - visibility is monotonic: a snapshot taken later sees them too;
//! - a unit waits, before any statement, until the flushes of all its rows
//!   have committed (rows handed over in memory carry their flush's number;
//!   rows read from the queue were visible to the reader, so their flush
//!   committed);
//! - hence every statement of a unit sees every transaction whose events
//!   it applies. A chain is covered the same way: the upstream unit's
//!   commit is a transaction of the next batch.
//!
//! The stream storage (rule 12) keeps the same order: its "flush" waits until the
//! batch's transactions are visible (polling `walflow.invisible_xids`),
//! then counts the rows as outstanding, and only then is its number
//! published; the rows were handed over tagged with it, so no unit starts
//! on them earlier. It is bounded by waiting for room *before* a batch is
//! handed over (the batch's own rows cannot finish before it is counted).
//! Not after: rows in an inbox may be what an executor waits for (one that
//! spills waits until the flush of the rows it spills is published), and a
//! flush waiting for room that only they can make would never be. So the
//! rows in memory stay under the room bound, plus one batch, plus what the
//! consumer receives meanwhile (10,000 rows), whatever the size of a
//! transaction.
//!
//! *Crash*: the check and the inserts are one statement: both or neither.
//!
//! **4. Exactly once for query operators.** A unit's statements and the
//! deletion of its rows commit together. A unit that deletes fewer rows
//! than it holds (another executor applied some: two flows briefly on one
//! queue) rolls back; a coalescing one then recomputes its ids in a
//! transaction of its own (rule 6 may have left events without rows that
//! the other run did not see). *Crash* before the unit's commit: nothing of
//! it stands, its rows run again; after: its rows are gone.
//!
//! **5. Collapsing consecutive events (`coalesce: true`).** Within a batch,
//! consecutive rows of one operator and id up to a delete (a barrier, kept
//! as its own row) become the last of them; the row keeps the first commit
//! position (for the fence) and the events whose process status waits on
//! it. The executor likewise runs every pending row of an id up to the next
//! delete as one unit. *Why it is safe*: a coalescing query recomputes its
//! id from the source, so one run after the last event equals a run after
//! each; by rule 3 that run sees every collapsed transaction (they are in
//! the same or earlier flushes). A delete stays in order: an id's events
//! after a delete run after it.
//! The old id of an update that moves a `delete_with` entity's mapped
//! column is queued (part 1) as a delete of that id: its derived row goes
//! as on a delete (the query would find nothing for it, and a `MERGE`
//! cannot delete), and as a delete it is a barrier here and never left out
//! by rule 6.
//!
//! **6. Events without rows (coalescing query operators, durable queue).**
//! An event gets no row of its own when one of these holds, and never when
//! it carries the process status field, is a delete, follows a delete of
//! its id in the batch, or while the executor has not admitted every row
//! handed to it (inbox not empty, overflow, reading the queue):
//! - *a pending host*: the executor holds an unstarted row of the id whose
//!   last pending event is not a delete. That row's unit is taken after
//!   the event was left out (both under the inbox's lock), and a taken unit
//!   waits for the highest flush that left an event out (`absorbed_flush`),
//!   so by rule 3 its run sees the event. *Crash* after the event's flush
//!   and before the host's run: the host row is durable and runs after the
//!   restart, seeing the event. The fence waits on the host row (its first
//!   position is earlier).
//! - *covered by the last run*: the id's last committed run took its
//!   snapshot (`pg_current_snapshot()`, before its statements) after the
//!   event's transaction was visible, and no delete of the id has come
//!   since. The run's statements, on later snapshots, saw the event. A row
//!   standing for several transactions has no single id to check
//!   (transaction ids are not in commit order) and is never left out this
//!   way. Snapshots are kept 60 s (far below transaction id wraparound).
//!
//! **7. A shut-down server.** A WAL sender waits at shutdown until its
//! client confirms the end of the WAL, which the flow cannot do while the
//! queue is unreachable (or, with the stream storage, while the executors
//! that would make room cannot reach the database). When the server
//! terminates or refuses walflow's connections (`57P01`, `57P02`,
//! `57P03`), seen by the consumer's queueing connection, the visibility
//! check or any executor, the consumer lets go of the replication
//! connection at once; what it received is queued once the server is back
//! (rules 1 and 2), and it streams again from the confirmed position.
//!
//! **8. The fence through chains.** `wait_processed(lsn)` is given
//! `current_lsn()`, the WAL *insert* position
//! (`pg_current_wal_insert_lsn()`): every transaction committed before it,
//! whatever its `synchronous_commit`, has its commit record before it. (The
//! write position, `pg_current_wal_lsn()`, can lie before a commit made
//! with `synchronous_commit = off`; that transaction's rows then have
//! `commit_lsn > lsn` and would not be waited for.) It waits until the
//! queue's position has passed `lsn` and no row of a *counted* operator at
//! or before it remains. Then, for a chain of `n` levels, it waits `n - 1`
//! more times for the WAL insert position read once the previous round is
//! done: the upstream units that applied events up to `lsn` have committed
//! before that position. An operator is one level below another when it
//! listens to a table the other writes: a query operator's target, or a
//! table a handler declares in `writes: [..]`. A handler's writes to tables
//! it does not declare are not waited through. While the queue has not
//! reached `lsn`, the fence writes a transactional logical message that
//! commits with `synchronous_commit = local`, so that asynchronous commits
//! before it are flushed and reach the slot.
//!
//! *Counted operators*: those declared by a flow running on the slot, and
//! the asking flow's own. Each flow records its operators in
//! `walflow.nodes` once it holds the slot, refreshes a heartbeat every 5 s,
//! and removes its row at shutdown; a row counts while its heartbeat is
//! under 30 s old. When no flow of the slot is live, every operator counts:
//! nothing applies those rows, so they are not done. Rows of an operator
//! that no running flow declares (removed from the program, or not yet
//! deployed in a rolling deploy) are never dropped at start. They stay
//! queued for a flow that declares the operator again, until
//! `walflow operator drop NAME` moves them to `walflow.dead_letters`, with
//! the error `operator NAME dropped`, and releases the process status
//! waiting on them, in one transaction. That command is refused while a
//! live flow declares the operator. With the stream storage every row
//! held in memory belongs to the running flow's operators; its spilled
//! rows are queue rows, counted as here.
//!
//! **9. Durable before acknowledged, whatever the server's default.**
//! Rule 1 acknowledges `e(T)` once the flush that queued `T` returned, and
//! the slot then never sends `T` again. That only holds if the flush's
//! commit is on disk when it returns: with `synchronous_commit = off` (in
//! `postgresql.conf`, `ALTER ROLE` or `ALTER DATABASE`) a commit returns
//! while its record may still sit in the WAL buffers, and a crash of the
//! server then loses the flush while the slot's confirmed position has
//! passed `T`. So every transaction walflow commits sets
//! `synchronous_commit = local` for itself: a flush in its one statement
//! (`set_config(…, true)`), a unit, a dead letter, the process status, the
//! pub/sub log and the start's bookkeeping in [`begin`]. Never for the
//! session: with `.pool(pool)` walflow runs on the application's
//! connections, where a session setting would leak (and a
//! transaction-mode pooler would drop it). `local` and not `on`: `local`
//! waits for this server's disk, which is all rule 1 needs; `on` would also
//! wait for the synchronous standbys the server names, and a standby that
//! is absent would stall the flow (the convergence suite names one that
//! never answers). Preflight reports the effective default
//! (`synchronous_commit` in [`crate::preflight::ServerInfo`], logged at
//! start). The `walflow.requests`
//! bookkeeping is left at the default: a lost update there only repeats a
//! request. *Crash* of the server after a commit returned: the commit is
//! in the WAL on disk and survives it.
//!
//! **10. A commit without a reply (the stream storage).** A unit sends
//! `COMMIT` and the connection breaks before the reply: the server may have
//! committed or not. With the durable queue the next attempt finds out by
//! itself (rule 4: a committed unit deleted its rows, and a unit that
//! deletes fewer rows than it holds rolls back). With the stream storage no
//! queue row says it (the progress records are read once, at start), so
//! each unit learns its transaction's id before `COMMIT`: the progress
//! record's insert returns it (`pg_current_xact_id()`), no extra
//! statement. After a `COMMIT` that
//! failed with an unknown outcome (the connection broke or was terminated;
//! not an error the server reported for the commit, which means it rolled
//! back), the unit asks the server on another connection for that
//! transaction's status (`pg_xact_status`) before running again:
//! `committed`, `aborted`, or `in progress`, asked again until it is one of
//! the first two. *Why the answer is sound*: the server keeps every
//! transaction's outcome in its commit log and reports a transaction as in
//! progress while its session still runs it (the commit under way, or the
//! session not yet aware its client left), so "not yet" is never taken for
//! "no". The same question settles walflow's other transactions whose
//! outcome its memory must know: a spill (rule 12; rows it believes are not
//! in the queue would stay there) and the finish of rows applied before
//! (done twice, it would release their process status twice).
//!
//! With the stream storage, rows not spilled live only in their executor
//! (and in the slot, which is not acknowledged past them): an executor
//! whose own loop dies (units catch their panics; the loop should not)
//! takes them with it, so the flow fails (health `failed` naming the
//! operator) and stops instead of running on without them; the slot
//! delivers them again after a restart. With the durable queue the
//! executor is restarted and reads its rows back.
//!
//! **11. Refused, never dropped: events without the old row they need.**
//! An operator that maps a table by column `c` needs `c`'s old value from
//! the table's deletes (any operator running on them) and, for a query
//! operator, from its updates (the id a moved row left). The old row
//! carries `c` exactly when `c` is in the replica identity the change was
//! decoded with: each Relation message flags the identity's columns (all
//! of them with `REPLICA IDENTITY FULL`), and an update carries an old row
//! only when the identity's columns changed (always with `FULL`). So
//! dispatch decides from the event alone: an update without an old `c`
//! while `c` is outside the announced identity (a possible move), or a
//! delete whose old row lacks `c`, is a *refusal*, not a row; the event's
//! other rows (an update's new id) are queued as usual. A refusal is a
//! dead letter (operator, position, part, `null` id, 0 attempts, a reason
//! naming the table, its identity and `ALTER TABLE … REPLICA IDENTITY
//! FULL`). It is inserted by the statement that queues the batch's rows
//! and position; with the stream storage, by the statement that writes the
//! batch's status marks, before the batch counts as queued. So by rule 1
//! it is durable before `e(T)` is acknowledged, and by rule 2 it is
//! recorded once; the insert also skips a dead letter already recorded at
//! the same operator and position, for the stream storage, whose
//! transactions come again after a crash. A refusal has no queue row: it
//! holds no fence and no process status (an event's mark counts only its
//! rows). The consumer reads each table's announced identity once per
//! announcement (events share their table's columns until the next
//! Relation message), and keeps the health `degraded`, naming the table
//! and the fix, while it falls short of what an operator needs. walflow
//! never alters the table itself (that takes an `ACCESS EXCLUSIVE` lock on
//! the application's table and needs its ownership). *Crash*: before the
//! flush commits, neither rows nor dead letters stand and `T` comes again;
//! after, both do.
//!
//! **12. The stream storage (`QueueStorage::Stream`): the slot as the
//! queue.** No queue row is written for an operator that keeps up; the
//! slot holds what is not applied, and `walflow.queue` what is spilled.
//! - *Hand-over* (rule 3): once there is room, a
//!   batch's rows go to the executors tagged with its flush (room is at
//!   least twice `spill_rows`, so one operator falls behind and spills,
//!   which makes room, before the flow stops receiving); the flush waits until the batch's
//!   transactions are visible, writes its process status marks and
//!   refusals (rule 11) in one statement, then counts the rows as
//!   outstanding (by the commit position of their first transaction) and
//!   publishes its number; no unit starts before.
//! - *Acknowledged: what is applied or spilled.* The consumer
//!   acknowledges the *safe position*: the end of the last transaction
//!   counted when no row is outstanding (handed over, neither applied nor
//!   spilled), else the commit position `c(T0)` of the oldest outstanding
//!   row's first transaction; again whenever rows stop being outstanding. A
//!   slot that delivers again from confirmed position `p` skips exactly
//!   the transactions whose commit record is before `p` (PostgreSQL's
//!   `SnapBuildXactNeedsSkip`: `commit LSN < start`): `T0` and every later
//!   transaction come again, and every earlier one has no row outstanding
//!   (rows are counted before their flush's number is published and stay
//!   outstanding until their unit committed). The listener's keepalive
//!   acknowledgement (rule 1) needs everything delivered acknowledged, so
//!   it never passes an outstanding row either.
//! - *The progress record* ([`progress`]): each transaction that applies
//!   or dead-letters rows of an operator (one unit, or a group of units of
//!   different ids) inserts one row into `walflow.applied` with the
//!   positions `(commit_lsn, seq, part)` of all its rows, compactly
//!   encoded (a few bytes a row), and its lowest and highest commit
//!   position. The record commits with the effect or not at all. A row
//!   delivered again after a crash is the same row (same position: the
//!   same transaction dispatched by the same operators), so it is applied
//!   exactly when its position is in some record of its operator.
//! - *Delivered again.* At start, before anything is received, the flow
//!   waits at the *record barrier* (below), reads every record of the slot
//!   into memory, and reads the WAL insert position, the *redelivery
//!   horizon* `H`: every event an earlier run could have received commits
//!   before it. A unit's rows that commit before `H` are looked up in those
//!   records (no statement): rows found are finished without running
//!   (their process status released) and the rest run. Rows at or after
//!   `H` are new to this run. (A group of ids in one transaction runs as a
//!   group when none is found.)
//! - *An earlier run still committing: the record barrier.* A killed run's
//!   unit whose `COMMIT` was already sent may commit after the new run
//!   started. Every record insert takes the slot's record lock shared
//!   (`pg_advisory_xact_lock_shared`, in the insert statement itself, held
//!   to the transaction's end), and the start takes it exclusively before
//!   reading the records, which waits for every transaction holding it.
//!   The killed unit's insert ran before its `COMMIT` was sent (each
//!   statement waits for the previous reply), so it holds the lock: the
//!   barrier waits for its outcome, and the read after it sees its record
//!   if it committed. A unit whose insert had not run never commits: its
//!   client is gone before sending `COMMIT`. So query operators apply each
//!   event exactly once; a handler ran, but what it wrote through
//!   `ctx.transaction()` rolls back with the unit (handlers are at least
//!   once, exactly once with `ctx.transaction()`).
//! - *Spill.* An operator falls behind when its executor holds
//!   `spill_rows` rows in memory (default 10,000) that commit at or after
//!   the redelivery horizon, or has held one for `spill_after` (default
//!   30 s, since it was handed over), or one of its ids waits to try
//!   again. The backlog delivered at start (rows before the horizon) is not
//!   behind by its size or its commit time alone: spilling it would copy
//!   WAL the slot keeps anyway into a table; it spills only once held for
//!   `spill_after`, so an operator slow on it does not hold back the others
//!   longer than with a live backlog. Its held rows that no unit is running are then written to
//!   `walflow.queue` exactly as the durable queue writes them, in one
//!   transaction, once their flush has committed (so they are visible);
//!   a unit about to wait before trying again writes its own. Only after
//!   that commit do they stop counting as outstanding: the safe position
//!   moves past them. From then on the executor writes what it is handed
//!   to the queue too (a flush at a time, in commit order) before
//!   admitting it, reads back what it dropped past its memory bound, and
//!   a unit of a spilled row deletes it in its own transaction, as rule 4
//!   says (and rolls back should it be gone). It runs from memory again
//!   once it has read every spilled row back (nothing left to read below
//!   what it holds), holds fewer than half `spill_rows` and no id waits:
//!   an id's spilled rows are then all before anything handed over next. A slow
//!   or failing operator so holds back the slot's acknowledgement only by
//!   its rows that are running, and for at most the spill bounds.
//! - *Spilled rows after a crash.* A spill's insert skips rows already in
//!   the queue. An operator that starts with spilled rows runs nothing
//!   until the flow has received a transaction past the redelivery horizon
//!   (the start writes one: a logical message), and writes everything
//!   delivered again to the queue meanwhile; then it reads the queue from
//!   the start, so an id's events, spilled or delivered again, run in
//!   commit order. Spilled rows before the horizon read the progress
//!   record first, like those delivered again: a row spilled and then
//!   applied from the queue is gone, one applied from memory before a
//!   crash that came back is skipped and its queue row deleted. Rows the
//!   durable queue left (a switch of storage) are read the same way.
//! - *Process status in PostgreSQL.* At start, after waiting for the
//!   predecessor's queue session (rule 2), the slot's `pending_status` at
//!   or after its confirmed position is deleted: every such event is
//!   delivered again, its marks are written afresh, and each of its rows
//!   releases once, applied or skipped (a spilled copy and the copy
//!   delivered again are one queue row). Events before the confirmed
//!   position are not delivered again; their pending rows are spilled and
//!   release their status as they run. An earlier run's unit still
//!   committing holds the pending rows it releases, so the delete waits
//!   for it. A skipped spilled row releases only if its queue row was
//!   still there (the run that deleted it released it).
//! - *Dead letters.* A dead letter and its record commit together: a
//!   dead-lettered event delivered again is skipped, not dead-lettered
//!   twice. `retry_dead_letter` hands the row over as a *replay*: it
//!   skips the record's check, is never spilled, and the dead letter is
//!   deleted by the transaction of the unit that applies it, so a crash
//!   before leaves it a dead letter; a replay whose dead letter is gone
//!   (replayed twice) rolls back.
//! - *Bounded records.* Every ten seconds the records whose positions are
//!   all before the slot's confirmed position, and that hold no position of
//!   a row of their operator still in `walflow.queue` (between their lowest
//!   and highest commit position), are deleted: the slot never delivers
//!   those events again (a unit whose `COMMIT` got no reply keeps its rows
//!   outstanding, so the position stays before them until rule 10's
//!   question is answered), and a spilled row's unit deletes its queue row,
//!   which rule 4 checks. The records are so at most one per unit
//!   transaction since the confirmed position, plus those of spilled rows
//!   delivered again after a restart; the set read at start is as large.
//!   *Cost*: one row per transaction, a few bytes per row it applied; a
//!   group of 64 units writes one row.
//! - *The fence* waits until the memory fence holds and no spilled row of
//!   the flow's operators at or before `lsn` is left in the queue (a row
//!   leaves the memory count only once its spill has committed). A node
//!   that does not hold the slot (subscriber-only) answers from the
//!   database alone: once the slot's `confirmed_flush_lsn` has reached
//!   `lsn`, every event at or before it is applied or spilled (the safe
//!   position above), so it waits until that holds and then until no
//!   spilled row of a counted operator (rule 8) at or before `lsn` is left
//!   in the queue, read in a later statement than the position (so a spill
//!   the position already counts is seen). It learns of progress as the
//!   holder reports its position (every `status_interval`, 1 s by
//!   default). An executor whose loop dies fails the
//!   flow (its held rows are not acknowledged: they come again at the
//!   next start).
//!
//! *Crash* at any step: nothing outstanding was acknowledged, so the slot
//! delivers it again; what was spilled is in the queue; what a committed
//! unit applied is skipped by its record, or gone from the queue; what no
//! unit committed runs.
//!
//! These rules are exercised by `tests/test_convergence.rs`: a random
//! multi-statement workload with one and four writers, `coalesce` on and
//! off, `kill -9` at random moments and during start-up, the process
//! killing itself at each crash point of [`crate::crash_point`], and
//! PostgreSQL restarted fast and immediately (also while it commits
//! asynchronously, for rule 9); a synchronous standby that never answers
//! makes rule 3 deterministic. Rule 8 is exercised by `tests/test_fence.rs`
//! (an asynchronous-commit writer, a handler chain, an operator no flow
//! declares), rule 10 by `tests/test_commit_lost.rs` (a proxy that loses
//! `COMMIT` replies) and `tests/test_executor_death.rs`, rule 11 by
//! `tests/test_replica_identity.rs`, the moved `delete_with` entity of
//! rule 5 by `tests/test_operator_chain.rs`, and rule 12 by the whole
//! convergence suite, which runs on the stream storage (the default)
//! except its `durable_*` cases, and whose `spilling_*` cases spill all the
//! time (kills, PostgreSQL restarts, the crash points around units,
//! acknowledgements, skips, spills and returns), `tests/test_stream.rs`,
//! `tests/test_late_commit.rs` (the record barrier: a killed flow's unit
//! whose `COMMIT` completes after the next flow started) and
//! `tests/test_commit_lost.rs` (with this storage too).

pub(crate) mod admin;
pub(crate) mod dequeue;
pub(crate) mod enqueue;
pub(crate) mod handover;
pub(crate) mod memory;
pub(crate) mod nodes;
pub(crate) mod progress;
pub(crate) mod spill;
pub(crate) mod status;
pub(crate) mod store;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::Config;
use crate::pg_error::is_shutdown;
use crate::raw::{EventKind, RawEvent};

pub(crate) use handover::Handover;
pub(crate) use store::Store;

/// How every transaction walflow commits begins (rule 9): durable on this
/// server's disk when its commit returns, whatever `synchronous_commit` the
/// server, role or database sets, without touching the session.
pub(crate) const BEGIN_DURABLE: &str = "BEGIN; SET LOCAL synchronous_commit = local";

/// Begins a transaction on `pool` whose commit is durable on this server
/// when it returns (rule 9).
pub(crate) async fn begin(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(BEGIN_DURABLE).await
}

/// A batch on its way to the executors and the queue: flush `number`,
/// handed over to the operators' inboxes by [`Store::enqueue`] (at once
/// with a durable queue, once there is room with the rows in memory).
pub(crate) struct Handing {
    pub ops: Vec<&'static crate::registry::OperatorRegistration>,
    pub number: u64,
    pub batch: crate::dispatch::Batch,
}

/// What the consumer, the executors and the flow of one flow share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub pool: PgPool,
    pub config: Config,
    pub slot: String,
    /// Where the queue and the process status are kept.
    pub store: Store,
    /// The consumer ↔ executor hand-over.
    pub handover: Handover,
    /// Counts the errors that say the server refuses or terminates
    /// walflow's connections as it does while shutting down (see
    /// [`is_shutdown`]): the consumer then lets go of the replication
    /// connection, so the server can stop (rule 7).
    pub server_gone: watch::Sender<u64>,
    /// What the flow says about itself ([`crate::Walflow::health`]).
    pub health: crate::telemetry::HealthCell,
}

impl Shared {
    /// Passes on a database error that says the server is shutting down.
    pub fn note_error(&self, e: &sqlx::Error) {
        if is_shutdown(e) {
            self.server_gone.send_modify(|n| *n += 1);
        }
    }
}

/// A queue row as read back.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) commit_lsn: i64,
    pub(crate) seq: i32,
    pub(crate) part: i16,
    pub(crate) id: String,
    /// [`id_key`] of `id`.
    pub(crate) id_key: String,
    pub(crate) kind: EventKind,
    pub(crate) schema: Arc<str>,
    pub(crate) table: Arc<str>,
    /// A handler row's event as JSON (as queued).
    pub(crate) event: Option<String>,
    /// A handler row's event, when handed over in memory.
    pub(crate) raw: Option<Arc<RawEvent>>,
    pub(crate) updated_at: Option<i64>,
    /// The first commit LSN the row stands for (events collapsed into it).
    pub(crate) first_lsn: Option<i64>,
    /// Events collapsed into this row whose process status waits on it.
    pub(crate) covers: Vec<(i64, i32)>,
    /// The consumer's flush queueing the row (0: queued already).
    pub(crate) flush: u64,
    /// The commit time of its (first) event, microseconds since the Unix
    /// epoch, when handed over in memory (for the commit-to-apply metric).
    pub(crate) committed_at: Option<i64>,
    /// The span of its transaction, when handed over in memory.
    pub(crate) span: tracing::Span,
    /// With the stream storage, the dead letter this row replays (taken
    /// by the unit that applies it).
    pub(crate) replay: Option<i64>,
    /// The row is in `walflow.queue` (read from it, or with the stream
    /// storage written there by a spill): its unit deletes it.
    pub(crate) spilled: bool,
}

impl Row {
    /// A row read back from the queue.
    pub(crate) fn from_queued(q: dequeue::QueuedRow) -> Row {
        Row {
            commit_lsn: q.commit_lsn,
            seq: q.seq,
            part: q.part,
            id_key: crate::dispatch::id_key(&q.id),
            id: q.id,
            kind: q.kind,
            schema: q.schema_name.into(),
            table: q.table_name.into(),
            event: q.event,
            raw: None,
            updated_at: q.updated_at,
            first_lsn: None,
            covers: match (q.cover_lsns, q.cover_seqs) {
                (Some(l), Some(s)) => l.into_iter().zip(s).collect(),
                _ => Vec::new(),
            },
            flush: 0,
            committed_at: None,
            span: tracing::Span::none(),
            replay: None,
            spilled: true,
        }
    }

    /// A row handed over in memory, queued by the consumer's flush number
    /// `flush` (0: queued already).
    pub(crate) fn from_new(r: &crate::dispatch::NewRow, flush: u64) -> Row {
        Row {
            commit_lsn: r.commit_lsn,
            seq: r.seq,
            part: r.part,
            id: r.id.clone(),
            id_key: r.id_key.clone(),
            kind: r.kind,
            schema: r.schema.clone(),
            table: r.table.clone(),
            event: r.event.clone(),
            raw: r.raw.clone(),
            updated_at: r.updated_at,
            first_lsn: r.first_lsn,
            covers: r.covers.clone(),
            flush,
            committed_at: r.committed_at,
            span: r.span.clone(),
            replay: None,
            spilled: false,
        }
    }

    pub(crate) fn key(&self) -> (i64, i32, i16) {
        (self.commit_lsn, self.seq, self.part)
    }
}

/// `(commit_lsn, seq, part)`: a queue row's key within its operator.
pub(crate) type RowKey = (i64, i32, i16);

impl crate::registry::TableName for &Row {
    fn schema_name(&self) -> &str {
        &self.schema
    }
    fn table_name(&self) -> &str {
        &self.table
    }
}
