//! Which proxy-named statements exist on one backend, so a session can tell whether it
//! must prepare one there first. Bounded: past the limit the least recently used are
//! closed on the server (a session that needs one again simply re-prepares it), so a
//! client that prepares without end cannot grow a backend's memory without end.

/// Statement names are looked up several times per statement on the data path, so with
/// foldhash (randomly seeded, so still hard to flood) rather than SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct PreparedCache {
    /// Statement name → when it was last used (a per-connection clock).
    used: HashMap<Box<str>, u64>,
    clock: u64,
}

impl PreparedCache {
    /// Whether `name` exists here; counts as a use.
    pub fn contains(&mut self, name: &str) -> bool {
        self.clock += 1;
        match self.used.get_mut(name) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, name: Box<str>) {
        self.clock += 1;
        self.used.insert(name, self.clock);
    }

    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// The server dropped every statement (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Forget the least recently used statements beyond `limit` and return their names,
    /// for the caller to close on the server.
    pub fn evict_over(&mut self, limit: usize) -> Vec<Box<str>> {
        if self.used.len() <= limit {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, Box<str>)> =
            self.used.iter().map(|(n, t)| (*t, n.clone())).collect();
        by_age.sort_unstable();
        let excess = self.used.len() - limit;
        let victims: Vec<Box<str>> = by_age.into_iter().take(excess).map(|(_, n)| n).collect();
        for v in &victims {
            self.used.remove(v);
        }
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn least_recently_used_go_first() {
        let mut c = PreparedCache::default();
        for n in ["a", "b", "c", "d"] {
            c.insert(n.into());
        }
        assert!(c.contains("a")); // a is now the most recent
        assert!(!c.contains("zz"));
        let gone = c.evict_over(2);
        assert_eq!(gone, vec![Box::<str>::from("b"), Box::<str>::from("c")]);
        assert!(c.contains("a") && c.contains("d") && c.len() == 2);
        assert!(c.evict_over(2).is_empty());
    }

    proptest! {
        /// Whatever the sequence of uses, eviction leaves at most `limit` entries and
        /// never evicts the statement used last.
        #[test]
        fn bounded_and_keeps_the_latest(ops in proptest::collection::vec(0u8..20, 1..200), limit in 1usize..8) {
            let mut c = PreparedCache::default();
            let mut last = None;
            for op in ops {
                let name = format!("s{op}");
                if !c.contains(&name) {
                    c.insert(name.clone().into());
                }
                last = Some(name);
                c.evict_over(limit);
                prop_assert!(c.len() <= limit);
            }
            let last = last.unwrap();
            prop_assert!(c.contains(&last));
        }
    }
}
