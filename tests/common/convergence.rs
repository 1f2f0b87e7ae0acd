//! The convergence run of `test_convergence` and `convergence_soak` (see
//! `tests/test_convergence.rs`): the model, the random workload, the
//! child process running the flow until killed, and the check.

#![allow(dead_code, missing_docs)] // the model is read through serde

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use walflow::prelude::*;

use crate::common::{self, Rng};

#[event_source(table = "posts")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Post {
    pub id: i64,
    pub title: String,
}

#[event_source(table = "comments")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Comment {
    pub id: i64,
    pub post_id: i64,
}

#[event_source(table = "ratings")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Rating {
    pub id: i64,
    pub comment_id: i64,
    pub stars: i32,
}

#[event_source(table = "comment_stats")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CommentStat {
    pub id: i64,
    pub post_id: i64,
    pub ratings_count: i64,
    pub stars_sum: i64,
}

#[event_source(table = "post_stats")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PostStat {
    pub id: i64,
    pub title: String,
    pub comments_count: i64,
    pub ratings_count: i64,
    pub stars_sum: i64,
}

#[event_source(table = "post_events", id = "post_id")]
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PostEvents {
    pub post_id: i64,
    pub n: i64,
}

on_event! {
    operator CommentStats for CommentStat {
        events: all,
        entities: [Comment, Rating],
        id: [Comment.id, Rating.comment_id],
        delete_with: [Comment],
        coalesce: true,
        query: "
    MERGE INTO comment_stats d
    USING (SELECT c.id, c.post_id, count(r.id) AS n, coalesce(sum(r.stars), 0)::int8 AS s
           FROM comments c LEFT JOIN ratings r ON r.comment_id = c.id
           WHERE c.id = $1 GROUP BY c.id) s
    ON d.id = s.id
    WHEN MATCHED THEN UPDATE SET post_id = s.post_id, ratings_count = s.n, stars_sum = s.s
    WHEN NOT MATCHED THEN INSERT (id, post_id, ratings_count, stars_sum)
         VALUES (s.id, s.post_id, s.n, s.s)",
    }

    operator PostStats for PostStat {
        events: all,
        entities: [Post, CommentStat],
        id: [Post.id, CommentStat.post_id],
        delete_with: [Post],
        coalesce: true,
        query: "
    MERGE INTO post_stats d
    USING (SELECT p.id, p.title, count(cs.id) AS c,
                  coalesce(sum(cs.ratings_count), 0)::int8 AS r,
                  coalesce(sum(cs.stars_sum), 0)::int8 AS s
           FROM posts p LEFT JOIN comment_stats cs ON cs.post_id = p.id
           WHERE p.id = $1 GROUP BY p.id) s
    ON d.id = s.id
    WHEN MATCHED THEN UPDATE SET title = s.title, comments_count = s.c,
                                 ratings_count = s.r, stars_sum = s.s
    WHEN NOT MATCHED THEN INSERT (id, title, comments_count, ratings_count, stars_sum)
         VALUES (s.id, s.title, s.c, s.r, s.s)",
    }

    operator CommentStatsEach for CommentStat {
        events: all,
        entities: [Comment, Rating],
        id: [Comment.id, Rating.comment_id],
        delete_with: [Comment],
        query: "
    MERGE INTO comment_stats d
    USING (SELECT c.id, c.post_id, count(r.id) AS n, coalesce(sum(r.stars), 0)::int8 AS s
           FROM comments c LEFT JOIN ratings r ON r.comment_id = c.id
           WHERE c.id = $1 GROUP BY c.id) s
    ON d.id = s.id
    WHEN MATCHED THEN UPDATE SET post_id = s.post_id, ratings_count = s.n, stars_sum = s.s
    WHEN NOT MATCHED THEN INSERT (id, post_id, ratings_count, stars_sum)
         VALUES (s.id, s.post_id, s.n, s.s)",
    }

    operator PostStatsEach for PostStat {
        events: all,
        entities: [Post, CommentStat],
        id: [Post.id, CommentStat.post_id],
        delete_with: [Post],
        query: "
    MERGE INTO post_stats d
    USING (SELECT p.id, p.title, count(cs.id) AS c,
                  coalesce(sum(cs.ratings_count), 0)::int8 AS r,
                  coalesce(sum(cs.stars_sum), 0)::int8 AS s
           FROM posts p LEFT JOIN comment_stats cs ON cs.post_id = p.id
           WHERE p.id = $1 GROUP BY p.id) s
    ON d.id = s.id
    WHEN MATCHED THEN UPDATE SET title = s.title, comments_count = s.c,
                                 ratings_count = s.r, stars_sum = s.s
    WHEN NOT MATCHED THEN INSERT (id, title, comments_count, ratings_count, stars_sum)
         VALUES (s.id, s.title, s.c, s.r, s.s)",
    }

    /// Not idempotent: counts every run.
    operator PostCounter for PostEvents {
        events: all,
        entities: [Post],
        query: "INSERT INTO post_events (post_id, n) VALUES ($1, 1)
                ON CONFLICT (post_id) DO UPDATE SET n = post_events.n + 1",
    }
}

