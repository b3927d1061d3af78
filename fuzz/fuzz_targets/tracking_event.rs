//! `TrackingEvent::from_json` and `TrackingEvent::salvage_ids` on arbitrary bytes.
//!
//! - Neither panics.
//! - A refusal's reason is short (under 300 bytes) and never echoes the input: when the input is
//!   UTF-8 with a run of 40 or more of one alphanumeric character, the reason has no such run.
//! - An accepted event survives `to_wire`, serde_json and `from_json` unchanged, and its ids are
//!   what `salvage_ids` finds in the same bytes.
#![no_main]

use backbone_sync::event::TrackingEvent;
use libfuzzer_sys::fuzz_target;

const MAX_REASON_BYTES: usize = 300;
const RUN: usize = 40;

fuzz_target!(|data: &[u8]| {
    let salvaged = TrackingEvent::salvage_ids(data);
    match TrackingEvent::from_json(data) {
        Ok(event) => {
            let wire = serde_json::to_vec(&event.to_wire()).expect("an accepted event serialises");
            let again = TrackingEvent::from_json(&wire).unwrap_or_else(|e| {
                panic!(
                    "the re-serialised event is refused: {e}: {}",
                    String::from_utf8_lossy(&wire)
                )
            });
            assert_eq!(
                again, event,
                "the event changed on a round trip through its wire form"
            );
            assert_eq!(
                salvaged,
                (Some(event.event_id.clone()), Some(event.shipment_id.clone())),
                "salvage_ids disagrees with from_json"
            );
        }
        Err(e) => {
            let reason = e.to_string();
            assert!(
                reason.len() < MAX_REASON_BYTES,
                "a {}-byte reason: {reason}",
                reason.len()
            );
            if let Ok(text) = std::str::from_utf8(data) {
                for c in long_runs(text) {
                    let run: String = std::iter::repeat_n(c, RUN).collect();
                    assert!(!reason.contains(&run), "the reason echoes the input: {reason}");
                }
            }
        }
    }
});

/// The alphanumeric characters that occur `RUN` or more times in a row in `text`.
fn long_runs(text: &str) -> Vec<char> {
    let mut found = Vec::new();
    let mut current = None;
    let mut len = 0;
    for c in text.chars() {
        if Some(c) == current {
            len += 1;
        } else {
            current = Some(c);
            len = 1;
        }
        if len == RUN && c.is_alphanumeric() && !found.contains(&c) {
            found.push(c);
        }
    }
    found
}
