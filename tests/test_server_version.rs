//! The suite runs on the server it is meant for: `.ci/run` runs it on
//! PostgreSQL 15 and again on a newer major (`WALFLOW_PG_BIN_DIR` points the
//! throwaway cluster at its binaries), and this checks which one answered.

mod common;

#[tokio::test]
async fn the_tests_run_on_the_expected_server() {
    let db = common::db().await;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let major = version.parse::<u32>().unwrap() / 10_000;
    eprintln!("PostgreSQL major version: {major}");
    match std::env::var("WALFLOW_EXPECT_PG_MAJOR") {
        Ok(expected) => assert_eq!(
            major.to_string(),
            expected,
            "WALFLOW_EXPECT_PG_MAJOR names another major version"
        ),
        Err(_) => assert!(
            major >= walflow::preflight::MIN_SERVER_VERSION_NUM / 10_000,
            "PostgreSQL {major} is older than walflow supports"
        ),
    }
}