pub const SCHEMA: &str = "
    CREATE TABLE posts (id bigserial PRIMARY KEY, title text NOT NULL);
    CREATE TABLE comments (id bigserial PRIMARY KEY,
                           post_id bigint NOT NULL REFERENCES posts ON DELETE CASCADE,
                           body text NOT NULL DEFAULT '');
    CREATE TABLE ratings (id bigserial PRIMARY KEY,
                          comment_id bigint NOT NULL REFERENCES comments ON DELETE CASCADE,
                          stars int NOT NULL);
    CREATE TABLE comment_stats (id bigint PRIMARY KEY, post_id bigint NOT NULL,
                                ratings_count bigint NOT NULL, stars_sum bigint NOT NULL);
    CREATE TABLE post_stats (id bigint PRIMARY KEY, title text NOT NULL,
                             comments_count bigint NOT NULL, ratings_count bigint NOT NULL,
                             stars_sum bigint NOT NULL);
    CREATE TABLE post_events (post_id bigint PRIMARY KEY, n bigint NOT NULL);
    -- The truth the counter is checked against, written in the event's own
    -- transaction (not published).
    CREATE TABLE post_events_truth (post_id bigint PRIMARY KEY, n bigint NOT NULL);
    CREATE FUNCTION count_post_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO post_events_truth VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, 1)
        ON CONFLICT (post_id) DO UPDATE SET n = post_events_truth.n + 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER count_post_event AFTER INSERT OR UPDATE OR DELETE ON posts
        FOR EACH ROW EXECUTE FUNCTION count_post_event();
";

/// Which operators run: the coalescing pair or the one-event-at-a-time pair,
/// with the counter either way.
fn operators(coalesce: bool) -> [&'static str; 3] {
    if coalesce {
        ["CommentStats", "PostStats", "PostCounter"]
    } else {
        ["CommentStatsEach", "PostStatsEach", "PostCounter"]
    }
}

/// Set in the child process, the same binary spawned by [`spawn_child`].
pub const CHILD: &str = "WALFLOW_CONVERGENCE_CHILD";

/// The child process: runs the flow on `URL`'s slot `SLOT` (`COALESCE`:
/// `1` or `0`) until killed, `READY` printed once it has started.
pub async fn child() {
    let url = std::env::var("URL").unwrap();
    let slot = std::env::var("SLOT").unwrap();
    let coalesce = std::env::var("COALESCE").unwrap() == "1";
    let storage = Storage::from_env_value(&std::env::var("STORAGE").unwrap());
    let _flow = start_with(&url, &slot, coalesce, storage).await;
    println!("READY");
    std::future::pending::<()>().await;
}

