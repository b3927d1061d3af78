//! What to do with an event given what the CRM already shows.

use crate::mapping::{CrmShipmentState, CrmStatusWrite};
use time::OffsetDateTime;

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

/// Decides against the newer of two clocks: the CRM's `updated_at`, and `newest_seen`, the
/// newest event time this service knows the CRM to reflect. The CRM's time stays at the first of
/// several events with the same status (`IN_TRANSIT`@10:00 written, `IN_TRANSIT`@12:00
/// unchanged), so an `AT_PICKUP_POINT`@11:00 that follows must be judged against 12:00.
pub fn decide(
    write: &CrmStatusWrite,
    current: Option<&CrmShipmentState>,
    newest_seen: Option<OffsetDateTime>,
) -> WriteDecision {
    if newest_seen.is_some_and(|seen| seen > write.timestamp) {
        return WriteDecision::Stale;
    }
    let Some(current) = current else {
        return WriteDecision::Write;
    };
    if current.updated_at > write.timestamp {
        return WriteDecision::Stale;
    }
    if current.status == write.crm_status {
        return WriteDecision::Unchanged;
    }
    if current.updated_at == write.timestamp || newest_seen == Some(write.timestamp) {
        return WriteDecision::Stale;
    }
    WriteDecision::Write
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ClientId, EventId, ShipmentId};
    use time::macros::datetime;

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
            assert_eq!(decide(&w, s.as_ref(), None), expected, "{w:?} over {s:?}");
        }
    }

    #[test]
    fn the_newest_event_seen_wins_over_the_crms_older_timestamp() {
        let (t10, t11, t12) = (
            datetime!(2026-11-01 10:00 UTC),
            datetime!(2026-11-01 11:00 UTC),
            datetime!(2026-11-01 12:00 UTC),
        );
        let crm = state("in_transit", t10);
        use WriteDecision::*;
        assert_eq!(decide(&write("pickup", t11), Some(&crm), Some(t12)), Stale);
        assert_eq!(decide(&write("pickup", t11), Some(&crm), None), Write);
        assert_eq!(decide(&write("pickup", t12), Some(&crm), Some(t12)), Stale);
        assert_eq!(
            decide(&write("in_transit", t12), Some(&crm), Some(t12)),
            Unchanged
        );
        assert_eq!(
            decide(
                &write("delivered", t12 + time::Duration::minutes(1)),
                Some(&crm),
                Some(t12)
            ),
            Write
        );
        assert_eq!(decide(&write("pickup", t11), None, Some(t12)), Stale);
    }
}
