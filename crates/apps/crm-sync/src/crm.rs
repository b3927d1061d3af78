//! The CRM adapter this deployment talks to, chosen by `crm.vendor` at start-up.

use crate::config::{CrmConfig, Vendor};
use async_trait::async_trait;
use backbone_crm::{Bitrix24Crm, GenericRestCrm, KommoCrm, PauseState, SalesforceCrm};
use backbone_sync::clients::{
    Card, ClientCrm, ClientId, CrmContact, CrmTask, Field, Interaction, Task, WriteContext,
};
use backbone_sync::event::ShipmentId;
use backbone_sync::mapping::{CrmMapping, CrmStatusWrite, MappingConfig};
use backbone_sync::ports::{CrmError, CrmGateway, ItemResult, ShipmentStates};

pub enum CrmAdapter {
    Generic(GenericRestCrm),
    Bitrix24(Bitrix24Crm),
    Salesforce(SalesforceCrm),
    Kommo(KommoCrm),
}

impl CrmAdapter {
    /// Builds the configured adapter; every static check of its configuration and of the
    /// mapping against the vendor's naming rules happens here.
    pub fn build(cfg: &CrmConfig, mapping: CrmMapping) -> Result<Self, String> {
        Ok(match cfg.vendor {
            Vendor::Generic => Self::Generic(GenericRestCrm::new(&cfg.generic, mapping)?),
            Vendor::Bitrix24 => Self::Bitrix24(Bitrix24Crm::new(&cfg.bitrix24, mapping)?),
            Vendor::Salesforce => Self::Salesforce(SalesforceCrm::new(&cfg.salesforce, mapping)?),
            Vendor::Kommo => Self::Kommo(KommoCrm::new(&cfg.kommo, mapping)?),
        })
    }

    /// Checks the mapping against the vendor's own field list (start-up, when
    /// `crm.verify_mapping` is on): a field the vendor does not know stops the service.
    pub async fn verify_mapping(&self, mapping: &MappingConfig) -> Result<(), String> {
        match self {
            Self::Generic(_) => Ok(()),
            Self::Bitrix24(c) => c.verify_mapping().await,
            Self::Salesforce(c) => c.verify_mapping().await,
            Self::Kommo(c) => {
                c.verify_mapping(mapping.statuses.values().map(String::as_str))
                    .await
            }
        }
    }

    /// Set while the vendor has told us to stop calling (quota spent, account blocked).
    pub fn paused(&self) -> Option<PauseState> {
        match self {
            Self::Generic(_) => None,
            Self::Bitrix24(c) => c.paused(),
            Self::Salesforce(c) => c.paused(),
            Self::Kommo(c) => c.paused(),
        }
    }

    fn people(&self) -> &dyn ClientCrm {
        match self {
            Self::Generic(c) => c,
            Self::Bitrix24(c) => c,
            Self::Salesforce(c) => c,
            Self::Kommo(c) => c,
        }
    }

    fn gateway(&self) -> &dyn CrmGateway {
        match self {
            Self::Generic(c) => c,
            Self::Bitrix24(c) => c,
            Self::Salesforce(c) => c,
            Self::Kommo(c) => c,
        }
    }
}

#[async_trait]
impl CrmGateway for CrmAdapter {
    async fn read_states(&self, shipments: &[ShipmentId]) -> Result<ShipmentStates, CrmError> {
        self.gateway().read_states(shipments).await
    }

    async fn write_statuses(&self, writes: &[CrmStatusWrite]) -> Result<Vec<ItemResult>, CrmError> {
        self.gateway().write_statuses(writes).await
    }
}

#[async_trait]
impl ClientCrm for CrmAdapter {
    async fn read_contact(&self, client: &ClientId) -> Result<Option<CrmContact>, CrmError> {
        self.people().read_contact(client).await
    }

    async fn read_contact_by_crm_id(&self, crm_id: &str) -> Result<Option<CrmContact>, CrmError> {
        self.people().read_contact_by_crm_id(crm_id).await
    }

    async fn write_contact(
        &self,
        client: &ClientId,
        existing: Option<&str>,
        card: &Card,
        fields: &[Field],
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        self.people()
            .write_contact(client, existing, card, fields, ctx)
            .await
    }

    async fn write_task(
        &self,
        task: &Task,
        contact: &str,
        existing: Option<&str>,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        self.people().write_task(task, contact, existing, ctx).await
    }

    async fn read_task(&self, crm_id: &str) -> Result<Option<CrmTask>, CrmError> {
        self.people().read_task(crm_id).await
    }

    async fn add_interaction(
        &self,
        interaction: &Interaction,
        contact: &str,
        ctx: WriteContext<'_>,
    ) -> Result<String, CrmError> {
        self.people().add_interaction(interaction, contact, ctx).await
    }
}
