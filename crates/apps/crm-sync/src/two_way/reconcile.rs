//! `crm-sync reconcile`: compares our cards with the CRM's, one client or every card changed
//! since a time, through the vendor adapter (so within its rate limit), and reports the drift as
//! JSON. With `repair`, each drifted client gets an outbox row through the normal path: the
//! dispatcher then merges as for any change (the ownership rules decide, conflicts still end in
//! operator tasks), so a repair never bypasses the rules.

use backbone_sync::clients::merge::agree;
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
            Field::ALL
                .into_iter()
                .filter(|f| !agree(*f, card.card.get(*f), t.card.get(*f)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_sync::clients::flows::Dispatcher;
    use backbone_sync::clients::memory_crm::MemoryCrm;
    use backbone_sync::clients::records::OutgoingChange;
    use backbone_sync::clients::{CardChange, MemoryClients, Ownership, Source};
    use backbone_sync::ports::CrmError;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    struct World {
        store: Arc<MemoryClients>,
        crm: Arc<MemoryCrm>,
    }

    fn client(id: &str) -> ClientId {
        ClientId::parse(id).unwrap()
    }

    impl World {
        fn new() -> Self {
            Self {
                store: Arc::new(MemoryClients::new()),
                crm: Arc::new(MemoryCrm::new()),
            }
        }

        /// A card of ours, and (with `sync`) the same card in the CRM, as the dispatcher leaves it.
        async fn card(&self, id: &str, name: &str, sync: bool) {
            let change = CardChange {
                client_id: client(id),
                fields: BTreeMap::from([(Field::FirstName, Value::text(name))]),
                replace: false,
                must_exist: false,
                source: Source::Api,
                at: OffsetDateTime::now_utc(),
                request_id: format!("req-{id}"),
            };
            self.store.change_card(&change, None).await.unwrap();
            let changes = self.drain().await;
            if sync {
                let dispatcher = Dispatcher {
                    store: self.store.clone(),
                    crm: self.crm.clone(),
                    ownership: Ownership::default(),
                };
                for c in changes {
                    dispatcher.dispatch(&c).await.unwrap();
                }
            }
        }

        async fn drain(&self) -> Vec<OutgoingChange> {
            let rows = self.store.outbox_next(1000).await.unwrap();
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            self.store.outbox_delete(&ids).await.unwrap();
            rows.iter()
                .map(|r| serde_json::from_str(&r.payload).unwrap())
                .collect()
        }

        async fn reconcile(&self, target: Target, repair: bool) -> Report {
            run(self.store.as_ref(), self.crm.as_ref(), target, repair, "req-rec")
                .await
                .unwrap()
        }
    }

    fn since_ever() -> Target {
        Target::Since(OffsetDateTime::UNIX_EPOCH)
    }

    #[tokio::test]
    async fn cards_that_agree_are_not_drift_an_unknown_consent_included() {
        let w = World::new();
        w.card("c-1", "Ada", true).await;
        // The CRM holds `false` for the consents we never set: the same, for the sync.
        let theirs = w.crm.contact_of(&client("c-1")).unwrap();
        assert_eq!(theirs.card.get(Field::ConsentEmail), &Value::Flag(false));
        let report = w.reconcile(since_ever(), false).await;
        assert_eq!((report.checked, report.drifted), (1, 0));
        assert!(report.clients.is_empty() && report.errors.is_empty());
    }

    #[tokio::test]
    async fn drift_names_each_field_with_both_values_and_a_contact_the_crm_lacks() {
        let w = World::new();
        w.card("c-1", "Ada", true).await;
        w.card("c-2", "Bo", false).await;
        let crm_id = w.crm.contact_of(&client("c-1")).unwrap().crm_id;
        w.crm.edit(
            &crm_id,
            Field::FirstName,
            Value::text("Adele"),
            OffsetDateTime::now_utc(),
        );
        let report = w.reconcile(since_ever(), false).await;
        assert_eq!((report.checked, report.drifted, report.repaired), (2, 2, 0));
        let c1 = &report.clients[0];
        assert_eq!(c1.client_id, client("c-1"));
        assert_eq!(c1.crm_id.as_deref(), Some(crm_id.as_str()));
        assert_eq!(
            c1.fields,
            vec![FieldDrift {
                field: Field::FirstName,
                ours: Value::text("Ada"),
                theirs: Value::text("Adele"),
            }]
        );
        let c2 = &report.clients[1];
        assert!(c2.missing_in_crm && c2.crm_id.is_none() && !c2.repair_queued);
        // A report alone changes nothing.
        assert!(w.drain().await.is_empty());
    }

    #[tokio::test]
    async fn repair_queues_each_drifted_client_through_the_outbox_and_no_other() {
        let w = World::new();
        w.card("c-1", "Ada", true).await;
        w.card("c-2", "Bo", true).await;
        let crm_id = w.crm.contact_of(&client("c-2")).unwrap().crm_id;
        w.crm.edit(
            &crm_id,
            Field::FirstName,
            Value::text("Bob"),
            OffsetDateTime::now_utc(),
        );
        let report = w.reconcile(Target::Client(client("c-2")), true).await;
        assert_eq!((report.checked, report.drifted, report.repaired), (1, 1, 1));
        assert!(report.clients[0].repair_queued);
        let queued = w.drain().await;
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].client_id, client("c-2"));
        assert_eq!(queued[0].request_id, "req-rec");
        // One client named that we do not have is an error for the caller.
        let unknown = run(
            w.store.as_ref(),
            w.crm.as_ref(),
            Target::Client(client("c-9")),
            true,
            "r",
        )
        .await;
        assert!(unknown.is_err());
    }

    #[tokio::test]
    async fn a_client_the_crm_cannot_be_asked_about_is_reported_and_the_rest_go_on() {
        let w = World::new();
        w.card("c-1", "Ada", true).await;
        w.card("c-2", "Bo", false).await;
        w.crm.fail_next([CrmError::transient("CRM away")]);
        let report = w.reconcile(since_ever(), true).await;
        assert_eq!(report.checked, 2);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].0, client("c-1"));
        // c-2 was still compared and repaired.
        assert_eq!(report.repaired, 1);
        assert_eq!(report.clients[0].client_id, client("c-2"));
    }
}