/// Starts the flow once a killed predecessor's session has let go of the
/// slot.
pub async fn start(url: &str, slot: &str, coalesce: bool) -> Walflow {
    start_with(url, slot, coalesce, Storage::Default).await
}

/// The queue storage a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// The storage `WALFLOW_QUEUE_STORAGE` names: the stream storage by
    /// default, with its default spill bounds.
    Default,
    /// The stream storage with small spill bounds (25 rows, 300 ms), so
    /// that operators spill and come back from the queue all the time.
    Spilling,
    /// The durable queue (`QueueStorage::Postgres`).
    Durable,
}

impl Storage {
    fn env_value(self) -> &'static str {
        match self {
            Storage::Default => "default",
            Storage::Spilling => "spilling",
            Storage::Durable => "durable",
        }
    }

    fn from_env_value(s: &str) -> Storage {
        match s {
            "spilling" => Storage::Spilling,
            "durable" => Storage::Durable,
            _ => Storage::Default,
        }
    }

    /// Whether the run uses the stream storage.
    pub fn stream(self) -> bool {
        match self {
            Storage::Default => {
                std::env::var("WALFLOW_QUEUE_STORAGE").map_or(true, |s| s == "stream")
            }
            Storage::Spilling => true,
            Storage::Durable => false,
        }
    }
}

/// [`start`], with `storage`.
pub async fn start_with(url: &str, slot: &str, coalesce: bool, storage: Storage) -> Walflow {
    common::wait_slot_released(url, slot).await;
    let mut builder = Walflow::builder();
    match storage {
        Storage::Default => {}
        Storage::Spilling => {
            builder = builder
                .queue_storage(walflow::config::QueueStorage::Stream)
                .spill_rows(25)
                .spill_after(Duration::from_millis(300));
        }
        Storage::Durable => {
            builder = builder.queue_storage(walflow::config::QueueStorage::Postgres);
        }
    }
    builder
        .database_url(url)
        .slot_name(slot)
        .min_restart_time(Duration::from_millis(20))
        .max_restart_time(Duration::from_millis(500))
        .operators(operators(coalesce))
        .start()
        .await
        .expect("the flow starts")
}

/// A random statement of the workload. Rows are picked at random in SQL,
/// so concurrent writers act on each other's rows.
fn statement(rng: &mut Rng) -> String {
    const ANY_POST: &str = "(SELECT id FROM posts ORDER BY random() LIMIT 1)";
    const ANY_COMMENT: &str = "(SELECT id FROM comments ORDER BY random() LIMIT 1)";
    const ANY_RATING: &str = "(SELECT id FROM ratings ORDER BY random() LIMIT 1)";
    match rng.below(20) {
        0 | 1 => format!("INSERT INTO posts (title) VALUES ('p{}')", rng.below(1000)),
        2 | 3 => format!("UPDATE posts SET title = title || '+' WHERE id = {ANY_POST}"),
        4 => format!("DELETE FROM posts WHERE id = {ANY_POST}"),
        5..=7 => format!(
            "INSERT INTO comments (post_id) SELECT {ANY_POST} WHERE EXISTS (SELECT 1 FROM posts)"
        ),
        8 | 9 => format!("UPDATE comments SET post_id = {ANY_POST} WHERE id = {ANY_COMMENT}"),
        10 => format!("UPDATE comments SET body = body || '.' WHERE id = {ANY_COMMENT}"),
        11 => format!("DELETE FROM comments WHERE id = {ANY_COMMENT}"),
        12..=16 => format!(
            "INSERT INTO ratings (comment_id, stars) SELECT {ANY_COMMENT}, {} \
             WHERE EXISTS (SELECT 1 FROM comments)",
            1 + rng.below(5)
        ),
        17 => format!("UPDATE ratings SET stars = 6 - stars WHERE id = {ANY_RATING}"),
        _ => format!("DELETE FROM ratings WHERE id = {ANY_RATING}"),
    }
}

