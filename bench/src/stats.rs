//! Small statistics: percentiles of recorded latencies and medians of rounds.

/// Latencies in nanoseconds, every one recorded.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u32>,
}

impl Latencies {
    /// Records one latency (saturating at about 4.29 s).
    pub fn record(&mut self, nanos: u128) {
        self.samples.push(nanos.min(u32::MAX as u128) as u32);
    }

    /// Forgets everything recorded.
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The `q` quantile (0.0 to 1.0) in microseconds, or `None` when nothing was recorded.
    ///
    /// Sorts the samples on first use; call it after recording ends.
    pub fn quantile_us(&mut self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        if !self.samples.is_sorted() {
            self.samples.sort_unstable();
        }
        let rank = (q * (self.samples.len() - 1) as f64).round() as usize;
        Some(self.samples[rank.min(self.samples.len() - 1)] as f64 / 1000.0)
    }
}

/// The median of the values that are present; `None` when none is.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values
        .into_iter()
        .flatten()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut l = Latencies::default();
        for i in (1..=1000u128).rev() {
            l.record(i * 1000);
        }
        assert_eq!(l.quantile_us(0.5), Some(501.0));
        assert_eq!(l.quantile_us(0.99), Some(990.0));
        assert_eq!(l.quantile_us(1.0), Some(1000.0));
        assert_eq!(Latencies::default().quantile_us(0.5), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median([Some(3.0), None, Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(median([None]), None);
    }
}
