//! `crm-sync reconcile`: compares our cards with the CRM's, one client or every card changed
//! since a time, through the vendor adapter (so within its rate limit), and reports the drift as
//! JSON. With `repair`, each drifted client gets an outbox row through the normal path: the
//! dispatcher then merges as for any change (the ownership rules decide, conflicts still end in
//! operator tasks), so a repair never bypasses the rules.

use backbone_sync::clients::{ClientCrm, ClientId, ClientStore, Field, StoredCard, Value};
use serde::Serialize;
use time::OffsetDateTime;

/// Which cards to compare.
#[derive(Debug, Clone)]
pub enum Target {
    Client(ClientId),
    Since(OffsetDateTime),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDrift {
    pub field: Field,
    pub ours: Value,
    pub theirs: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub client_id: ClientId,
    pub crm_id: Option<String>,
    /// The CRM has no contact for this client.
    pub missing_in_crm: bool,
    pub fields: Vec<FieldDrift>,
    pub repair_queued: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checked: usize,
    pub drifted: usize,
    pub repaired: usize,
    /// Clients the CRM could not be asked about (with the reason), left for another run.
    pub errors: Vec<(ClientId, String)>,
    pub clients: Vec<Drift>,
}

async fn compare(crm: &dyn ClientCrm, card: &StoredCard) -> Result<Option<Drift>, String> {
    let theirs = crm
        .read_contact(&card.client_id)
        .await
        .map_err(|e| e.to_string())?;
    let (crm_id, missing, fields) = match &theirs {
        None => (None, true, Vec::new()),
        Some(t) => (
            Some(t.crm_id.clone()),
            false,
            card.card
                .differs(&t.card)
                .into_iter()
                .map(|f| FieldDrift {
                    field: f,
                    ours: card.card.get(f).clone(),
                    theirs: t.card.get(f).clone(),
                })
                .collect(),
        ),
    };
    if !missing && fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(Drift {
        client_id: card.client_id.clone(),
        crm_id,
        missing_in_crm: missing,
        fields,
        repair_queued: false,
    }))
}

pub async fn run(
    store: &dyn ClientStore,
    crm: &dyn ClientCrm,
    target: Target,
    repair: bool,
    request_id: &str,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut cards = Vec::new();
    match target {
        Target::Client(id) => {
            let card = store
                .card(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no client {id} in our copy"))?;
            cards.push(card);
        }
        Target::Since(since) => {
            let mut after: Option<ClientId> = None;
            loop {
                let page = store.cards_since(since, after.as_ref(), 500).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.client_id.clone());
                let full = page.len() == 500;
                cards.extend(page);
                if !full {
                    break;
                }
            }
        }
    }
    for card in &cards {
        report.checked += 1;
        match compare(crm, card).await {
            Ok(None) => {}
            Ok(Some(mut drift)) => {
                report.drifted += 1;
                if repair {
                    store.requeue(&drift.client_id, request_id).await?;
                    drift.repair_queued = true;
                    report.repaired += 1;
                }
                report.clients.push(drift);
            }
            Err(e) => report.errors.push((card.client_id.clone(), e)),
        }
    }
    Ok(report)
}

/// `crm-sync reconcile` with the service's configuration: its database and its CRM adapter.
pub async fn from_config(cfg: &crate::Config, target: Target, repair: bool) -> anyhow::Result<Report> {
    use secrecy::ExposeSecret;
    let mapping = cfg
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let store = backbone_postgres::PgClients::connect(cfg.postgres.url.expose_secret(), 2).await?;
    let crm = crate::crm::CrmAdapter::build(&cfg.crm, mapping).map_err(anyhow::Error::msg)?;
    let request_id = format!("reconcile-{}", OffsetDateTime::now_utc().unix_timestamp());
    run(&store, &crm, target, repair, &request_id).await
}