/// Runs `n` transactions of 1 to 12 random statements. A transaction the
/// writers make fail among themselves (a deadlock, a foreign key whose row
/// another writer just deleted) is rolled back and does not count: the
/// truth is what committed.
async fn write(
    url: String,
    seed: u64,
    n: u64,
    done: Arc<AtomicU64>,
    gate: Arc<tokio::sync::RwLock<()>>,
) -> u64 {
    let mut conn = connect_retrying(&url).await;
    let mut rng = Rng::new(seed);
    let mut committed = 0;
    for _ in 0..n {
        let _open = gate.read().await;
        let statements: Vec<String> = (0..1 + rng.below(12))
            .map(|_| statement(&mut rng))
            .collect();
        let result: Result<(), sqlx::Error> = async {
            let mut tx = conn.begin().await?;
            for s in &statements {
                sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => committed += 1,
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("40P01" | "40001" | "23503")) => {}
            // The server restarting under the writer.
            Err(e) if is_disconnect(&e) => conn = connect_retrying(&url).await,
            Err(e) => panic!("{statements:?}: {e}"),
        }
        done.fetch_add(1, Ordering::AcqRel);
    }
    committed
}

fn is_disconnect(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

async fn connect_retrying(url: &str) -> sqlx::PgConnection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(c) => return c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {url}: {e}"),
        }
    }
}

/// Waits until everything committed is applied (through the chain), then
/// compares. (A workload's statements can touch many rows at once: tens of
/// thousands of events for the durable queue to drain, one query each,
/// which in a debug build on a loaded 2-core machine takes minutes.)
async fn check(flow: &Walflow, pool: &sqlx::PgPool, coalesce: bool) {
    // Right after PostgreSQL restarted, a pooled connection may still be
    // one the restart broke: asked again until one answers (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let lsn = loop {
        match flow.current_lsn().await {
            Ok(lsn) => break lsn,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot read the current WAL position: {e}"),
        }
    };
    if let Err(e) = flow.wait_processed(lsn, Duration::from_secs(600)).await {
        let queue: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT operator, count(*), min(commit_lsn) FROM walflow.queue GROUP BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        panic!("{e}; queued rows left (operator, rows, first commit LSN): {queue:?}");
    }
    // Read right after the fence, before anything else could repair it.
    let differ = |table: &str, truth: &str| {
        format!(
            "SELECT count(*) FROM ((TABLE {table} EXCEPT {truth}) UNION ALL ({truth} EXCEPT TABLE {table})) d"
        )
    };
    let comment_truth = "SELECT c.id, c.post_id, count(r.id), coalesce(sum(r.stars), 0)::int8
                         FROM comments c LEFT JOIN ratings r ON r.comment_id = c.id GROUP BY c.id";
    let post_truth = "SELECT p.id, p.title, count(DISTINCT c.id), count(r.id),
                             coalesce(sum(r.stars), 0)::int8
                      FROM posts p LEFT JOIN comments c ON c.post_id = p.id
                           LEFT JOIN ratings r ON r.comment_id = c.id GROUP BY p.id";
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut diffs = Vec::new();
    for (table, truth) in [
        ("comment_stats", comment_truth),
        ("post_stats", post_truth),
        ("post_events", "SELECT post_id, n FROM post_events_truth"),
    ] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(differ(table, truth)))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        diffs.push((table, n));
    }
    let rows: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM posts), (SELECT count(*) FROM comments),
                (SELECT count(*) FROM ratings), (SELECT coalesce(sum(n), 0)::int8 FROM post_events_truth),
                (SELECT coalesce(sum(n), 0)::int8 FROM post_events)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    eprintln!(
        "posts, comments, ratings, post events (true, counted): {rows:?}; rows differing: {diffs:?}"
    );
    for (table, n) in &diffs {
        assert_eq!(*n, 0, "`{table}` differs from the recompute in {n} rows");
    }
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM walflow.queue")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "the queue is empty");
    for op in operators(coalesce) {
        let dead = flow.dead_letters(op).await.unwrap();
        assert!(dead.is_empty(), "{op}: dead letters {dead:?}");
    }
}

