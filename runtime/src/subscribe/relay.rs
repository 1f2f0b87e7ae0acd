//! The relay: with `PubSub::Postgres`, what the listener's consumer feeds on
//! the node holding the slot instead of its hub. It gathers each
//! transaction's changes, and on its commit hands the whole transaction to
//! the node's own hub and to the broadcaster, in commit order.

use std::sync::{Arc, Mutex};

use super::{Feed, Subscriptions, Transaction};
use crate::lsn::Lsn;
use crate::raw::RawEvent;

/// Gathers transactions for the local hub and the broadcaster.
pub(crate) struct Relay {
    pending: Mutex<Vec<Arc<RawEvent>>>,
    local: Subscriptions,
    out: tokio::sync::mpsc::UnboundedSender<Transaction>,
}

impl Relay {
    /// Publishes each committed transaction to `local` and sends it to
    /// `out` (the node's broadcaster).
    pub(crate) fn new(
        local: Subscriptions,
        out: tokio::sync::mpsc::UnboundedSender<Transaction>,
    ) -> Relay {
        Relay {
            pending: Mutex::new(Vec::new()),
            local,
            out,
        }
    }
}

impl Feed for Relay {
    fn change(&self, raw: Arc<RawEvent>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = pending.last()
            && (last.commit_lsn != raw.commit_lsn || last.seq >= raw.seq)
        {
            // The transaction is delivered again from its start (the
            // listener restarted in its middle): drop the partial copy.
            pending.clear();
        }
        pending.push(raw);
    }

    fn commit(&self, end_lsn: Lsn) {
        let changes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let tx = Transaction { end_lsn, changes };
        tx.publish_to(&self.local);
        if self.out.send(tx).is_err() {
            tracing::error!(%end_lsn, "pubsub: the broadcaster has stopped; transaction not broadcast");
        }
    }
}
