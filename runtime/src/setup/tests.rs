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
