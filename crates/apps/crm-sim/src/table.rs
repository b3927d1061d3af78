//! The records of one vendor dialect: flat field maps under the vendor's own record ids, indexed
//! by our external id (the shipment id), with every write counted and kept in a history.

use crate::Stats;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub(crate) struct Table {
    /// The field that holds our external id.
    ext_field: String,
    /// The field that holds the event id of the last write (for counting repeated writes).
    event_field: String,
    /// Salesforce matches external ids case-insensitively.
    case_insensitive: bool,
    next_id: u64,
    records: BTreeMap<u64, Map<String, Value>>,
    index: HashMap<String, BTreeSet<u64>>,
    history: HashMap<String, Vec<Map<String, Value>>>,
    seen_events: HashSet<(String, String)>,
    pub stats: Stats,
}

/// A field value as text: strings as they are, numbers and booleans printed, others `None`.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Table {
    pub fn new(first_id: u64, ext_field: &str, event_field: &str, case_insensitive: bool) -> Self {
        Self {
            ext_field: ext_field.to_owned(),
            event_field: event_field.to_owned(),
            case_insensitive,
            next_id: first_id,
            records: BTreeMap::new(),
            index: HashMap::new(),
            history: HashMap::new(),
            seen_events: HashSet::new(),
            stats: Stats::default(),
        }
    }

    fn key(&self, ext: &str) -> String {
        if self.case_insensitive {
            ext.to_lowercase()
        } else {
            ext.to_owned()
        }
    }

    fn ext_of(&self, record: &Map<String, Value>) -> Option<String> {
        record
            .get(&self.ext_field)
            .and_then(text)
            .filter(|s| !s.is_empty())
    }

    /// Ids of the records that carry this external id, ascending.
    pub fn find(&self, ext: &str) -> Vec<u64> {
        self.index
            .get(&self.key(ext))
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, id: u64) -> Option<&Map<String, Value>> {
        self.records.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Map<String, Value>)> {
        self.records.iter().map(|(id, r)| (*id, r))
    }

    /// The id the next created record will get.
    pub fn peek_id(&self) -> u64 {
        self.next_id
    }

    pub fn create(&mut self, fields: Map<String, Value>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(ext) = self.ext_of(&fields) {
            let key = self.key(&ext);
            self.index.entry(key).or_default().insert(id);
        }
        self.records.insert(id, fields);
        self.stats.creates += 1;
        self.account(id);
        id
    }

    /// Merges `fields` into record `id`; `false` when there is no such record.
    pub fn update(&mut self, id: u64, fields: Map<String, Value>) -> bool {
        let Some(record) = self.records.get(&id) else {
            return false;
        };
        let before = self.ext_of(record).map(|e| self.key(&e));
        let mut record = record.clone();
        record.extend(fields);
        let after = self.ext_of(&record).map(|e| self.key(&e));
        if before != after {
            if let Some(ids) = before.as_ref().and_then(|k| self.index.get_mut(k)) {
                ids.remove(&id);
            }
            if let Some(k) = after {
                self.index.entry(k).or_default().insert(id);
            }
        }
        self.records.insert(id, record);
        self.account(id);
        true
    }

    fn account(&mut self, id: u64) {
        let Some(record) = self.records.get(&id) else {
            return;
        };
        self.stats.total_writes += 1;
        let Some(ext) = self.ext_of(record) else {
            return;
        };
        let shipment = self.key(&ext);
        if let Some(event) = record.get(&self.event_field).and_then(text) {
            if !self.seen_events.insert((shipment.clone(), event)) {
                self.stats.duplicate_writes += 1;
            }
        }
        *self
            .stats
            .writes_per_shipment
            .entry(shipment.clone())
            .or_default() += 1;
        let snapshot = record.clone();
        self.history.entry(shipment).or_default().push(snapshot);
    }

    /// Snapshots of the record of this shipment after each write, oldest first.
    pub fn history(&self, ext: &str) -> Vec<Map<String, Value>> {
        self.history.get(&self.key(ext)).cloned().unwrap_or_default()
    }

    /// Every external id that has at least one record.
    pub fn shipments(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .index
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        out.sort();
        out
    }

    pub fn stats(&self) -> Stats {
        Stats {
            records: self.records.len() as u64,
            ..self.stats.clone()
        }
    }
}
