//! Unit tests of `preflight`.

use super::*;

fn good() -> ServerInfo {
    ServerInfo {
        version: "15.4".into(),
        version_num: 150004,
        wal_level: "logical".into(),
        synchronous_commit: "on".into(),
        max_replication_slots: 10,
        used_replication_slots: 0,
        max_wal_senders: 10,
        active_wal_senders: 0,
        role: "app".into(),
        superuser: false,
        replication: true,
        database: "shop".into(),
        slot: None,
    }
}

fn slot() -> SlotInfo {
    SlotInfo {
        name: "walflow_slot".into(),
        slot_type: "logical".into(),
        plugin: Some("pgoutput".into()),
        database: Some("shop".into()),
        active: false,
        active_pid: None,
        temporary: false,
        wal_status: Some("reserved".into()),
    }
}

fn msg(info: ServerInfo) -> String {
    info.verify(&Config::default()).unwrap_err().to_string()
}

#[test]
fn good_server_passes() {
    good().verify(&Config::default()).unwrap();
    let mut with_slot = good();
    with_slot.slot = Some(slot());
    with_slot.used_replication_slots = 10;
    with_slot.verify(&Config::default()).unwrap();
    let mut superuser = good();
    superuser.replication = false;
    superuser.superuser = true;
    superuser.verify(&Config::default()).unwrap();
}

#[test]
fn a_lost_slot_names_the_way_out() {
    let mut info = good();
    info.slot = Some(SlotInfo {
        wal_status: Some("lost".into()),
        ..slot()
    });
    let err = info.verify(&Config::default()).unwrap_err();
    assert!(matches!(&err, PreflightError::SlotLost { slot } if slot == "walflow_slot"));
    let msg = err.to_string();
    assert!(
        msg.contains("SELECT pg_drop_replication_slot('walflow_slot')")
            && msg.contains("derived tables must be rebuilt"),
        "{msg}"
    );
    // Unreserved is a warning sign, not yet an error.
    let mut info = good();
    info.slot = Some(SlotInfo {
        wal_status: Some("unreserved".into()),
        ..slot()
    });
    info.verify(&Config::default()).unwrap();
}

#[test]
fn messages() {
    assert_eq!(
        msg(ServerInfo {
            version: "14.13".into(),
            version_num: 140013,
            ..good()
        }),
        "PostgreSQL 14.13 is too old; walflow needs PostgreSQL 15 or newer (upgrade the server)"
    );
    assert_eq!(
        msg(ServerInfo {
            wal_level: "replica".into(),
            ..good()
        }),
        "wal_level is 'replica'; walflow needs 'logical' (set wal_level = logical and restart PostgreSQL)"
    );
    assert_eq!(
        msg(ServerInfo {
            replication: false,
            ..good()
        }),
        "role \"app\" has no REPLICATION attribute; run ALTER ROLE app WITH REPLICATION"
    );
    assert_eq!(
        msg(ServerInfo {
            replication: false,
            role: "App User".into(),
            ..good()
        }),
        "role \"App User\" has no REPLICATION attribute; run ALTER ROLE \"App User\" WITH REPLICATION"
    );
    assert_eq!(
        msg(ServerInfo {
            active_wal_senders: 4,
            max_wal_senders: 4,
            ..good()
        }),
        "no free WAL sender: max_wal_senders = 4 and 4 are in use; raise max_wal_senders and restart PostgreSQL, or stop another replication client"
    );
    assert_eq!(
        msg(ServerInfo {
            used_replication_slots: 10,
            ..good()
        }),
        "no free replication slot: max_replication_slots = 10 and 10 are in use, none of them `walflow_slot`; drop an unused slot (SELECT pg_drop_replication_slot('name')) or raise max_replication_slots and restart PostgreSQL"
    );
    assert_eq!(
        msg(ServerInfo {
            slot: Some(SlotInfo {
                active: true,
                active_pid: Some(42),
                ..slot()
            }),
            ..good()
        }),
        "replication slot `walflow_slot` is in use by another connection (pid 42); stop that consumer, or give this one another `slot_name`"
    );
    assert_eq!(
        msg(ServerInfo {
            slot: Some(SlotInfo {
                slot_type: "physical".into(),
                plugin: None,
                database: None,
                ..slot()
            }),
            ..good()
        }),
        "replication slot `walflow_slot` exists but is a physical slot, not a logical one; drop it (SELECT pg_drop_replication_slot('walflow_slot')) or choose another `slot_name`"
    );
    assert!(
        msg(ServerInfo {
            slot: Some(SlotInfo {
                plugin: Some("test_decoding".into()),
                ..slot()
            }),
            ..good()
        })
        .contains("uses the output plugin `test_decoding`, not `pgoutput`")
    );
    assert!(
        msg(ServerInfo {
            slot: Some(SlotInfo {
                database: Some("other".into()),
                ..slot()
            }),
            ..good()
        })
        .contains("belongs to database `other`, not `shop`")
    );
}

#[test]
fn password_is_stripped() {
    assert_eq!(
        strip_password("bad secret here".into(), "secret"),
        "bad *** here"
    );
}
