//! Versioned migrations of walflow's own tables, in the `walflow` schema.
//!
//! Applied at start by [`migrate`]: idempotent, and safe when several
//! processes start at once (a transaction-scoped advisory lock serializes
//! them). Each version runs once and is recorded in `walflow.migrations`.
//!
//! The tables (every row is scoped by the replication slot of the flow that
//! wrote it, so several flows can share one database):
//!
//! - `walflow.streams (slot, enqueued_lsn)`: the end position of the last
//!   transaction whose events are in the queue. A transaction delivered again
//!   after a crash (enqueued but not yet acknowledged) is skipped.
//! - `walflow.queue (slot, operator, commit_lsn, seq, part, id, kind,
//!   schema_name, table_name, event, updated_at, queued_at)`: one row per operator and
//!   event (two for an update that moved the mapped id: `part` 0 for the new
//!   id, 1 for the old one). `id` is the mapped id as a JSON [`Value`](crate::Value),
//!   `event` the whole [`RawEvent`](crate::RawEvent) for handler operators.
//!   A row is deleted in the transaction that applies it.
//! - `walflow.pending_status (slot, commit_lsn, seq, schema_name,
//!   table_name, updated_at, remaining)`: events whose operators have not all
//!   finished, with how many queue rows are left.
//! - `walflow.process_status (slot, schema_name, table_name, updated_at)`:
//!   per table, the largest `updated_at` (microseconds since the Unix epoch)
//!   of an event all of whose operators finished.
//! - `walflow.pubsub_log (channel, end_lsn, prev_end_lsn, payload,
//!   created_at)`: transactions broadcast over LISTEN/NOTIFY, kept for
//!   receivers to catch up (see [`crate::subscribe::pubsub`]).
//! - `walflow.dead_letters (id, slot, operator, commit_lsn, seq, part, id,
//!   kind, schema_name, table_name, event, updated_at, error, attempts,
//!   failed_at)`: events given up after their last attempt.
//! - `walflow.requests (id, slot, kind, operator, dead_letter_ids, state,
//!   total, done, error, created_at, finished_at)`: requests to the running
//!   flow of a slot (retrying dead letters), with their progress.
//! - `walflow.operators (slot, operator, started_at)`: the operators of the
//!   flow that last started on a slot.
//! - `walflow.applied (slot, operator, lo, hi, positions)`: the progress
//!   record, one row per committed unit transaction of the stream
//!   storage: the positions of the rows it applied (see the queue module's
//!   rule 12).
//! - `walflow.nodes (slot, node, operators, started_at, heartbeat_at)`: the
//!   flows running a slot's operators, with the operators each declares and
//!   a heartbeat; the LSN fence counts only the operators of live ones.

use sqlx::PgPool;

/// The migrations, in order. Never edit a released one: add a new version.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE walflow.streams (
    slot text PRIMARY KEY,
    enqueued_lsn bigint NOT NULL
);
CREATE TABLE walflow.queue (
    slot text NOT NULL,
    operator text NOT NULL,
    commit_lsn bigint NOT NULL,
    seq integer NOT NULL,
    part smallint NOT NULL,
    id text NOT NULL,
    kind text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    event jsonb,
    updated_at bigint,
    PRIMARY KEY (slot, operator, commit_lsn, seq, part)
);
CREATE INDEX queue_position ON walflow.queue (slot, commit_lsn);
CREATE TABLE walflow.pending_status (
    slot text NOT NULL,
    commit_lsn bigint NOT NULL,
    seq integer NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    updated_at bigint NOT NULL,
    remaining integer NOT NULL,
    PRIMARY KEY (slot, commit_lsn, seq)
);
CREATE TABLE walflow.process_status (
    slot text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (slot, schema_name, table_name)
);
CREATE TABLE walflow.dead_letters (
    id bigserial PRIMARY KEY,
    slot text NOT NULL,
    operator text NOT NULL,
    commit_lsn bigint NOT NULL,
    seq integer NOT NULL,
    part smallint NOT NULL,
    mapped_id text NOT NULL,
    kind text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    event jsonb,
    updated_at bigint,
    error text NOT NULL,
    attempts integer NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_operator ON walflow.dead_letters (slot, operator);
-- Deletes queue rows one by one through the primary key (a join can make
-- the planner scan the whole queue).
CREATE FUNCTION walflow.delete_queue_rows(p_slot text, p_operator text, p_lsns bigint[],
                                          p_seqs integer[], p_parts smallint[])
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint := 0;
    c bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_lsns, 1), 0) LOOP
        DELETE FROM walflow.queue
        WHERE slot = p_slot AND operator = p_operator
          AND commit_lsn = p_lsns[i] AND seq = p_seqs[i] AND part = p_parts[i];
        GET DIAGNOSTICS c = ROW_COUNT;
        n := n + c;
    END LOOP;
    RETURN n;
