//! CRM adapters of [`backbone_sync::ports::CrmGateway`]. One module per CRM dialect; each owns its
//! wire DTOs and converts them to domain types at the edge.

pub mod generic;
pub mod signing;

pub use generic::{GenericCrmConfig, GenericRestCrm};
