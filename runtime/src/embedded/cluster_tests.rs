//! Tests of the embedded cluster against real servers: start-up,
//! authentication, restarts, clean-up.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::embedded::{
    EmbeddedPostgres, ShutdownMode, shared_cluster, test_database, test_server_url,
};
use sqlx::{Connection, PgConnection};

use super::process_alive as alive;

/// Polls `cond` every 20 ms for at most `limit`.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn scalar(url: &str, sql: &'static str) -> String {
    let mut c = PgConnection::connect(url).await.unwrap();
    let v: String = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
    c.close().await.unwrap();
    v
}

#[tokio::test]
async fn starts_configured_for_logical_replication() {
    let t = Instant::now();
    let pg = EmbeddedPostgres::start().await.unwrap();
    eprintln!("started in {:?}", t.elapsed());
    let url = pg.url();
    assert!(url.starts_with("postgres://postgres:"), "{url}");
    assert!(
        url.ends_with(&format!("@127.0.0.1:{}/postgres", pg.port())),
        "{url}"
    );
    assert!(pg.data_dir().join("PG_VERSION").exists());
    assert!(pg.bin_dir().join("postgres").exists());
    for (sql, want) in [
        ("SHOW wal_level", "logical"),
        ("SHOW max_replication_slots", "64"),
        ("SHOW max_wal_senders", "64"),
        ("SHOW password_encryption", "scram-sha-256"),
        ("SHOW listen_addresses", "127.0.0.1"),
        ("SHOW max_slot_wal_keep_size", "4GB"),
        ("SHOW max_connections", "200"),
        ("SHOW fsync", "off"),
        ("SHOW TimeZone", "UTC"),
    ] {
        let got = scalar(&url, sql).await;
        assert_eq!(got, want, "{sql}");
    }
    // The password is stored as SCRAM and required over TCP.
    let stored = scalar(
        &url,
        "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'postgres'",
    )
    .await;
    assert_eq!(stored, "SCRAM-SHA-256");
    assert!(!format!("{pg:?}").contains(pg.password()));
    let wrong = url.replace(pg.password(), "wrong");
    let err = PgConnection::connect(&wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    // The unix socket lives in the temporary directory.
    assert!(
        pg.socket_dir()
            .unwrap()
            .join(format!(".s.PGSQL.{}", pg.port()))
            .exists()
    );
    let via_socket = sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .socket(pg.socket_dir().unwrap())
        .port(pg.port())
        .username("postgres")
        .database("postgres");
    PgConnection::connect_with(&via_socket)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    let db_url = pg.create_database("Odd \"name\"").await.unwrap();
    let mut c = PgConnection::connect(&db_url).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(name, "Odd \"name\"");
    c.close().await.unwrap();

    let pid = pg.postmaster_pid().unwrap();
    let root = pg.root_dir().to_path_buf();
    drop(pg);
    assert!(!alive(pid), "postmaster still running after drop");
    assert!(!root.exists(), "directory left behind: {}", root.display());
}

#[tokio::test]
async fn settings_can_be_overridden() {
    let pg = EmbeddedPostgres::builder()
        .setting("wal_level", "replica")
        .setting("max_replication_slots", "1")
        .start()
        .await
        .unwrap();
    assert_eq!(scalar(&pg.url(), "SHOW wal_level").await, "replica");
    assert_eq!(scalar(&pg.url(), "SHOW max_replication_slots").await, "1");
}

#[tokio::test]
async fn restarts_and_crashes_keep_port_and_data() {
    let pg = EmbeddedPostgres::start().await.unwrap();
    let url = pg.url();
    let port = pg.port();
    let mut c = PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE t (v int)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut c)
        .await
        .unwrap();

    let pid1 = pg.postmaster_pid().unwrap();
    pg.crash().await.unwrap();
    assert!(!pg.is_running());
    assert!(!alive(pid1));
    // The open connection is broken.
    assert!(sqlx::query("SELECT 1").execute(&mut c).await.is_err());
    assert!(PgConnection::connect(&url).await.is_err());
    pg.stop(ShutdownMode::Fast).await.unwrap(); // stopping a stopped server is fine

    pg.start_again().await.unwrap();
    assert_eq!(pg.port(), port);
    let pid2 = pg.postmaster_pid().unwrap();
    assert_ne!(pid1, pid2);
    let mut c = PgConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1, "a committed row was lost in the crash");
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&mut c)
        .await
        .unwrap();

    // Fast restart with a client connected.
    pg.restart(ShutdownMode::Fast).await.unwrap();
    assert!(pg.is_running());
    let mut c = PgConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2);
    c.close().await.unwrap();
    pg.start_again().await.unwrap(); // starting a running server is fine
}