END
$fn$;
"#,
    ),
    (
        2,
        r#"
-- A row of a coalescing operator can stand for several events of its id,
-- collapsed when they were queued: `first_lsn` is the commit LSN of the
-- first of them (NULL: the row's own), `cover_lsns`/`cover_seqs` the
-- positions of the others whose process status waits on this row.
ALTER TABLE walflow.queue
    ADD COLUMN first_lsn bigint,
    ADD COLUMN cover_lsns bigint[],
    ADD COLUMN cover_seqs integer[];
CREATE INDEX queue_first_position ON walflow.queue (slot, (coalesce(first_lsn, commit_lsn)));
DROP INDEX walflow.queue_position;
-- Where the queue stands inside a transaction not yet fully queued: a big
-- transaction is queued in chunks before its commit is seen.
ALTER TABLE walflow.streams
    ADD COLUMN partial_lsn bigint,
    ADD COLUMN partial_seq integer;
"#,
    ),
    (
        3,
        r#"
-- The transactions (32-bit ids, as the replication stream sends them) that
-- a snapshot taken now does not see yet. PostgreSQL writes, flushes and
-- sends a transaction's commit record before it removes the transaction
-- from the set of running ones that snapshots consult: until then, a query
-- would compute the state before it. The 64-bit id is recovered from the
-- snapshot's xmax (the id is within 2^31 of it).
CREATE FUNCTION walflow.invisible_xids(p_xids bigint[])
RETURNS bigint[] LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    xmax bigint := pg_snapshot_xmax(snap)::text::bigint;
BEGIN
    RETURN coalesce((
        SELECT array_agg(DISTINCT x) FROM unnest(p_xids) AS x
        WHERE x > 2 AND NOT pg_visible_in_snapshot(
            greatest(3, xmax + ((x - xmax) % 4294967296 + 6442450944) % 4294967296 - 2147483648)
                ::text::xid8,
            snap)), '{}');
END
$fn$;
-- Raises SQLSTATE WF001 unless every transaction of `p_xids` is visible to
-- a snapshot taken now: the statement queueing their events fails (and
-- queues nothing) rather than letting an operator read the state before
-- them.
CREATE FUNCTION walflow.require_visible(p_xids bigint[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    missing bigint[] := walflow.invisible_xids(p_xids);
BEGIN
    IF cardinality(missing) > 0 THEN
        RAISE EXCEPTION 'transactions % are committed but not yet visible', missing
            USING ERRCODE = 'WF001';
    END IF;
END
$fn$;
"#,
    ),
    (
        4,
        r#"
-- The log of broadcast transactions (`pubsub = postgres`): each names the
-- one before it, so a receiver that was away finds a gap. (Created by
-- earlier versions on first use, hence IF NOT EXISTS.)
CREATE TABLE IF NOT EXISTS walflow.pubsub_log (
    channel text NOT NULL,
    end_lsn bigint NOT NULL,
    prev_end_lsn bigint NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, end_lsn)
);
"#,
    ),
    (
        5,
        r#"
-- When a row was queued: the age of the oldest row is how far an operator
-- is behind (status, metrics).
ALTER TABLE walflow.queue ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
-- Requests to the running flow of a slot (from `walflow dead-letters retry
-- --all` and the like): the flow that owns the operators does the work,
-- and records its progress here for whoever asked.
CREATE TABLE walflow.requests (
    id bigserial PRIMARY KEY,
    slot text NOT NULL,
    kind text NOT NULL,
    operator text,
    dead_letter_ids bigint[],
    state text NOT NULL DEFAULT 'pending',
    total integer,
    done integer NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX requests_pending ON walflow.requests (slot) WHERE state IN ('pending', 'running');
-- The operators of the flow that last started on a slot, so that tools
-- list every one, even one with nothing queued.
CREATE TABLE walflow.operators (
    slot text NOT NULL,
    operator text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, operator)
);
"#,
    ),
    (
        6,
        r#"
-- Per operator and mapped id, the last event a committed unit applied,
-- written in the unit's own transaction: with the memory queue, it tells a
-- unit whose COMMIT got no reply whether the commit went through.
CREATE TABLE walflow.progress (
    slot text NOT NULL,
    operator text NOT NULL,
    id_key text NOT NULL,
    commit_lsn bigint NOT NULL,
    seq integer NOT NULL,
    part smallint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, operator, id_key)
);
"#,
    ),
    (
        7,
        r#"
-- The flows running a slot's operators, each with the operators it
-- declares and a heartbeat. The LSN fence waits only for operators a live
-- node declares: rows of an operator no running flow declares (removed from
-- the program, or not deployed yet) stay queued until `walflow operator
-- drop` moves them to the dead letters.
CREATE TABLE walflow.nodes (
    slot text NOT NULL,
    node uuid NOT NULL DEFAULT gen_random_uuid(),
    operators text[] NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, node)
);
-- The fence looks for each counted operator's rows at or before a position.
CREATE INDEX queue_operator_first_position
    ON walflow.queue (slot, operator, (coalesce(first_lsn, commit_lsn)));
DROP INDEX walflow.queue_first_position;
"#,
    ),
    (
        8,
        r#"
-- The progress record, per committed unit transaction instead of per id:
-- the positions (commit_lsn, seq, part) of the rows it applied, encoded as
-- varints, with their lowest and highest commit LSN (pruning). Read whole
-- at start and pruned every ten seconds, so neither needs an index.
CREATE TABLE walflow.applied (
    slot text NOT NULL,
    operator text NOT NULL,
    lo bigint NOT NULL,
    hi bigint NOT NULL,
    positions bytea NOT NULL
);
DROP TABLE walflow.progress;
"#,
    ),
];

/// The latest schema version.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Creates the `walflow` schema and applies the migrations not yet applied.
/// Returns the versions applied by this call.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i32>, sqlx::Error> {
    let mut tx = crate::queue::begin(pool).await?;
    // Serializes concurrent starts; released at commit.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('walflow.migrate'))")
        .execute(&mut *tx)
        .await?;
    // The DDL below is idempotent (`IF NOT EXISTS`), and PostgreSQL says so
    // at each start with a notice (`schema "walflow" already exists,
    // skipping`), which drivers log. Quiet for this transaction only
    // (`SET LOCAL`): the pool may be the application's, whose sessions
    // keep their own setting. A stricter setting is kept.
    sqlx::query(
        "SELECT set_config('client_min_messages', 'warning', true)
         WHERE current_setting('client_min_messages') NOT IN ('warning', 'error')",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS walflow;
         CREATE TABLE IF NOT EXISTS walflow.migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .execute(&mut *tx)
    .await?;
    let done: Vec<i32> = sqlx::query_scalar("SELECT version FROM walflow.migrations")
        .fetch_all(&mut *tx)
        .await?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO walflow.migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}
