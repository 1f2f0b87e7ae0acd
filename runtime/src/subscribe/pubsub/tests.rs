//! Unit tests of `pubsub`.

use super::*;

#[test]
fn notifications_inline_small_transactions_and_refer_to_large_ones() {
    let small = Note::format(Lsn(300), Lsn(200), r#"{"end_lsn":"0/12C"}"#);
    assert_eq!(small, r#"300 200 {"end_lsn":"0/12C"}"#);
    assert_eq!(
        Note::parse(&small),
        Some(Note {
            end: Lsn(300),
            prev: Lsn(200),
            body: Some(r#"{"end_lsn":"0/12C"}"#)
        })
    );
    let large = Note::format(Lsn(300), Lsn(200), &"x".repeat(MAX_INLINE_PAYLOAD));
    assert_eq!(large, "300 200");
    assert_eq!(
        Note::parse(&large),
        Some(Note {
            end: Lsn(300),
            prev: Lsn(200),
            body: None
        })
    );
    assert_eq!(Note::parse("hello"), None);
    assert_eq!(Note::parse("1"), None);
}
