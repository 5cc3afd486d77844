//! Backend choice algorithms of a pool: smooth weighted round robin, least
//! connections, and Maglev consistent hashing. Pure functions and small
//! structs over backend indices; the pool module owns health and connection
//! counts and passes them in.

/// Smooth weighted round robin (the algorithm nginx uses): each pick adds every eligible backend's weight to its current value, picks the largest current value (ties: lowest index), and subtracts the total eligible weight from the winner. One instance per worker thread.
#[derive(Debug, Clone, Default)]
pub struct SmoothRoundRobin {
    current: Vec<i64>,
}

impl SmoothRoundRobin {
    /// Creates the state for `backends` backends, every current value zero.
    pub fn new(backends: usize) -> Self {
        Self {
            current: vec![0; backends],
        }
    }

    /// `weights[i]` is backend i's weight (0 = never picked); `eligible(i)` false excludes it (down, or already tried). None when no eligible backend has weight > 0.
    pub fn pick(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() < weights.len() {
            self.current.resize(weights.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, (&w, cur)) in weights.iter().zip(self.current.iter_mut()).enumerate() {
            if w == 0 || !eligible(i) {
                continue;
            }
            *cur += i64::from(w);
            total += i64::from(w);
            // Strictly greater, so ties keep the lowest index.
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((i, *cur));
            }
        }
        let (i, _) = best?;
        if let Some(cur) = self.current.get_mut(i) {
            *cur -= total;
        }
        Some(i)
    }
}

