//! Slots for open event streams: each tenant may hold a bounded number at once
//! (`MAX_STREAMS_PER_TENANT`), so streams cannot tie up the server for others.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct StreamSlots {
    per_tenant: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// A held slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<StreamSlots>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("lock");
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl StreamSlots {
    pub fn new(per_tenant: usize) -> Self {
        StreamSlots {
            per_tenant,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for the tenant, or `None` when it holds all it may.
    pub fn take(self: &Arc<Self>, tenant: &str) -> Option<Slot> {
        let mut open = self.open.lock().expect("lock");
        let n = open.entry(tenant.to_string()).or_default();
        if *n >= self.per_tenant {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    pub fn open(&self, tenant: &str) -> usize {
        self.open
            .lock()
            .expect("lock")
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_holds_at_most_its_slots_and_a_dropped_one_is_free_again() {
        let slots = Arc::new(StreamSlots::new(2));
        let a = slots.take("acme").unwrap();
        let _b = slots.take("acme").unwrap();
        assert!(slots.take("acme").is_none());
        assert!(slots.take("beta").is_some());
        drop(a);
        assert!(slots.take("acme").is_some());
    }
}
