//! Newest event times concluded by a decided batch but perhaps not committed yet: a decided
//! batch waits for its ledger commit while the next one is decided, so the next one consults
//! these together with the ledger's.

use crate::event::ShipmentId;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use time::OffsetDateTime;

#[derive(Default)]
pub(super) struct PendingNewest(Mutex<HashMap<ShipmentId, OffsetDateTime>>);

impl PendingNewest {
    /// Raises each shipment's pending time (never lowers it).
    pub(super) fn remember(&self, concluded: &[(ShipmentId, OffsetDateTime)]) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (s, t) in concluded {
            let slot = pending.entry(s.clone()).or_insert(*t);
            *slot = (*slot).max(*t);
        }
    }

    /// Committed times need no in-memory copy; a newer pending one stays.
    pub(super) fn forget(&self, committed: &[(ShipmentId, OffsetDateTime)]) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (s, t) in committed {
            if pending.get(s).is_some_and(|p| p <= t) {
                pending.remove(s);
            }
        }
    }

    /// Raises `newest` (the ledger's times) with the pending ones of `shipments`.
    pub(super) fn raise(&self, shipments: &[ShipmentId], newest: &mut HashMap<ShipmentId, OffsetDateTime>) {
        let pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for s in shipments {
            if let Some(t) = pending.get(s) {
                let slot = newest.entry(s.clone()).or_insert(*t);
                *slot = (*slot).max(*t);
            }
        }
    }
}
