//! Maps keyed by numbers fleet makes itself (call ids, connection and process numbers): no
//! outside party chooses these keys, so they need no DoS-resistant hash, and `SipHash` was a
//! measurable part of the router's time per request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hash map keyed by fleet's own numbers.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Multiply-and-rotate over the key's words (as rustc's `FxHasher`): sequential ids spread over
/// the table's high bits, where hashbrown looks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }

    fn finish(&self) -> u64 {
        // Sequential keys differ in their low bits; fold them into the high bits too.
        self.0 ^ (self.0 >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_high_bits() {
        let tops: std::collections::HashSet<u64> = (1..=128u64)
            .map(|id| {
                let mut h = IdHasher::default();
                h.write_u64(id);
                h.finish() >> 57
            })
            .collect();
        // hashbrown's control byte is the top 7 bits: 128 ids should spread over many of its
        // values (random keys reach about 81; a hash that kept only the low bits, 1).
        assert!(tops.len() > 48, "{} distinct of 128", tops.len());
    }

    #[test]
    fn an_id_map_works_as_a_map() {
        let mut map: IdMap<u64, u32> = IdMap::default();
        for id in 0..10_000 {
            map.insert(id, id as u32);
        }
        assert!((0..10_000).all(|id| map.get(&id) == Some(&(id as u32))));
        assert_eq!(map.len(), 10_000);
    }
}
