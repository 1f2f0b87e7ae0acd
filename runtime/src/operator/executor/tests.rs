//! Unit tests of `executor`.

use crate::queue::handover::RunSnapshot;

#[test]
fn a_run_saw_what_committed_before_its_snapshot() {
    let s = RunSnapshot::parse("4294967395:4294967400:4294967397,4294967398").unwrap();
    // 4294967395 is transaction 99 of epoch 1.
    assert!(s.saw(99));
    assert!(s.saw(100));
    assert!(!s.saw(101), "running at the snapshot");
    assert!(!s.saw(102), "running at the snapshot");
    assert!(s.saw(103));
    assert!(!s.saw(104), "not before xmax");
    assert!(!s.saw(200));
    assert!(!s.saw(0), "unknown");
    assert!(RunSnapshot::parse("5:9:").unwrap().saw(8));
    assert!(RunSnapshot::parse("nonsense").is_none());
}

#[test]
fn transaction_ids_compare_across_wraparound() {
    assert!(crate::dispatch::xid_precedes(u32::MAX - 5, 10));
    assert!(!crate::dispatch::xid_precedes(10, u32::MAX - 5));
    assert!(crate::dispatch::xid_precedes(3, 4));
}
