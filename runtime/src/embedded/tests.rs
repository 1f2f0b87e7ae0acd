//! Unit tests of `embedded`.

use super::*;

#[test]
fn conf_values_are_quoted() {
    assert_eq!(conf_value("logical"), "'logical'");
    assert_eq!(conf_value("it's"), "'it''s'");
    assert_eq!(conf_value(r"a\b"), r"'a\\b'");
}

#[test]
fn finds_the_current_process_alive() {
    assert!(process_alive(std::process::id()));
    assert!(!process_alive(u32::MAX));
}

#[test]
fn looks_up_root() {
    assert_eq!(lookup_user("root"), Some((0, 0)));
    assert_eq!(lookup_user("no-such-user-walflow"), None);
}
