//! Downsampling of telemetry: samples fold into one accumulator per device and bucket; a bucket
//! closes when a sample of a later bucket arrives (or at flush time) and becomes one history row.

use flotilla_proto::device::DeviceTelemetry;
use flotilla_store::TelemetryBucketRow;

/// The running aggregate of one device's current bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulator {
    bucket_start_ms: i64,
    samples: u32,
    utilization_pct_sum: u64,
    memory_used_bytes_sum: u128,
    temperature_c_max: Option<i16>,
    power_w_sum: u64,
    power_samples: u32,
    net_rx_bytes: u64,
    net_tx_bytes: u64,
}

impl Accumulator {
    fn new(bucket_start_ms: i64) -> Accumulator {
        Accumulator {
            bucket_start_ms,
            samples: 0,
            utilization_pct_sum: 0,
            memory_used_bytes_sum: 0,
            temperature_c_max: None,
            power_w_sum: 0,
            power_samples: 0,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
        }
    }

    pub fn bucket_start_ms(&self) -> i64 {
        self.bucket_start_ms
    }

    fn add(&mut self, sample: &DeviceTelemetry) {
        self.samples += 1;
        self.utilization_pct_sum += u64::from(sample.utilization_pct.min(100));
        self.memory_used_bytes_sum += u128::from(sample.memory_used_bytes);
        self.temperature_c_max = self.temperature_c_max.max(sample.temperature_c);
        if let Some(power_w) = sample.power_w {
            self.power_w_sum += u64::from(power_w);
            self.power_samples += 1;
        }
        self.net_rx_bytes = sample.net_rx_bytes;
        self.net_tx_bytes = sample.net_tx_bytes;
    }

    /// The history row for this bucket.
    pub fn close(&self, device_id: &str, bucket_s: u64) -> TelemetryBucketRow {
        assert!(
            self.samples > 0,
            "a bucket exists only once it has a sample"
        );
        let samples = u128::from(self.samples);
        TelemetryBucketRow {
            device_id: device_id.to_owned(),
            bucket_start_ms: self.bucket_start_ms,
            bucket_s,
            samples: self.samples,
            utilization_pct: u8::try_from(self.utilization_pct_sum / u64::from(self.samples))
                .unwrap_or(100),
            memory_used_bytes: u64::try_from(self.memory_used_bytes_sum / samples)
                .unwrap_or(u64::MAX),
            temperature_c: self.temperature_c_max,
            power_w: (self.power_samples > 0).then(|| {
                u32::try_from(self.power_w_sum / u64::from(self.power_samples)).unwrap_or(u32::MAX)
            }),
            net_rx_bytes: self.net_rx_bytes,
            net_tx_bytes: self.net_tx_bytes,
        }
    }
}

/// Folds `sample` taken at `at_ms` into `current`; returns the bucket it closed, if any.
pub fn fold(
    current: &mut Option<Accumulator>,
    sample: &DeviceTelemetry,
    at_ms: i64,
    bucket_s: u64,
) -> Option<TelemetryBucketRow> {
    let bucket_ms = i64::try_from(bucket_s * 1000).unwrap_or(i64::MAX);
    let bucket_start_ms = at_ms - at_ms.rem_euclid(bucket_ms);
    // A sample older than the open bucket (the clock stepped back) is dropped: reopening a
    // closed bucket would write the same history row twice.
    if current
        .as_ref()
        .is_some_and(|acc| bucket_start_ms < acc.bucket_start_ms)
    {
        return None;
    }
    let closed = match current {
        Some(acc) if acc.bucket_start_ms == bucket_start_ms => None,
        Some(acc) => Some(acc.close(&sample.device_id, bucket_s)),
        None => None,
    };
    let acc = match current {
        Some(acc) if acc.bucket_start_ms == bucket_start_ms => acc,
        _ => current.insert(Accumulator::new(bucket_start_ms)),
    };
    acc.add(sample);
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(utilization_pct: u8, temperature_c: i16, net_rx_bytes: u64) -> DeviceTelemetry {
        DeviceTelemetry {
            device_id: "dev_a".into(),
            utilization_pct,
            memory_used_bytes: 1000,
            temperature_c: Some(temperature_c),
            power_w: Some(200),
            net_rx_bytes,
            net_tx_bytes: 5,
        }
    }

    #[test]
    fn averages_within_a_bucket_and_closes_on_the_next() {
        let mut acc = None;
        assert_eq!(fold(&mut acc, &sample(20, 60, 1), 60_000, 60), None);
        assert_eq!(fold(&mut acc, &sample(40, 70, 2), 119_999, 60), None);
        let closed = fold(&mut acc, &sample(90, 50, 3), 120_000, 60).unwrap();
        assert_eq!(closed.bucket_start_ms, 60_000);
        assert_eq!(closed.samples, 2);
        assert_eq!(closed.utilization_pct, 30);
        assert_eq!(
            closed.temperature_c,
            Some(70),
            "temperature keeps the maximum"
        );
        assert_eq!(closed.net_rx_bytes, 2, "counters keep the last value");
        assert_eq!(closed.power_w, Some(200));
        assert_eq!(acc.as_ref().unwrap().bucket_start_ms(), 120_000);
        assert_eq!(
            fold(&mut acc, &sample(10, 10, 4), 119_000, 60),
            None,
            "a sample from the past is dropped"
        );
        assert_eq!(acc.unwrap().close("dev_a", 60).samples, 1);
    }
}