#[tokio::test]
async fn test_databases_are_fresh_and_dropped() {
    let a = test_database().await.unwrap();
    let b = test_database().await.unwrap();
    assert_ne!(a.name(), b.name());
    if let Some(password) = url::Url::parse(a.url()).unwrap().password() {
        assert!(!format!("{a:?}").contains(password), "{a:?}");
    }
    assert_eq!(a.config().slot_name(), a.name());
    assert_eq!(a.config().database(), a.name());

    let pool = a.pool().await.unwrap();
    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(&pool)
        .await
        .unwrap();
    // A slot on the database does not prevent dropping it.
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(a.name())
        .execute(&pool)
        .await
        .unwrap();
    let pool_b = b.pool().await.unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'only_in_a')")
            .fetch_one(&pool_b)
            .await
            .unwrap();
    assert!(!exists);

    let name_a = a.name().to_string();
    drop(a); // pool still open: the drop terminates its sessions
    let count = |name: String| {
        let pool_b = pool_b.clone();
        async move {
            let dbs: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                    .bind(&name)
                    .fetch_one(&pool_b)
                    .await
                    .unwrap();
            let slots: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(&name)
            .fetch_one(&pool_b)
            .await
            .unwrap();
            (dbs, slots)
        }
    };
    assert_eq!(count(name_a).await, (0, 0));
    drop(pool);
    pool_b.close().await;
    let name_b = b.name().to_string();
    b.drop_database().await.unwrap();
    let mut c = PgConnection::connect(&test_server_url().await.unwrap())
        .await
        .unwrap();
    let dbs: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name_b)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(dbs, 0);
}

#[test]
fn shared_cluster_outlives_runtimes() {
    // Two runtimes one after the other: the cluster started in the first
    // still serves the second.
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let url = rt().block_on(async { test_database().await.unwrap().url().to_string() });
    assert!(!url.is_empty());
    rt().block_on(async {
        let db = test_database().await.unwrap();
        let mut c = PgConnection::connect(db.url()).await.unwrap();
        sqlx::query("SELECT 1").execute(&mut c).await.unwrap();
    });
}

const CHILD_ENV: &str = "WALFLOW_EMBEDDED_TEST_CHILD";

/// Runs only as the child of `server_does_not_outlive_the_process`: starts the
/// shared cluster, reports it, then leaves without dropping anything.
#[test]
fn child_leaks_shared_cluster() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pid, root) = rt.block_on(async {
        let db = test_database().await.unwrap();
        std::mem::forget(db);
        let cluster = shared_cluster().await.unwrap();
        (
            cluster.postmaster_pid().unwrap(),
            cluster.root_dir().to_path_buf(),
        )
    });
    println!("CLUSTER {pid} {}", root.display());
    if mode == "exit" {
        std::process::exit(0);
    }
    // "kill": wait to be killed by the parent.
    let mut buf = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut buf);
    std::process::exit(0);
}

fn run_child(mode: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "embedded::cluster_tests::child_leaks_shared_cluster",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut reported = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("CLUSTER ") {
            let (pid, dir) = rest.split_once(' ').unwrap();
            reported = Some((pid.parse::<u32>().unwrap(), PathBuf::from(dir)));
            break;
        }
    }
    let (pid, root) = reported.expect("the child did not report its cluster");
    assert!(alive(pid));
    if mode == "kill" {
        child.kill().unwrap();
    }
    drop(stdin.take());
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !alive(pid) && !root.exists()),
        "postmaster {pid} or {} survived the test process",
        root.display()
    );
}

#[test]
fn server_does_not_outlive_the_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    run_child("exit");
    run_child("kill");
}

#[tokio::test]
async fn failed_start_reports_the_server_log() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = EmbeddedPostgres::builder()
        .setting("port", port.to_string())
        .start()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("PostgreSQL did not start: the postmaster exited"),
        "{msg}"
    );
    assert!(msg.contains("could not bind"), "{msg}");
    // Nothing is left behind.
    assert!(wait_until(Duration::from_secs(10), || {
        !std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("data/walflow.conf"))
                    .is_ok_and(|c| c.contains(&format!("port = '{port}'")))
            })
    }));
    drop(taken);
}
