//! The `sticky = "source"` table: client address → backend index, bounded.
//!
//! Two generations of maps approximate LRU at O(1) cost: lookups hit the
//! young map, then the old one (promoting the entry); when the young map
//! reaches half the capacity it becomes the old one and the previous old
//! map is forgotten. An address seen within the last `capacity / 2`
//! insertions is always remembered.

use std::{collections::HashMap, net::IpAddr};

/// Bounded source-address stick table.
#[derive(Debug)]
pub struct StickTable {
    young: HashMap<IpAddr, usize>,
    old: HashMap<IpAddr, usize>,
    half: usize,
}

impl StickTable {
    /// A table remembering about `capacity` addresses.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    /// The backend this address was given, if remembered.
    pub fn get(&mut self, ip: IpAddr) -> Option<usize> {
        if let Some(&i) = self.young.get(&ip) {
            return Some(i);
        }
        let i = self.old.remove(&ip)?;
        self.insert(ip, i);
        Some(i)
    }

    /// Remembers (or replaces) the backend of an address.
    pub fn insert(&mut self, ip: IpAddr, backend: usize) {
        if self.young.len() >= self.half && !self.young.contains_key(&ip) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(ip, backend);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_addresses_and_forgets_old_ones_within_capacity() {
        let mut t = StickTable::new(4);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        t.insert(ip(1), 7);
        t.insert(ip(2), 8);
        assert_eq!(t.get(ip(1)), Some(7));
        for n in 3..10 {
            t.insert(ip(n), usize::from(n));
        }
        assert_eq!(
            t.get(ip(1)),
            None,
            "an address unseen for a while is forgotten"
        );
        assert_eq!(t.get(ip(9)), Some(9));
        assert!(t.young.len() + t.old.len() <= 4);
    }
}
