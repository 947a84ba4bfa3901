//! IO emission and block rewards.
//!
//! A year's emission is spread over its hours exactly: hour `h` of a year of `H` hours and
//! emission `Y` gets `floor(Y (h+1) / H) - floor(Y h / H)`, so the hours sum to `Y` to the base
//! unit. Each hour's emission is split among the devices that earned it by score, with the
//! largest-remainder rule, so the shares sum to the hour's emission to the base unit.

use serde::{Deserialize, Serialize};

use crate::account::MICROS_PER_TOKEN;

/// One year's emission, in IO base units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct YearEmission {
    pub year: i32,
    pub io_micros: u64,
}

/// The yearly schedule; years not listed emit nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub years: Vec<YearEmission>,
}

impl Default for Schedule {
    /// The product brief's: 6 M IO a year in 2024–2025, halving every two years to 2029.
    fn default() -> Schedule {
        let io = |tokens: u64| tokens * MICROS_PER_TOKEN;
        let years = [
            (2024, io(6_000_000)),
            (2025, io(6_000_000)),
            (2026, io(3_000_000)),
            (2027, io(3_000_000)),
            (2028, io(1_500_000)),
            (2029, io(1_500_000)),
        ];
        Schedule {
            years: years
                .into_iter()
                .map(|(year, io_micros)| YearEmission { year, io_micros })
                .collect(),
        }
    }
}

const HOUR_MS: i64 = 3_600_000;

impl Schedule {
    /// The emission of the hour starting at or containing `at_ms` (UTC).
    pub fn hour_emission(&self, at_ms: i64) -> u64 {
        let year = year_of(at_ms);
        let Some(entry) = self.years.iter().find(|y| y.year == year) else {
            return 0;
        };
        let start = year_start_ms(year);
        let hours = hours_in_year(year);
        let hour = u128::try_from((at_ms - start) / HOUR_MS).unwrap_or(0);
        let total = u128::from(entry.io_micros);
        let share = |h: u128| total * h / hours;
        u64::try_from(share(hour + 1) - share(hour)).expect("an hour's share fits its year")
    }

    /// The emission of epoch `epoch` of length `epoch_ms`: the sum over the hours it spans,
    /// pro rata for partial hours, so that epochs tiling a year sum to the year exactly.
    pub fn epoch_emission(&self, epoch: u64, epoch_ms: u64) -> u64 {
        let start = i64::try_from(epoch.saturating_mul(epoch_ms)).unwrap_or(i64::MAX);
        let end = start.saturating_add(i64::try_from(epoch_ms).unwrap_or(i64::MAX));
        cumulative(self, end) - cumulative(self, start)
    }
}

/// Emission from the start of the schedule's first year up to `at_ms`, rounding down within
/// an hour; differences of this are exact and telescoping.
fn cumulative(schedule: &Schedule, at_ms: i64) -> u64 {
    let year = year_of(at_ms);
    let mut total: u128 = schedule
        .years
        .iter()
        .filter(|y| y.year < year)
        .map(|y| u128::from(y.io_micros))
        .sum();
    if let Some(entry) = schedule.years.iter().find(|y| y.year == year) {
        let into_year_ms = u128::try_from(at_ms - year_start_ms(year)).unwrap_or(0);
        let year_ms = hours_in_year(year) * HOUR_MS as u128;
        total += u128::from(entry.io_micros) * into_year_ms / year_ms;
    }
    u64::try_from(total).unwrap_or(u64::MAX)
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn hours_in_year(year: i32) -> u128 {
    if is_leap(year) { 366 * 24 } else { 365 * 24 }
}

/// Milliseconds since the Unix epoch at 1 January of `year`, 00:00 UTC.
pub fn year_start_ms(year: i32) -> i64 {
    let days: i64 = if year >= 1970 {
        (1970..year)
            .map(|y| if is_leap(y) { 366 } else { 365 })
            .sum()
    } else {
        -(year..1970)
            .map(|y| if is_leap(y) { 366 } else { 365 })
            .sum::<i64>()
    };
    days * 24 * HOUR_MS
}

/// The UTC year containing `at_ms`.
pub fn year_of(at_ms: i64) -> i32 {
    let mut year = 1970 + i32::try_from(at_ms / (365 * 24 * HOUR_MS)).unwrap_or(0);
    while year_start_ms(year) > at_ms {
        year -= 1;
    }
    while year_start_ms(year + 1) <= at_ms {
        year += 1;
    }
    year
}

/// Splits `total` among `scores` in proportion, exactly: each gets the floor of its share, and
/// the base units left over go one each to the largest remainders (ties to the lower index).
/// Zero scores get nothing; if every score is zero, nobody does.
pub fn split_largest_remainder(total: u64, scores: &[u128]) -> Vec<u64> {
    let sum: u128 = scores.iter().sum();
    if sum == 0 {
        return vec![0; scores.len()];
    }
    let total_wide = u128::from(total);
    let mut shares = Vec::with_capacity(scores.len());
    let mut remainders = Vec::with_capacity(scores.len());
    for (index, &score) in scores.iter().enumerate() {
        // score ≤ sum, so total × score / sum ≤ total: no overflow past u64, and the product
        // fits u128 for scores below 2^64.
        let product = total_wide * score;
        shares.push(u64::try_from(product / sum).expect("a share is at most the total"));
        remainders.push((product % sum, index));
    }
    let paid: u64 = shares.iter().sum();
    let left = total - paid;
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, index) in remainders
        .iter()
        .take(usize::try_from(left).unwrap_or(usize::MAX))
    {
        shares[index] += 1;
    }
    debug_assert_eq!(shares.iter().sum::<u64>(), total);
    shares
}

