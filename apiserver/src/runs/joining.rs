//! Runs this server let into the line that its cache does not show yet. The line's caps are
//! checked against the cache, and the cache learns of a new CodeRun from its watch, which a
//! busy cluster delays by seconds: counted only from the cache, runs created in that gap
//! would not count and a burst would go past the cap. So a place is held from the check
//! until the cache has the run (or its creation failed, or [`UNSEEN_FOR`] passed).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::run_cache::Load;

/// How long a created run the cache has not shown counts at most: past it the watch is
/// taken to have delivered it and the run to be gone already (deleted before it was seen).
pub const UNSEEN_FOR: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct Joining(Mutex<Line>);

/// One run that holds a place without the cache showing it.
struct Place {
    tenant: String,
    bytes: u64,
}

#[derive(Default)]
struct Line {
    /// Runs being created, by a request that holds a [`Ticket`].
    creating: Vec<(u64, Place)>,
    /// Runs created, by name, and when.
    unseen: HashMap<String, (Place, Instant)>,
    next: u64,
}

impl Line {
    /// What these runs add to the cache's `load` for `tenant`. `known` says whether the
    /// cache has a run by that name: those it has are its to count, and leave.
    fn add_to(&mut self, load: &mut Load, tenant: &str, known: impl Fn(&str) -> bool) {
        let now = Instant::now();
        self.unseen
            .retain(|name, (_, at)| now.duration_since(*at) < UNSEEN_FOR && !known(name.as_str()));
        let places = self.creating.iter().map(|(_, p)| p);
        for place in places.chain(self.unseen.values().map(|(p, _)| p)) {
            load.waiting_total += 1;
            if place.tenant == tenant {
                load.waiting += 1;
                load.live_spec_bytes += place.bytes;
            }
        }
    }

    /// The place `id` of a run being created, taken out of the line.
    fn take(&mut self, id: u64) -> Option<Place> {
        let at = self.creating.iter().position(|(i, _)| *i == id)?;
        Some(self.creating.swap_remove(at).1)
    }
}

impl Joining {
    /// Adds what this server has let in and the cache does not show to the cache's load of
    /// `tenant` (`load`); if `admit` accepts the sum, takes a place for a new run of
    /// `bytes`. The cache is read under the line's lock, which its watch takes to report
    /// a run: a run arriving meanwhile is counted by one of them, never by neither.
    pub fn check<E>(
        self: &Arc<Self>,
        tenant: &str,
        bytes: u64,
        load: impl FnOnce() -> Load,
        known: impl Fn(&str) -> bool,
        admit: impl FnOnce(Load) -> Result<(), E>,
    ) -> Result<Ticket, E> {
        let mut line = self.0.lock().expect("the line");
        let mut load = load();
        line.add_to(&mut load, tenant, known);
        admit(load)?;
        let id = line.next;
        line.next += 1;
        let place = Place {
            tenant: tenant.to_string(),
            bytes,
        };
        line.creating.push((id, place));
        Ok(Ticket {
            joining: self.clone(),
            id,
        })
    }

    /// The cache received the run `name`: it counts it from now on.
    pub fn arrived(&self, name: &str) {
        self.0.lock().expect("the line").unseen.remove(name);
    }
}

/// A place in the line, held from the check until the run is created; dropped without
/// [`Ticket::created`] (the creation failed) it is given up.
pub struct Ticket {
    joining: Arc<Joining>,
    id: u64,
}

