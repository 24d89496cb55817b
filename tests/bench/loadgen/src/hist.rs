//! A small log-linear latency histogram: exact below 128 ns, then 64 buckets per power of
//! two (under 1.6 % error), so millions of samples cost no memory and no allocation.

const EXACT: u64 = 128;
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Up to 2^40 ns (18 minutes); larger values land in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = EXACT as usize + (MAX_EXP as usize - 6) * SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let mantissa = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    EXACT as usize + (exp as usize - 7) * SUB + mantissa
}

/// The middle of a bucket's range.
fn value(i: usize) -> u64 {
    if i < EXACT as usize {
        return i as u64;
    }
    let exp = ((i - EXACT as usize) / SUB) as u32 + 7;
    let mantissa = ((i - EXACT as usize) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    ((SUB as u64 + mantissa) << (exp - SUB_BITS)) + width / 2
}

impl Histogram {
    /// Records one value in nanoseconds (negative values count as 0).
    pub fn record(&mut self, ns: i64) {
        let v = u64::try_from(ns).unwrap_or(0);
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), in nanoseconds; exact for the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// `{count, p50_ms, p99_ms, max_ms, mean_ms}`.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
        serde_json::json!({
            "count": self.total,
            "p50_ms": ms(self.quantile(0.50)),
            "p99_ms": ms(self.quantile(0.99)),
            "max_ms": ms(self.quantile(1.0)),
            "mean_ms": (self.mean() / 1e3).round() / 1e3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_two_percent() {
        for v in [0u64, 1, 127, 128, 129, 1000, 12_345, 1_000_000, 987_654_321] {
            let back = value(index(v));
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "{v} -> {back}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02);
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.count(), 1000);
    }
}
