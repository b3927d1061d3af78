//! CRM adapters of [`backbone_sync::ports::CrmGateway`]. One module per CRM dialect; each owns its
//! wire DTOs and converts them to domain types at the edge (`client` speaks HTTP and auth,
//! `transformers` maps between wire shapes and domain types).
//!
//! | module | writes by external id | batching | client-side limit |
//! |---|---|---|---|
//! | [`generic`] | `PUT` per shipment | `:batchWrite` | none |
//! | [`bitrix24`] | `originatorId` + `originId` | `batch` (50 commands) | leaky bucket 50, 2/s |
//! | [`salesforce`] | upsert by External ID field | sObject Collections (200) | configurable, `Sforce-Limit-Info` |
//! | [`kommo`] | custom field + `request_id` | `POST`/`PATCH /api/v4/leads` (50) | 7 requests/s |

pub mod bitrix24;
pub(crate) mod cards;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod generic;
pub mod kommo;
pub use kommo::{KommoConfig, KommoCrm};
pub mod limiter;
pub mod pause;
pub mod salesforce;
pub use salesforce::{SalesforceConfig, SalesforceCrm};
pub mod signing;
pub mod token;
pub mod webhooks;
pub(crate) mod wire;

pub use bitrix24::{Bitrix24Config, Bitrix24Crm};
pub use generic::{GenericCrmConfig, GenericRestCrm};

pub use pause::PauseState;

use backbone_sync::mapping::FieldNames;

/// The five mapped field names with their roles, for validation messages.
pub(crate) fn mapped_fields(f: &FieldNames) -> [(&'static str, &str); 5] {
    [
        ("client_id", f.client_id.as_str()),
        ("shipment_id", f.shipment_id.as_str()),
        ("status", f.status.as_str()),
        ("timestamp", f.timestamp.as_str()),
        ("event_id", f.event_id.as_str()),
    ]
}

/// How long "looked up and not found" stands: a write right after the read that found nothing
/// creates without looking again (one lookup per new shipment, not two). Older, it is looked up
/// again before any create, since a create elsewhere (another instance that held the
/// partition) may have made the record since.
pub(crate) const ABSENT_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Shipment-id keyed cache of vendor record ids, bounded so a long-running process does not grow
/// without limit; on overflow it starts over (a miss costs one lookup by external id).
pub(crate) struct RecordIds<V> {
    map: std::sync::Mutex<std::collections::HashMap<backbone_sync::event::ShipmentId, V>>,
    capacity: usize,
}

impl<V: Clone> RecordIds<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
            capacity,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<backbone_sync::event::ShipmentId, V>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, id: &backbone_sync::event::ShipmentId) -> Option<V> {
        self.lock().get(id).cloned()
    }

    pub fn insert(&self, id: backbone_sync::event::ShipmentId, v: V) {
        let mut m = self.lock();
        if m.len() >= self.capacity {
            m.clear();
        }
        m.insert(id, v);
    }

    pub fn forget(&self, id: &backbone_sync::event::ShipmentId) {
        self.lock().remove(id);
    }
}
