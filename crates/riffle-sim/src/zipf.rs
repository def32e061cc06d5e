//! Zipf-distributed ranks by Walker/Vose's alias method: an O(n) table built
//! once, then one random number, one table read and one comparison per
//! sample, however many items there are (2M ads cost a 16 MB table and a few
//! nanoseconds per draw).

use crate::rng::Rng;

/// Samples ranks `0..n`, rank `k` with probability `(k+1)^-s / H(n, s)`.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// Per bucket: acceptance threshold (out of 2^32) and alias.
    table: Vec<(u32, u32)>,
    exponent: f64,
    harmonic: f64,
}

impl Zipf {
    /// `n >= 1` items, exponent `s >= 0` (0 is uniform).
    pub fn new(n: u32, exponent: f64) -> Zipf {
        assert!(n >= 1, "zipf: n must be at least 1");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "zipf: exponent must be finite and >= 0"
        );
        let n_usize = n as usize;
        let weights: Vec<f64> = (1..=n_usize).map(|k| (k as f64).powf(-exponent)).collect();
        // Sum smallest first for accuracy.
        let harmonic: f64 = weights.iter().rev().sum();
        let scale = n as f64 / harmonic;
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * scale).collect();
        drop(weights);

        let mut table = vec![(u32::MAX, 0u32); n_usize];
        let mut small: Vec<u32> = Vec::new();
        let mut large: Vec<u32> = Vec::new();
        for (i, p) in scaled.iter().enumerate() {
            if *p < 1.0 {
                small.push(i as u32);
            } else {
                large.push(i as u32);
            }
        }
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            let p = scaled[s as usize];
            table[s as usize] = (threshold(p), l);
            scaled[l as usize] = (scaled[l as usize] + p) - 1.0;
            if scaled[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // What is left is (up to rounding) exactly 1: always accept.
        for i in small.into_iter().chain(large) {
            table[i as usize] = (u32::MAX, i);
        }
        Zipf {
            table,
            exponent,
            harmonic,
        }
    }

    pub fn len(&self) -> u32 {
        self.table.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// A rank in `0..n`; rank 0 is the most likely.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let x = rng.next_u64();
        let bucket = (((x >> 32) * self.table.len() as u64) >> 32) as usize;
        let (accept, alias) = self.table[bucket];
        if (x as u32) < accept {
            bucket as u32
        } else {
            alias
        }
    }

    /// The exact probability of rank `k` (0-based).
    pub fn probability(&self, k: u32) -> f64 {
        ((k as f64) + 1.0).powf(-self.exponent) / self.harmonic
    }

    /// The probability of each rank as the table actually realises it (for
    /// tests of the construction).
    pub fn table_probabilities(&self) -> Vec<f64> {
        let n = self.table.len() as f64;
        let mut p = vec![0.0; self.table.len()];
        for (i, &(accept, alias)) in self.table.iter().enumerate() {
            let keep = if accept == u32::MAX {
                1.0
            } else {
                accept as f64 / 4_294_967_296.0
            };
            p[i] += keep / n;
            p[alias as usize] += (1.0 - keep) / n;
        }
        p
    }
}

fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).clamp(0.0, u32::MAX as f64 - 1.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_realises_the_exact_distribution() {
        for (n, s) in [(1, 1.1), (7, 0.0), (1000, 1.1), (50_000, 2.0), (3, 0.5)] {
            let zipf = Zipf::new(n, s);
            let realised = zipf.table_probabilities();
            let total: f64 = realised.iter().sum();
            assert!((total - 1.0).abs() < 1e-9, "n={n} s={s}: sums to {total}");
            for (k, p) in realised.iter().enumerate() {
                let exact = zipf.probability(k as u32);
                assert!(
                    (p - exact).abs() <= 1e-9 + exact * 1e-6,
                    "n={n} s={s} rank {k}: table {p}, exact {exact}"
                );
            }
        }
    }

    #[test]
    fn samples_follow_the_distribution() {
        let zipf = Zipf::new(100, 1.1);
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 100];
        let draws = 200_000;
        for _ in 0..draws {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        for k in [0u32, 1, 9, 99] {
            let expected = zipf.probability(k) * draws as f64;
            let sigma = expected.sqrt();
            let got = counts[k as usize] as f64;
            assert!(
                (got - expected).abs() < 5.0 * sigma + 1.0,
                "rank {k}: {got} draws, expected {expected:.0}"
            );
        }
    }
}
