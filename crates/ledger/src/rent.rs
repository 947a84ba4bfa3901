//! Rent and fees: what a cluster's escrow pays, minute by minute.
//!
//! A node's hourly price is paid in sixty minute parts that sum to the price exactly (minute
//! `m` gets `floor(P (m+1) / 60) - floor(P m / 60)`). Each paid minute is three linked
//! transfers out of the cluster's escrow: the rent less the supplier's fee to the supplier,
//! the supplier's fee and the renter's fee to the treasury. Down minutes are not paid.

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, Purpose, Token};
use crate::book::{Kind, Op, Transfer};

/// Fee rates, in basis points (hundredths of a percent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePolicy {
    /// Reservation fee the renter pays on top of rent.
    pub renter_bps: u64,
    /// Reservation fee taken from the supplier's rent.
    pub supplier_bps: u64,
    /// Added to the renter's fee when paying in IOSD.
    pub stable_extra_bps: u64,
}

impl Default for FeePolicy {
    /// The product brief's: 0.25% each side, and 2% more in IOSD.
    fn default() -> FeePolicy {
        FeePolicy {
            renter_bps: 25,
            supplier_bps: 25,
            stable_extra_bps: 200,
        }
    }
}

const BPS: u128 = 10_000;

impl FeePolicy {
    /// The renter's fee on `rent` in `token`, rounded up (the treasury never loses a part).
    pub fn renter_fee(&self, rent: u64, token: Token) -> u64 {
        let bps = match token {
            Token::Io => self.renter_bps,
            Token::Iosd => self.renter_bps + self.stable_extra_bps,
        };
        fee(rent, bps)
    }

    /// The supplier's fee on `rent`, rounded up.
    pub fn supplier_fee(&self, rent: u64) -> u64 {
        fee(rent, self.supplier_bps)
    }
}

fn fee(rent: u64, bps: u64) -> u64 {
    let wide = u128::from(rent) * u128::from(bps);
    u64::try_from(wide.div_ceil(BPS)).unwrap_or(u64::MAX)
}

/// The part of an hourly price due for minute `minute` (0–59) of an hour.
pub fn minute_rent(price_per_hour: u64, minute: u64) -> u64 {
    let minute = u128::from(minute % 60);
    let price = u128::from(price_per_hour);
    u64::try_from(price * (minute + 1) / 60 - price * minute / 60).expect("a part of the price")
}

/// An IOSD amount (offers are priced in IOSD) in IO base units at `io_price_micros` (IOSD base
/// units per whole IO), rounded up: paid in IO, rent is never worth less than its price. None
/// for a zero price or an amount past [`crate::book::AMOUNT_MAX`].
pub fn iosd_in_io(iosd_micros: u64, io_price_micros: u64) -> Option<u64> {
    if io_price_micros == 0 {
        return None;
    }
    let scaled = u128::from(iosd_micros) * u128::from(crate::account::MICROS_PER_TOKEN);
    u64::try_from(scaled.div_ceil(u128::from(io_price_micros)))
        .ok()
        .filter(|amount| *amount <= crate::book::AMOUNT_MAX)
}

/// What a cluster costs up front: rent for every node for its hours, plus the renter's fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub rent_micros: u64,
    pub fee_micros: u64,
    pub total_micros: u64,
}

/// Quotes `node_prices` (each node's price per hour) for `hours` in `token`.
pub fn quote(node_prices: &[u64], hours: u64, token: Token, fees: &FeePolicy) -> Option<Quote> {
    let per_hour = node_prices
        .iter()
        .try_fold(0u64, |sum, price| sum.checked_add(*price))?;
    let rent = per_hour.checked_mul(hours)?;
    // The fee is charged per minute, rounded up each time; quote the same sum.
    let fee_per_hour: u64 = node_prices
        .iter()
        .map(|&price| {
            (0..60)
                .map(|m| fees.renter_fee(minute_rent(price, m), token))
                .sum::<u64>()
        })
        .sum();
    let fee = fee_per_hour.checked_mul(hours)?;
    Some(Quote {
        rent_micros: rent,
        fee_micros: fee,
        total_micros: rent.checked_add(fee)?,
    })
}

