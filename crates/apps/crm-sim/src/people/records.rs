//! Records of one kind under their CRM ids, in creation order, indexed by our external id.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub(crate) trait Row {
    fn external_id(&self) -> Option<&str>;
}

pub(crate) struct Records<T> {
    next: u64,
    format: fn(u64) -> String,
    /// External ids match case-insensitively.
    fold: bool,
    rows: BTreeMap<u64, T>,
    by_crm_id: HashMap<String, u64>,
    by_external: HashMap<String, BTreeSet<u64>>,
}

impl<T: Row> Records<T> {
    pub fn new(first: u64, format: fn(u64) -> String, fold: bool) -> Self {
        Self {
            next: first,
            format,
            fold,
            rows: BTreeMap::new(),
            by_crm_id: HashMap::new(),
            by_external: HashMap::new(),
        }
    }

    fn key(&self, ext: &str) -> String {
        if self.fold {
            ext.to_lowercase()
        } else {
            ext.to_owned()
        }
    }

    fn ext_key(&self, row: &T) -> Option<String> {
        row.external_id().filter(|e| !e.is_empty()).map(|e| self.key(e))
    }

    pub fn get(&self, crm_id: &str) -> Option<&T> {
        self.rows.get(self.by_crm_id.get(crm_id)?)
    }

    /// Every record with this external id, oldest first.
    pub fn find(&self, ext: &str) -> Vec<&T> {
        self.by_external
            .get(&self.key(ext))
            .into_iter()
            .flatten()
            .filter_map(|seq| self.rows.get(seq))
            .collect()
    }

    /// Every record, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.rows.values()
    }

    /// Creates a record under the next CRM id, which `make` receives.
    pub fn insert(&mut self, make: impl FnOnce(String) -> T) -> &T {
        let seq = self.next;
        self.next += 1;
        let crm_id = (self.format)(seq);
        self.by_crm_id.insert(crm_id.clone(), seq);
        let row = make(crm_id);
        if let Some(k) = self.ext_key(&row) {
            self.by_external.entry(k).or_default().insert(seq);
        }
        self.rows.entry(seq).or_insert(row)
    }

    /// Changes a record in place, keeping the external-id index right; `None` when there is
    /// no such record.
    pub fn update(&mut self, crm_id: &str, change: impl FnOnce(&mut T)) -> Option<&T> {
        let seq = *self.by_crm_id.get(crm_id)?;
        let mut row = self.rows.remove(&seq)?;
        let before = self.ext_key(&row);
        change(&mut row);
        let after = self.ext_key(&row);
        if before != after {
            if let Some(ids) = before.and_then(|k| self.by_external.get_mut(&k)) {
                ids.remove(&seq);
            }
            if let Some(k) = after {
                self.by_external.entry(k).or_default().insert(seq);
            }
        }
        Some(self.rows.entry(seq).or_insert(row))
    }

    /// Deletes a record; `false` when there was none.
    pub fn remove(&mut self, crm_id: &str) -> bool {
        let Some(seq) = self.by_crm_id.remove(crm_id) else {
            return false;
        };
        let Some(row) = self.rows.remove(&seq) else {
            return false;
        };
        if let Some(ids) = self.ext_key(&row).and_then(|k| self.by_external.get_mut(&k)) {
            ids.remove(&seq);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct R(Option<String>);

    impl Row for R {
        fn external_id(&self) -> Option<&str> {
            self.0.as_deref()
        }
    }

    #[test]
    fn records_are_found_by_external_id_as_it_changes() {
        let mut r: Records<R> = Records::new(7, |n| format!("x-{n}"), true);
        let a = r.insert(|_| R(Some("C-1".into()))).0.clone();
        assert_eq!(a.as_deref(), Some("C-1"));
        r.insert(|_| R(None));
        assert!(r.get("x-7").is_some() && r.get("x-8").is_some());
        assert_eq!(r.find("c-1").len(), 1, "folded");
        r.update("x-7", |row| row.0 = Some("c-2".into())).unwrap();
        assert!(r.find("C-1").is_empty());
        assert_eq!(r.find("C-2").len(), 1);
        assert!(r.update("x-99", |_| {}).is_none());
        assert!(r.remove("x-7"));
        assert!(r.find("c-2").is_empty() && r.get("x-7").is_none());
        assert_eq!(r.iter().count(), 1);
    }
}
