//! A custom schema, and the per-entity opt-out of `REPLICA IDENTITY FULL`.

use walflow::prelude::*;

#[event_source(table = "events", schema = "audit", replica_identity = "default")]
#[derive(Debug, serde::Deserialize)]
pub struct AuditEvent {
    pub id: i64,
}

#[event_source(table = "events", replica_identity = "full")]
#[derive(Debug, serde::Deserialize)]
pub struct PublicEvent {
    pub id: i64,
}

fn main() {
    let registry = walflow::Registry::from_inventory().unwrap();
    let audit = registry.entity("audit", "events").unwrap();
    assert_eq!(audit.rust_name, "AuditEvent");
    assert!(!audit.replica_identity_full);
    let public = registry.entity("public", "events").unwrap();
    assert!(public.replica_identity_full);
    assert_eq!(registry.tables().len(), 2);
    let full: Vec<_> = registry.replica_identity_full_tables();
    assert_eq!(full.len(), 1);
    assert_eq!(full[0].schema, "public");
}