/// One node-minute to pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMinute {
    /// The cluster (or request) whose escrow pays.
    pub escrow_owner: String,
    pub supplier: String,
    pub node_index: u32,
    /// Minutes since the cluster started; also names the transfers, so a minute is paid once.
    pub minute: u64,
    pub price_per_hour: u64,
    pub token: Token,
}

/// The linked transfers paying one node-minute out of escrow (empty when the minute's rent is
/// zero). Ids are derived from the cluster, node and minute, so paying twice is a duplicate.
pub fn minute_transfers(minute: &NodeMinute, fees: &FeePolicy) -> Vec<Transfer> {
    let rent = minute_rent(minute.price_per_hour, minute.minute);
    if rent == 0 {
        return Vec::new();
    }
    let escrow = AccountId::escrow(&minute.escrow_owner, minute.token);
    let treasury = AccountId::system(Purpose::Treasury, minute.token);
    // The supplier keeps at least one base unit of a paid minute.
    let supplier_fee = fees.supplier_fee(rent).min(rent - 1);
    let renter_fee = fees.renter_fee(rent, minute.token);
    let fee_total = supplier_fee + renter_fee;
    let base = format!(
        "rent-{}-{}-{}",
        minute.escrow_owner, minute.node_index, minute.minute
    );
    let reference = minute.escrow_owner.clone();
    let mut transfers = vec![Transfer {
        id: format!("{base}-s"),
        kind: Kind::Rent,
        op: Op::Move {
            debit: escrow.clone(),
            credit: AccountId::main(&minute.supplier, minute.token),
            amount: rent - supplier_fee,
        },
        reference: reference.clone(),
        linked: fee_total > 0,
    }];
    if fee_total > 0 {
        transfers.push(Transfer {
            id: format!("{base}-f"),
            kind: Kind::Fee,
            op: Op::Move {
                debit: escrow,
                credit: treasury,
                amount: fee_total,
            },
            reference,
            linked: false,
        });
    }
    transfers
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn iosd_converts_to_io_rounding_up() {
        // At 2 IOSD per IO, 3 IOSD is 1.5 IO; at 3 IOSD per IO, 1 base unit is a third, so 1.
        assert_eq!(iosd_in_io(3_000_000, 2_000_000), Some(1_500_000));
        assert_eq!(iosd_in_io(1, 3_000_000), Some(1));
        assert_eq!(iosd_in_io(0, 3_000_000), Some(0));
        assert_eq!(iosd_in_io(10, 0), None);
        assert_eq!(iosd_in_io(crate::book::AMOUNT_MAX, 1), None);
    }

    proptest! {
        /// Fees round up per node and minute, so nodes sharing a budget may cost up to one base
        /// unit per node-minute more than the budget's own quote, never more.
        #[test]
        fn nodes_cost_at_most_the_budget_quote_plus_rounding(
            prices in prop::collection::vec(1u64..5_000_000, 1..8),
            hours in 1u64..48,
            stable in any::<bool>(),
        ) {
            let token = if stable { Token::Iosd } else { Token::Io };
            let fees = FeePolicy::default();
            let budget: u64 = prices.iter().sum();
            let nodes = quote(&prices, hours, token, &fees).unwrap();
            let whole = quote(&[budget], hours, token, &fees).unwrap();
            let rounding = prices.len() as u64 * 60 * hours;
            prop_assert!(nodes.total_micros <= whole.total_micros + rounding);
            prop_assert_eq!(nodes.rent_micros, whole.rent_micros);
        }
    }

    #[test]
    fn sixty_minutes_pay_the_hour_exactly() {
        for price in [0u64, 1, 59, 60, 61, 1_000_000, 2_345_678, 999_999_999] {
            let sum: u64 = (0..60).map(|m| minute_rent(price, m)).sum();
            assert_eq!(sum, price);
        }
    }

    #[test]
    fn fees_round_up_and_stable_pays_more() {
        let fees = FeePolicy::default();
        assert_eq!(fees.renter_fee(1_000_000, Token::Io), 2_500);
        assert_eq!(fees.renter_fee(1_000_000, Token::Iosd), 22_500);
        assert_eq!(fees.supplier_fee(1), 1);
        let quote = quote(&[1_000_000, 2_000_000], 2, Token::Io, &fees).unwrap();
        assert_eq!(quote.rent_micros, 6_000_000);
        assert_eq!(quote.total_micros, quote.rent_micros + quote.fee_micros);
        assert!(quote.fee_micros >= 15_000);
    }
}