/// Runs [`child`] in a child process; with `wait`, until its flow has
/// started (bounded).
async fn spawn_child(url: &str, slot: &str, mode: Mode, wait: bool) -> Child {
    spawn_child_crashing(url, slot, mode, wait, None).await
}

/// What a child flow runs with: `coalesce`, and the queue storage.
#[derive(Clone, Copy)]
struct Mode {
    coalesce: bool,
    storage: Storage,
}

/// [`spawn_child`], whose flow kills itself at `crash_at` (`point:hit`).
async fn spawn_child_crashing(
    url: &str,
    slot: &str,
    mode: Mode,
    wait: bool,
    crash_at: Option<String>,
) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .env("URL", url)
        .env("SLOT", slot)
        .env("COALESCE", if mode.coalesce { "1" } else { "0" })
        .env("STORAGE", mode.storage.env_value())
        .envs(crash_at.map(|at| ("WALFLOW_CRASH_AT", at)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait {
        return child;
    }
    common::wait_ready(&mut child).await;
    child
}

/// One convergence run.
pub struct Run {
    pub writers: u64,
    pub transactions: u64,
    pub kills: u32,
    pub coalesce: bool,
    /// PostgreSQL restarted mid-workload, with a fast shutdown (which must
    /// complete promptly) and then an immediate one, on a cluster of its
    /// own (the flow runs in the test process throughout).
    pub restarts: bool,
    /// With `restarts`: the server commits asynchronously
    /// (`synchronous_commit = off`, the WAL writer flushing every 10 s),
    /// and is restarted in immediate mode three times, each right after the
    /// flow acknowledged a transaction written after a checkpoint (so the
    /// slot's new position is saved to disk while later WAL may not be).
    pub async_commit: bool,
    /// With `kills`: each kill is followed by a flow that dies by itself at
    /// this crash point (see `walflow::crash_point`), on a random hit.
    pub crash_at: Option<&'static str>,
    /// The queue storage.
    pub storage: Storage,
}

impl Run {
    pub async fn go(self) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        // A bound on each start and stop, past which a fast shutdown turns
        // into an immediate one.
        const STOP_WITHIN: Duration = Duration::from_secs(30);
        let (db, pg) = if self.restarts {
            assert_eq!(
                self.kills, 0,
                "restarts run with the flow in the test process"
            );
            let mut builder = walflow::embedded::EmbeddedPostgres::builder().timeout(STOP_WITHIN);
            if self.async_commit {
                builder = builder
                    .setting("synchronous_commit", "off")
                    .setting("wal_writer_delay", "10s")
                    .setting("wal_writer_flush_after", "1GB");
            }
            let pg = builder.start().await.unwrap();
            let url = pg.create_database("convergence").await.unwrap();
            (common::Db::connect(&url).await, Some(pg))
        } else {
            (common::db().await, None)
        };
        db.exec(SCHEMA).await;
        let slot = db.slot("conv");
        let mut rng = Rng::new(common::seed());
        let t0 = std::time::Instant::now();

        // The first flow creates the slot before anything is written.
        let mut child = None;
        let mut flow = None;
        let mode = Mode {
            coalesce: self.coalesce,
            storage: self.storage,
        };
        if self.kills == 0 {
            flow = Some(start_with(&db.url, &slot, self.coalesce, self.storage).await);
        } else {
            child = Some(spawn_child(&db.url, &slot, mode, true).await);
        }

        let done = Arc::new(AtomicU64::new(0));
        // Writers hold it shared for each transaction; a restart that needs
        // the server quiet takes it alone.
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let per_writer = self.transactions / self.writers;
        let writers: Vec<_> = (0..self.writers)
            .map(|_| {
                tokio::spawn(write(
                    db.url.clone(),
                    rng.next(),
                    per_writer,
                    done.clone(),
                    gate.clone(),
                ))
            })
            .collect();
        let total = per_writer * self.writers;
        let finished = Arc::new(AtomicBool::new(false));

        // Kills at random moments while the workload runs, spread over it;
        // about one in three while the next flow is still starting.
        for k in 0..self.kills {
            let until = total * u64::from(k + 1) / u64::from(self.kills + 1);
            wait_progress(&done, until, &finished).await;
            // For the read of the backlog: the operators are held, so the
            // killed flow leaves rows in the queue.
            let held = match self.crash_at {
                Some("executor.fetched") => Some(hold_operators(&db).await),
                _ => None,
            };
            let mut c = child.take().expect("a child runs");
            if rng.below(3) == 0 {
                // Kill the next one while it starts: the previous is killed
                // after a random moment, the next spawned and killed soon.
                c.kill().unwrap();
                c.wait().unwrap();
                let mut next = spawn_child(&db.url, &slot, mode, false).await;
                tokio::time::sleep(Duration::from_millis(50 + rng.below(1500))).await;
                next.kill().unwrap(); // SIGKILL, maybe still starting
                next.wait().unwrap();
                eprintln!("kill {k} (during start) at {:?}", t0.elapsed());
            } else {
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                c.kill().unwrap(); // SIGKILL
                c.wait().unwrap();
                eprintln!("kill {k} at {:?}", t0.elapsed());
            }
            drop(held);
            if let Some(point) = self.crash_at {
                // A hit soon, but not always the first. (Start-up points, a
                // read of the backlog, the one chunk of the big transaction,
                // the skip of what came again applied and the return from
                // the queue may be met only once per flow.)
                let once = point.starts_with("start.")
                    || matches!(
                        point,
                        "queue.partial" | "executor.fetched" | "stream.returned" | "stream.skipped"
                    );
                let hit = if once { 1 } else { 1 + rng.below(3) };
                let at = format!("{point}:{hit}");
                let mut c =
                    spawn_child_crashing(&db.url, &slot, mode, false, Some(at.clone())).await;
                if point == "queue.partial" {
                    big_transaction(&db.pool).await;
                }
                // The skip of what came again applied needs a killed flow
                // that applied events it had not acknowledged; the kill
                // before may have come too early for that. So a flow that
                // does not meet it in 15 s is killed too (it applied some
                // meanwhile) and the next one tried, up to four.
                let (tries, wait) = if point == "stream.skipped" {
                    (4, Duration::from_secs(15))
                } else {
                    (1, Duration::from_secs(60))
                };
                // It dies by itself at the point; meanwhile something to do.
                let mut tried = 1;
                let mut deadline = tokio::time::Instant::now() + wait;
                while c.try_wait().unwrap().is_none() {
                    if tokio::time::Instant::now() >= deadline {
                        assert!(
                            tried < tries,
                            "crash point `{point}` (hit {hit}) not reached within {wait:?} \
                             by {tries} flows"
                        );
                        c.kill().unwrap();
                        c.wait().unwrap();
                        eprintln!(
                            "`{point}` not reached: killed at {:?}, trying again",
                            t0.elapsed()
                        );
                        c = spawn_child_crashing(&db.url, &slot, mode, false, Some(at.clone()))
                            .await;
                        tried += 1;
                        deadline = tokio::time::Instant::now() + wait;
                    }
                    if matches!(point, "stream.spilled" | "stream.returned") {
                        // A burst past the spill bound: what a restart
                        // delivers again is a backlog, which spills only
                        // by its age.
                        db.exec(
                            "INSERT INTO posts (title) SELECT 'more' FROM generate_series(1, 60);",
                        )
                        .await;
                    } else {
                        db.exec("INSERT INTO posts (title) VALUES ('more');").await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                eprintln!("crashed at `{point}` (hit {hit}) at {:?}", t0.elapsed());
            }
            child = Some(spawn_child(&db.url, &slot, mode, true).await);
        }
        if let (Some(pg), true) = (&pg, self.async_commit) {
            for k in 0..3u64 {
                wait_progress(&done, total * (k + 1) / 4, &finished).await;
                let quiet = gate.write().await;
                acknowledged_after_checkpoint(&db, &slot).await;
                let t = std::time::Instant::now();
                pg.restart(walflow::embedded::ShutdownMode::Immediate)
                    .await
                    .unwrap();
                eprintln!("immediate restart {k} took {:?}", t.elapsed());
                drop(quiet);
            }
        } else if let Some(pg) = &pg {
            for (k, mode) in [
                walflow::embedded::ShutdownMode::Fast,
                walflow::embedded::ShutdownMode::Immediate,
            ]
            .into_iter()
            .enumerate()
            {
                wait_progress(&done, total * (k as u64 + 1) / 3, &finished).await;
                let t = std::time::Instant::now();
                pg.restart(mode).await.unwrap();
                eprintln!("{mode:?} restart took {:?}", t.elapsed());
                assert!(
                    t.elapsed() < STOP_WITHIN,
                    "the {mode:?} shutdown completed by itself (took {:?})",
                    t.elapsed()
                );
            }
        }
        let mut committed = 0;
        for w in writers {
            committed += w.await.unwrap();
        }
        finished.store(true, Ordering::Release);
        eprintln!(
            "workload done at {:?}: {committed} of {total} transactions committed",
            t0.elapsed()
        );
        if let Some(mut c) = child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
            flow = Some(start_with(&db.url, &slot, self.coalesce, self.storage).await);
        }
        let flow = flow.expect("a flow");
        check(&flow, &db.pool, self.coalesce).await;
        eprintln!("checked at {:?}", t0.elapsed());
        flow.shutdown().await.unwrap();
    }
}

/// With the writers held: a checkpoint (whose running-transactions record
/// lets the slot save its next confirmed position to disk), then one
/// transaction, then waits (bounded) until the flow has acknowledged it.
/// With asynchronous commits, what the flow committed to queue it may
/// still be in the WAL buffers: unless walflow's own commits are durable,
/// an immediate restart now loses the queued rows while the slot's saved
/// position is past the transaction.
async fn acknowledged_after_checkpoint(db: &common::Db, slot: &str) {
    db.exec("CHECKPOINT").await;
    db.exec("INSERT INTO posts (title) VALUES ('before an immediate restart');")
        .await;
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    common::wait_until(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .bind(&written)
        .fetch_optional(&db.pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
    })
    .await;
}

/// Holds the derived tables (a lock the operators' statements wait for)
/// until the queue has rows; dropping the connection lets them go.
async fn hold_operators(db: &common::Db) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE comment_stats, post_stats, post_events IN EXCLUSIVE MODE;")
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM walflow.queue")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if queued > 0 {
            return conn;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no queue rows within 60 s"
        );
        db.exec("INSERT INTO posts (title) VALUES ('held');").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One transaction too big to hold (queued in chunks before its commit is
/// seen): 600 posts with 100 comments each, more than the consumer holds
/// while a flush is under way (so it queues a chunk before the commit).
async fn big_transaction(pool: &sqlx::PgPool) {
    sqlx::query(
        "WITH p AS (INSERT INTO posts (title) SELECT 'big' FROM generate_series(1, 600) RETURNING id)
         INSERT INTO comments (post_id) SELECT p.id FROM p, generate_series(1, 100)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until the writers have done `until` transactions in all (bounded).
async fn wait_progress(done: &AtomicU64, until: u64, finished: &AtomicBool) {
    common::wait_until(Duration::from_secs(300), || async {
        done.load(Ordering::Acquire) >= until || finished.load(Ordering::Acquire)
    })
    .await;
}