impl Ticket {
    /// The run was created under `name`: unless the cache already shows it (`in_cache`),
    /// its place is held until it does.
    pub fn created(self, name: &str, in_cache: impl Fn(&str) -> bool) {
        let mut line = self.joining.0.lock().expect("the line");
        // Looked up under the lock: the cache's watch reports a run after the cache has
        // it, and under the same lock, so a run is never counted by both nor by neither.
        if let Some(place) = line.take(self.id)
            && !in_cache(name)
        {
            line.unseen
                .insert(name.to_string(), (place, Instant::now()));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.joining.0.lock().expect("the line").take(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashSet;

    use super::*;

    fn load_of(joining: &Arc<Joining>, tenant: &str, cache: &RefCell<HashSet<String>>) -> Load {
        let mut seen = None;
        let known = |n: &str| cache.borrow().contains(n);
        let _ = joining.check(tenant, 0, Load::default, known, |load| {
            seen = Some(load);
            Err::<(), ()>(())
        });
        seen.unwrap()
    }

    /// A run of one byte let in for tenant `a` and created as `name`.
    fn created(joining: &Arc<Joining>, cache: &RefCell<HashSet<String>>, name: &str) {
        let known = |n: &str| cache.borrow().contains(n);
        let t = joining
            .check("a", 1, Load::default, known, |_| Ok::<(), ()>(()))
            .unwrap();
        t.created(name, known);
    }

    #[tokio::test(start_paused = true)]
    async fn a_created_run_holds_its_place_until_the_cache_shows_it_and_a_failed_one_gives_it_up() {
        let joining = Arc::new(Joining::default());
        let cache = RefCell::new(HashSet::new());
        let known = |n: &str| cache.borrow().contains(n);
        let ok = |_| Ok::<(), ()>(());
        let a = joining.check("a", 100, Load::default, known, ok).unwrap();
        let b = joining.check("b", 7, Load::default, known, ok).unwrap();
        let mine = load_of(&joining, "a", &cache);
        assert_eq!(
            (mine.waiting, mine.waiting_total, mine.live_spec_bytes),
            (1, 2, 100)
        );
        // b's creation failed: its place is free at once.
        drop(b);
        assert_eq!(load_of(&joining, "b", &cache).waiting_total, 1);
        // a was created, and the cache is slow: it still counts, for seconds.
        a.created("run-a", known);
        tokio::time::advance(Duration::from_secs(30)).await;
        let mine = load_of(&joining, "a", &cache);
        assert_eq!(
            (mine.waiting, mine.waiting_total, mine.live_spec_bytes),
            (1, 1, 100)
        );
        // The cache shows it: the cache counts it, and this line no more.
        cache.borrow_mut().insert("run-a".to_string());
        assert_eq!(load_of(&joining, "a", &cache), Load::default());
    }

    #[test]
    fn a_run_the_cache_received_and_lost_again_before_anyone_looked_does_not_count() {
        let joining = Arc::new(Joining::default());
        let cache = RefCell::new(HashSet::new());
        created(&joining, &cache, "run-a");
        // Created and deleted at once: the cache's watch delivered it, then its deletion.
        joining.arrived("run-a");
        assert_eq!(load_of(&joining, "a", &cache), Load::default());
    }

    #[test]
    fn a_run_the_cache_has_before_its_creation_is_answered_holds_no_place() {
        let joining = Arc::new(Joining::default());
        let cache = RefCell::new(HashSet::from(["run-a".to_string()]));
        created(&joining, &cache, "run-a");
        cache.borrow_mut().clear();
        assert_eq!(load_of(&joining, "a", &cache), Load::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_the_cache_never_shows_stops_counting_after_a_while() {
        let joining = Arc::new(Joining::default());
        let cache = RefCell::new(HashSet::new());
        created(&joining, &cache, "run-gone");
        tokio::time::advance(UNSEEN_FOR - Duration::from_secs(1)).await;
        assert_eq!(load_of(&joining, "a", &cache).waiting, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(load_of(&joining, "a", &cache), Load::default());
    }

    #[test]
    fn a_refused_run_takes_no_place() {
        let joining = Arc::new(Joining::default());
        let full = Load {
            waiting_total: 3,
            ..Load::default()
        };
        let refused = joining.check(
            "a",
            1,
            || full,
            |_| false,
            |load| {
                if load.waiting_total >= 3 {
                    Err(load)
                } else {
                    Ok(())
                }
            },
        );
        assert!(refused.is_err());
        let cache = RefCell::new(HashSet::new());
        assert_eq!(load_of(&joining, "a", &cache), Load::default());
    }
}