/// Hardware multipliers for rewards and minimum stake, in hundredths (from the product brief).
pub fn multiplier_centi(model_key: &str) -> u64 {
    match model_key {
        m if m.contains("b200") => 3_000,
        m if m.contains("h200") => 1_200,
        m if m.contains("h100") => 1_000,
        m if m.contains("a100") && m.contains("80") => 500,
        m if m.contains("a100") => 400,
        m if m.contains("4090") => 125,
        m if m.starts_with("cpu") => 10,
        _ => 100,
    }
}

/// Connectivity tier factor for rewards, in percent.
pub fn tier_factor_pct(tier: &str) -> u64 {
    match tier {
        "ultra" => 120,
        "high" => 110,
        "medium" => 100,
        _ => 90,
    }
}

/// Bonus for a device hired during the epoch, in percent of its score.
pub const HIRED_BONUS_PCT: u64 = 150;

/// One device's claim on an epoch's rewards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardClaim {
    pub device_id: String,
    pub supplier: String,
    pub model_key: String,
    pub gpu_count: u64,
    /// Share of the epoch the device was up, in millionths.
    pub uptime_ppm: u64,
    pub tier: String,
    pub hired: bool,
}

impl RewardClaim {
    /// multiplier × GPUs × uptime × tier factor × (hired bonus).
    pub fn score(&self) -> u128 {
        let hired = if self.hired { HIRED_BONUS_PCT } else { 100 };
        u128::from(multiplier_centi(&self.model_key))
            * u128::from(self.gpu_count)
            * u128::from(self.uptime_ppm.min(1_000_000))
            * u128::from(tier_factor_pct(&self.tier))
            * u128::from(hired)
    }
}

/// The minimum stake for a device to earn rewards: 200 IO × max(1, multiplier) × GPUs.
pub fn minimum_stake_micros(model_key: &str, gpu_count: u64) -> u64 {
    let multiplier = multiplier_centi(model_key).max(100);
    200 * MICROS_PER_TOKEN * multiplier / 100 * gpu_count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_and_hours_are_exact() {
        assert_eq!(year_start_ms(1970), 0);
        assert_eq!(year_start_ms(2024), 1_704_067_200_000);
        assert_eq!(year_of(1_704_067_200_000), 2024);
        assert_eq!(year_of(1_704_067_199_999), 2023);
        let schedule = Schedule::default();
        for year in 2023..=2030 {
            let start = year_start_ms(year);
            let hours = i64::try_from(hours_in_year(year)).unwrap();
            let sum: u64 = (0..hours)
                .map(|h| schedule.hour_emission(start + h * HOUR_MS))
                .sum();
            let expected = schedule
                .years
                .iter()
                .find(|y| y.year == year)
                .map_or(0, |y| y.io_micros);
            assert_eq!(sum, expected, "year {year}");
        }
    }

    #[test]
    fn epochs_of_any_length_tile_the_schedule_exactly() {
        let schedule = Schedule::default();
        let total: u64 = schedule.years.iter().map(|y| y.io_micros).sum();
        // Ten-day epochs from before 2024 to after 2029.
        let epoch_ms = 10 * 24 * 3_600_000u64;
        let first = u64::try_from(year_start_ms(2023)).unwrap() / epoch_ms;
        let last = u64::try_from(year_start_ms(2031)).unwrap() / epoch_ms;
        let sum: u64 = (first..=last)
            .map(|e| schedule.epoch_emission(e, epoch_ms))
            .sum();
        assert_eq!(sum, total);
        let hour = u64::try_from(year_start_ms(2026)).unwrap() / 3_600_000;
        assert_eq!(
            schedule.epoch_emission(hour, 3_600_000),
            schedule.hour_emission(year_start_ms(2026))
        );
    }

    #[test]
    fn largest_remainder_pays_the_total_exactly() {
        assert_eq!(split_largest_remainder(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split_largest_remainder(10, &[0, 0]), vec![0, 0]);
        assert_eq!(split_largest_remainder(7, &[0, 5]), vec![0, 7]);
        assert_eq!(
            split_largest_remainder(100, &[1, 2, 3, 4]),
            vec![10, 20, 30, 40]
        );
    }

    #[test]
    fn minimum_stake_follows_the_multiplier() {
        assert_eq!(
            minimum_stake_micros("nvidia-h100-80gb", 1),
            2_000 * MICROS_PER_TOKEN
        );
        assert_eq!(
            minimum_stake_micros("nvidia-rtx-4090", 2),
            500 * MICROS_PER_TOKEN
        );
        assert_eq!(minimum_stake_micros("cpu-x86", 1), 200 * MICROS_PER_TOKEN);
    }
}
