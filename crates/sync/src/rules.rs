//! What to do with an event given what the CRM already shows.

use crate::mapping::{CrmShipmentState, CrmStatusWrite};

/// The decision taken after reading the CRM's current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDecision {
    /// The CRM has no record, or an older one with another status: write.
    Write,
    /// The CRM already shows this status and it is not newer than the event: nothing to do.
    Unchanged,
    /// The CRM shows a newer change (or a different one at the same instant, which cannot be
    /// ordered): writing would move the shipment back in time.
    Stale,
}

pub fn decide(write: &CrmStatusWrite, current: Option<&CrmShipmentState>) -> WriteDecision {
    let Some(current) = current else {
        return WriteDecision::Write;
    };
    if current.updated_at > write.timestamp {
        return WriteDecision::Stale;
    }
    if current.status == write.crm_status {
        return WriteDecision::Unchanged;
    }
    if current.updated_at == write.timestamp {
        return WriteDecision::Stale;
    }
    WriteDecision::Write
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ClientId, EventId, ShipmentId};
    use time::macros::datetime;
    use time::OffsetDateTime;

    fn write(status: &str, at: OffsetDateTime) -> CrmStatusWrite {
        CrmStatusWrite {
            event_id: EventId::parse("e").unwrap(),
            shipment_id: ShipmentId::parse("s").unwrap(),
            client_id: ClientId::parse("c").unwrap(),
            crm_status: status.into(),
            timestamp: at,
            correlation_id: "e".into(),
        }
    }

    fn state(status: &str, at: OffsetDateTime) -> CrmShipmentState {
        CrmShipmentState {
            status: status.into(),
            updated_at: at,
        }
    }

    #[test]
    fn decision_table() {
        let t1 = datetime!(2026-11-01 10:00 UTC);
        let t2 = datetime!(2026-11-01 11:00 UTC);
        use WriteDecision::*;
        let cases = [
            (write("a", t1), None, Write),
            (write("b", t2), Some(state("a", t1)), Write),
            (write("a", t2), Some(state("a", t1)), Unchanged),
            (write("a", t1), Some(state("a", t1)), Unchanged),
            (write("a", t1), Some(state("b", t2)), Stale),
            (write("a", t1), Some(state("a", t2)), Stale),
            (write("b", t1), Some(state("a", t1)), Stale),
        ];
        for (w, s, expected) in cases {
            assert_eq!(decide(&w, s.as_ref()), expected, "{w:?} over {s:?}");
        }
    }
}
