//! Unit tests of `setup`.

use super::*;

#[test]
fn lock_timeout_stays_well_below_deadlock_timeout() {
    let ms = Duration::from_millis;
    assert_eq!(effective_lock_timeout(LOCK_TIMEOUT, ms(1000)), ms(200));
    assert_eq!(effective_lock_timeout(ms(900), ms(1000)), ms(250));
    assert_eq!(effective_lock_timeout(LOCK_TIMEOUT, ms(200)), ms(50));
    assert_eq!(effective_lock_timeout(LOCK_TIMEOUT, ms(0)), ms(1));
    assert!(LOCK_TIMEOUT * 4 <= ms(1000));
}

#[test]
fn retry_delay_doubles_up_to_its_cap() {
    let delays: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_millis() as u64).collect();
    assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
}

#[test]
fn lock_unavailable_names_the_table() {
    let e = SetupError::LockUnavailable {
        table: "public.posts".into(),
        action: "set REPLICA IDENTITY FULL".into(),
        waited: Duration::from_secs(60),
        source: sqlx::Error::PoolTimedOut,
    };
    let text = e.to_string();
    assert!(
        text.starts_with(
            "gave up after 60s waiting for a lock on `public.posts` to set REPLICA IDENTITY FULL"
        ),
        "{text}"
    );
}

#[test]
fn an_identity_that_leaves_out_a_mapped_column_is_refused_naming_everything() {
    let mut t = TableSpec::new("public", "notes");
    t.replica_identity_full = false;
    t.old_row_columns = vec![OldRowColumn {
        column: "owner_id".into(),
        operator: "NotesPerOwner".into(),
        entity: "Note".into(),
    }];
    let key = ["id".to_owned()];
    let text = check_old_rows(&t, "d", &key).unwrap_err().to_string();
    assert!(
        text.starts_with(
            "entity `Note` (table `public.notes`) is declared with `replica_identity = \"default\"`, \
             and operator `NotesPerOwner` maps it by `owner_id`, which the table's replica identity \
             (DEFAULT: the primary key, `id`) does not carry in old rows"
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"run `ALTER TABLE "public"."notes" REPLICA IDENTITY FULL`"#),
        "{text}"
    );
    let text = check_old_rows(&t, "n", &[]).unwrap_err().to_string();
    assert!(text.contains("(NOTHING)"), "{text}");
    let text = check_old_rows(&t, "d", &[]).unwrap_err().to_string();
    assert!(
        text.contains("(DEFAULT, without a primary key: nothing)"),
        "{text}"
    );
    // Carried: by FULL, or by a key (an identity index) holding the column.
    assert!(check_old_rows(&t, "f", &[]).is_ok());
    let index = ["owner_id".to_owned(), "id".to_owned()];
    assert!(check_old_rows(&t, "i", &index).is_ok());
    t.old_row_columns.clear();
    assert!(check_old_rows(&t, "n", &[]).is_ok());
}
