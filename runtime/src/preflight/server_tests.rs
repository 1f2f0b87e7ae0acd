//! Tests of `preflight` against real servers (the embedded cluster).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Executor};

use super::*;
use crate::embedded::{EmbeddedPostgres, test_database};
use crate::ident::{quote_ident, quote_literal};

#[tokio::test]
async fn good_server_passes() {
    let db = test_database().await.unwrap();
    let cfg = db.config();
    let info = check(&cfg).await.unwrap();
    assert_eq!(info.wal_level, "logical");
    assert!(info.version_num >= MIN_SERVER_VERSION_NUM);
    assert!(info.superuser);
    assert_eq!(info.database, db.name());
    assert_eq!(info.slot, None);
    assert!(info.max_replication_slots >= 1);

    // Through a pool too; then with our slot present and idle.
    let pool = db.pool().await.unwrap();
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(cfg.slot_name())
        .execute(&pool)
        .await
        .unwrap();
    let info = check_server(&pool, &cfg).await.unwrap();
    let slot = info.slot.unwrap();
    assert_eq!(slot.name, cfg.slot_name());
    assert_eq!(slot.plugin.as_deref(), Some("pgoutput"));
    assert!(!slot.active);

    // A slot of that name in the wrong shape is named in the error.
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(cfg.slot_name())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_create_physical_replication_slot($1)")
        .bind(cfg.slot_name())
        .execute(&pool)
        .await
        .unwrap();
    let err = check_server(&pool, &cfg).await.unwrap_err();
    assert!(matches!(err, PreflightError::SlotMismatch { .. }), "{err}");
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(cfg.slot_name())
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn wal_level_replica_is_refused() {
    let pg = EmbeddedPostgres::builder()
        .setting("wal_level", "replica")
        .start()
        .await
        .unwrap();
    let cfg = Config::from_database_url(pg.url()).unwrap();
    let err = check(&cfg).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "wal_level is 'replica'; walflow needs 'logical' (set wal_level = logical and restart PostgreSQL)"
    );
}

#[tokio::test]
async fn role_without_replication_is_refused() {
    let db = test_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    // Roles are cluster-wide: name it after the database.
    let role = format!("{} norep", db.name());
    pool.execute(AssertSqlSafe(format!(
        "CREATE ROLE {} LOGIN PASSWORD {}",
        quote_ident(&role),
        quote_literal("pw'\\x")
    )))
    .await
    .unwrap();
    let cfg = db
        .config_builder()
        .username(&role)
        .password("pw'\\x")
        .database_url(
            url::Url::parse(db.url())
                .map(|mut u| {
                    u.set_username("").unwrap();
                    u.set_password(None).unwrap();
                    u.to_string()
                })
                .unwrap(),
        )
        .build()
        .unwrap();
    let err = check(&cfg).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "role \"{role}\" has no REPLICATION attribute; run ALTER ROLE \"{role}\" WITH REPLICATION"
        )
    );

    pool.execute(AssertSqlSafe(format!(
        "ALTER ROLE {} WITH REPLICATION",
        quote_ident(&role)
    )))
    .await
    .unwrap();
    let info = check(&cfg).await.unwrap();
    assert!(info.replication && !info.superuser);
    assert_eq!(info.role, role);
    pool.execute(AssertSqlSafe(format!("DROP ROLE {}", quote_ident(&role))))
        .await
        .unwrap();
}

fn pg_recvlogical(pg: &EmbeddedPostgres, slot: &str) -> Option<Child> {
    let bin = pg.bin_dir().join("pg_recvlogical");
    if !bin.exists() {
        return None;
    }
    Some(
        Command::new(bin)
            .arg("-d")
            .arg(pg.url())
            .args(["--slot", slot, "--start", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o", "publication_names=events"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn exhausted_slots_and_wal_senders_are_refused() {
    let pg = EmbeddedPostgres::builder()
        .setting("max_replication_slots", "1")
        .setting("max_wal_senders", "1")
        .start()
        .await
        .unwrap();
    let mut conn = PgConnection::connect(&pg.url()).await.unwrap();
    sqlx::query("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
        .execute(&mut conn)
        .await
        .unwrap();
    let cfg = Config::from_database_url(pg.url()).unwrap();
    let err = check(&cfg).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free replication slot: max_replication_slots = 1 and 1 are in use, none of them `walflow_slot`; drop an unused slot (SELECT pg_drop_replication_slot('name')) or raise max_replication_slots and restart PostgreSQL"
    );
    // With the slot being ours, there is no problem.
    let ours = cfg
        .clone()
        .into_builder()
        .slot_name("other")
        .build()
        .unwrap();
    let info = check(&ours).await.unwrap();
    assert_eq!(
        (info.used_replication_slots, info.max_replication_slots),
        (1, 1)
    );

    // Occupy the only WAL sender.
    let Some(mut receiver) = pg_recvlogical(&pg, "other") else {
        eprintln!("pg_recvlogical not found next to postgres; WAL sender case not exercised");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "pg_recvlogical did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = check(&ours).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no free WAL sender: max_wal_senders = 1 and 1 are in use; raise max_wal_senders and restart PostgreSQL, or stop another replication client"
    );
    let _ = receiver.kill();
    let _ = receiver.wait();
}

#[tokio::test]
async fn slot_in_use_is_refused() {
    let db = test_database().await.unwrap();
    let cfg = db.config();
    let pool = db.pool().await.unwrap();
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(cfg.slot_name())
        .execute(&pool)
        .await
        .unwrap();
    // pg_recvlogical must run next to the server: only on the embedded one.
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.trim().is_empty()) {
        return;
    }
    let cluster = crate::embedded::shared_cluster().await.unwrap();
    let bin = cluster.bin_dir().join("pg_recvlogical");
    if !bin.exists() {
        eprintln!("pg_recvlogical not found next to postgres; slot-in-use case not exercised");
        return;
    }
    let mut receiver = Command::new(bin)
        .arg("-d")
        .arg(db.url())
        .args(["--slot", cfg.slot_name(), "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=events"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match check_server(&pool, &cfg).await {
            Err(e @ PreflightError::SlotInUse { .. }) => break e,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "pg_recvlogical did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = receiver.kill();
    let _ = receiver.wait();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "replication slot `{}` is in use by another connection (pid ",
            cfg.slot_name()
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn unreachable_and_refused_servers_are_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = Config::builder()
        .database_url(format!("postgres://app:s3cret-pw@127.0.0.1:{port}/shop"))
        .build()
        .unwrap();
    let err = check(&cfg).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}: ")),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(!format!("{err:?}").contains("s3cret"));

    // Wrong password (refused by a SCRAM server) and a missing database
    // (refused by a trusting one).
    let mut url = url::Url::parse(&crate::embedded::test_server_url().await.unwrap()).unwrap();
    url.set_password(Some("s3cret-wrong")).unwrap();
    url.set_path("/walflow_no_such_database");
    let cfg = Config::from_database_url(url.to_string()).unwrap();
    let err = check(&cfg).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PreflightError::Refused { .. }), "{msg}");
    assert!(
        msg.contains("password authentication failed") || msg.contains("does not exist"),
        "{msg}"
    );
    assert!(
        msg.contains("to database `walflow_no_such_database`: "),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
}