/// Least connections: the eligible backend with weight > 0 and the lowest active/weight (compare as active_a * weight_b < active_b * weight_a using u128 to avoid overflow); ties go to the first such backend at or after `start` going round (so callers rotate `start` to spread ties).
pub fn least_conn(
    weights: &[u32],
    active: impl Fn(usize) -> u64,
    eligible: impl Fn(usize) -> bool,
    start: usize,
) -> Option<usize> {
    let n = weights.len();
    let start = start.checked_rem(n)?; // None when there are no backends
    let mut best: Option<(usize, u128, u128)> = None; // (index, active, weight)
    for k in 0..n {
        let i = (start + k) % n;
        let w = weights.get(i).copied().unwrap_or(0);
        if w == 0 || !eligible(i) {
            continue;
        }
        let (a, w) = (u128::from(active(i)), u128::from(w));
        if best.is_none_or(|(_, ba, bw)| a * bw < ba * w) {
            best = Some((i, a, w));
        }
    }
    best.map(|(i, _, _)| i)
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016) over weighted backends.
#[derive(Debug, Clone, Default)]
pub struct Maglev {
    table: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;
const SEED_OFFSET: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SEED_SKIP: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Maglev {
    /// Default table size, a prime.
    pub const DEFAULT_SIZE: usize = 65537;

    /// Builds the table. `names[i]` is a stable identity of backend i (e.g. its "ip:port" bytes) used for its permutation; `weights[i]` its weight; only backends with `eligible(i)` and weight > 0 take part. `size` should be prime (callers validate); a non-prime or zero size still yields a usable table without panicking or hanging (skips are bumped to be coprime with it; size 0 gives a table whose lookups return None).
    ///
    /// Weighted: in fill round r (from 0) backend i places one entry if `filled_i * max_weight <= r * weight_i`, so a max-weight backend places one every round and the fill always ends after at most `size` rounds. When no backend takes part, lookups return None.
    pub fn build(
        names: &[&[u8]],
        weights: &[u32],
        eligible: impl Fn(usize) -> bool,
        size: usize,
    ) -> Self {
        let m = size;
        let mut table = vec![EMPTY; m];
        // Per taking-part backend: (index, weight, next position, skip, slots filled).
        let mut fillers: Vec<(u32, u128, usize, usize, u128)> = Vec::new();
        for (i, (name, &w)) in names.iter().zip(weights).enumerate() {
            let Some(index) = u32::try_from(i).ok().filter(|&x| x != EMPTY) else {
                break;
            };
            if w == 0 || m == 0 || !eligible(i) {
                continue;
            }
            let pos = (hash_seeded(name, SEED_OFFSET) % m as u64) as usize;
            // m >= 1 here; for m <= 2 the modulus is 1 and skip is 1.
            let mut skip = (hash_seeded(name, SEED_SKIP) % (m as u64 - 1).max(1)) as usize + 1;
            // For a prime m every skip in 1..m is coprime; for other sizes move
            // to the next coprime skip (1 always is) so the walk visits every slot.
            while gcd(skip, m) != 1 {
                skip = if skip + 1 >= m { 1 } else { skip + 1 };
            }
            fillers.push((index, u128::from(w), pos, skip, 0));
        }
        let max_w = fillers.iter().map(|f| f.1).max().unwrap_or(0);
        let mut filled_total = 0usize;
        let mut round: u128 = 0;
        // Terminates: the max-weight backend has filled == round at the start of
        // every round, so it places an entry each round and filled_total grows.
        while !fillers.is_empty() && filled_total < m {
            for (index, weight, pos, skip, filled) in fillers.iter_mut() {
                if filled_total >= m {
                    break;
                }
                if *filled * max_w > round * *weight {
                    continue;
                }
                // skip is coprime with m, so within m steps the walk reaches
                // the empty slot that filled_total < m guarantees exists.
                for _ in 0..m {
                    let slot = *pos;
                    *pos = (*pos + *skip) % m;
                    if let Some(e) = table.get_mut(slot).filter(|e| **e == EMPTY) {
                        *e = *index;
                        *filled += 1;
                        filled_total += 1;
                        break;
                    }
                }
            }
            round += 1;
        }
        Self { table }
    }

    /// The backend for a key hash.
    pub fn lookup(&self, key_hash: u64) -> Option<usize> {
        let slot = key_hash.checked_rem(self.table.len() as u64)?; // None for size 0
        let entry = *self.table.get(slot as usize)?;
        (entry != EMPTY).then_some(entry as usize)
    }

    /// Table size.
    pub fn size(&self) -> usize {
        self.table.len()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn fnv1a(bytes: &[u8], init: u64) -> u64 {
    bytes
        .iter()
        .fold(init, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// A stable 64-bit hash (same value across runs and processes; e.g. FNV-1a 64 followed by a 64-bit finalizer mix such as splitmix64/murmur3 fmix64 so low bits are well distributed). Used for Maglev permutations and keys.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(bytes, FNV_OFFSET))
}

/// Stable hash with a seed (for Maglev's two permutation hashes).
pub fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    fmix64(fnv1a(bytes, FNV_OFFSET ^ fmix64(seed)) ^ seed)
}

/// Whether n is prime (deterministic, trial division is fine for n < 2^32; return false for 0 and 1).
pub fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    !n.is_multiple_of(2)
        && (3..)
            .step_by(2)
            .take_while(|&d| d <= n / d)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= want * rel
    }

    #[test]
    fn swrr_nginx_sequence_and_period() {
        let mut s = SmoothRoundRobin::new(3);
        let picks: Vec<usize> = (0..21)
            .map(|_| s.pick(&[5, 1, 1], |_| true).unwrap())
            .collect();
        assert_eq!(&picks[..7], &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&picks[..7], &picks[7..14]);
        assert_eq!(&picks[..7], &picks[14..21]);
    }

    #[test]
    fn swrr_distribution_and_eligibility() {
        let mut s = SmoothRoundRobin::new(3);
        let mut count = |eligible: fn(usize) -> bool| {
            let mut counts = [0u32; 3];
            for _ in 0..10_000 {
                counts[s.pick(&[3, 2, 1], eligible).unwrap()] += 1;
            }
            counts
        };
        let counts = count(|_| true);
        for (c, want) in counts.iter().zip([5000.0, 3333.0, 1667.0]) {
            assert!(within(f64::from(*c), want, 0.01), "{counts:?}");
        }
        let counts = count(|i| i != 1);
        assert_eq!(counts[1], 0);
        assert!(within(f64::from(counts[0]), 7500.0, 0.01), "{counts:?}");
        assert!(within(f64::from(counts[2]), 2500.0, 0.01), "{counts:?}");
    }

    #[test]
    fn swrr_none_and_zero_weight() {
        let mut s = SmoothRoundRobin::new(3);
        assert_eq!(s.pick(&[1, 2, 3], |_| false), None);
        assert_eq!(s.pick(&[0, 0, 0], |_| true), None);
        assert_eq!(s.pick(&[], |_| true), None);
        for _ in 0..100 {
            assert_ne!(s.pick(&[1, 0, 2], |_| true), Some(1));
        }
    }

    #[test]
    fn least_conn_ratio_eligibility_and_ties() {
        let active = [10u64, 4, 9]; // ratios 10/2 = 5, 4/1 = 4, 9/3 = 3
        let lc = |w: &[u32], e: fn(usize) -> bool| least_conn(w, |i| active[i], e, 0);
        assert_eq!(lc(&[2, 1, 3], |_| true), Some(2));
        assert_eq!(lc(&[2, 1, 3], |i| i != 2), Some(1));
        assert_eq!(lc(&[2, 0, 3], |i| i != 2), Some(0));
        assert_eq!(lc(&[1, 1, 1], |_| false), None);
        assert_eq!(least_conn(&[], |_| 0, |_| true, 5), None);
        // u64::MAX * u32::MAX overflows u64; backend 0 has the lower ratio.
        let big = least_conn(&[u32::MAX, 1], |_| u64::MAX, |_| true, 1);
        assert_eq!(big, Some(0));
        let all_tied = |start| least_conn(&[1, 1, 1], |_| 7, |_| true, start);
        assert!((0..6).all(|start| all_tied(start) == Some(start % 3)));
        // Tie between 0 and 2 (1 is busier): from start 1 the next tied one is 2.
        let act = [1u64, 5, 1];
        assert_eq!(least_conn(&[1, 1, 1], |i| act[i], |_| true, 1), Some(2));
    }

    /// Builds a table over backends named "10.0.0.{i+1}:80".
    fn build(weights: &[u32], eligible: impl Fn(usize) -> bool, size: usize) -> Maglev {
        let names: Vec<Vec<u8>> = (1..=weights.len())
            .map(|i| format!("10.0.0.{i}:80").into())
            .collect();
        let refs: Vec<&[u8]> = names.iter().map(|v| v.as_slice()).collect();
        Maglev::build(&refs, weights, eligible, size)
    }

    fn shares(m: &Maglev, n: usize) -> Vec<f64> {
        let mut c = vec![0usize; n];
        for k in 0..m.size() as u64 {
            c[m.lookup(k).unwrap()] += 1;
        }
        c.iter().map(|&x| x as f64 / m.size() as f64).collect()
    }

    /// Rebuilds without `removed`; prints and returns (fraction of the other keys moved, fraction of all keys moved).
    fn disruption(n: usize, removed: usize) -> (f64, f64) {
        let w = vec![1; n];
        let before = build(&w, |_| true, Maglev::DEFAULT_SIZE);
        let after = build(&w, |i| i != removed, Maglev::DEFAULT_SIZE);
        let (mut on_removed, mut others_moved, mut moved) = (0u64, 0u64, 0u64);
        const KEYS: u64 = 100_000;
        for k in 0..KEYS {
            let h = hash_bytes(&k.to_le_bytes());
            let (b, a) = (before.lookup(h).unwrap(), after.lookup(h).unwrap());
            assert_ne!(a, removed);
            moved += u64::from(a != b);
            on_removed += u64::from(b == removed);
            others_moved += u64::from(a != b && b != removed);
        }
        let on = on_removed as f64 / KEYS as f64;
        let others = others_moved as f64 / (KEYS - on_removed) as f64;
        let all = moved as f64 / KEYS as f64;
        println!(
            "maglev {n}->{}: on removed {on:.4}, others moved {others:.4}, all moved {all:.4}",
            n - 1
        );
        (others, all)
    }

    #[test]
    fn maglev_three_backends_balance_and_disruption() {
        let m = build(&[1, 1, 1], |_| true, Maglev::DEFAULT_SIZE);
        assert_eq!(m.size(), 65537);
        for s in shares(&m, 3) {
            assert!(within(s, 1.0 / 3.0, 0.02), "share {s}");
        }
        let again = build(&[1, 1, 1], |_| true, Maglev::DEFAULT_SIZE);
        for k in 0..1000u64 {
            let h = hash_bytes(&k.to_be_bytes());
            assert_eq!(m.lookup(h), again.lookup(h));
        }
        let (others, all) = disruption(3, 1);
        assert!(others <= 0.02, "others moved {others}, all moved {all}");
    }

    #[test]
    fn maglev_five_backends_remove_one() {
        let (others, all) = disruption(5, 3);
        assert!(all <= 0.2 + 0.03, "all moved {all}, others moved {others}");
    }

    #[test]
    fn maglev_weighted_shares() {
        let m = build(&[2, 1], |_| true, Maglev::DEFAULT_SIZE);
        let s = shares(&m, 2);
        println!("maglev weighted [2,1] shares: {s:?}");
        assert!(within(s[0], 2.0 / 3.0, 0.03), "{s:?}");
        assert!(within(s[1], 1.0 / 3.0, 0.03), "{s:?}");
    }

    #[test]
    fn maglev_edge_cases() {
        assert_eq!(build(&[1, 1, 1], |_| false, 7).lookup(12345), None);
        assert_eq!(build(&[0, 0, 0], |_| true, 7).lookup(1), None);
        assert_eq!(build(&[], |_| true, 7).lookup(1), None);
        let one = build(&[1], |_| true, 7);
        assert!((0..100).all(|k| one.lookup(hash_bytes(&[k])) == Some(0)));
        for size in [10, 0, 1, 2, 4, 65536] {
            let m = build(&[3, 1, 2], |_| true, size);
            assert_eq!(m.size(), size);
            for k in 0..size as u64 {
                assert!(m.lookup(k).is_some_and(|b| b < 3), "size {size}");
            }
            assert_eq!(m.lookup(5).is_none(), size == 0);
        }
    }

    #[test]
    fn primes_and_hash_stability() {
        for n in [2, 3, 65537, 655373] {
            assert!(is_prime(n), "{n}");
        }
        for n in [0, 1, 4, 65536] {
            assert!(!is_prime(n), "{n}");
        }
        assert_eq!(hash_bytes(b"10.0.0.1:80"), hash_bytes(b"10.0.0.1:80"));
        assert_ne!(hash_bytes(b"10.0.0.1:80"), hash_bytes(b"10.0.0.2:80"));
        assert_ne!(hash_seeded(b"x", 1), hash_seeded(b"x", 2));
        // Pinned across runs: the FNV-1a 64 reference vector, then our full hash.
        assert_eq!(fnv1a(b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash_bytes(b"10.0.0.1:80"), 0x5ed8_f827_5e47_a14a);
    }
}
