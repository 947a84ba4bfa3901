//! Governance: proposals voted on with stake as counted when the proposal opened.
//!
//! The tally is pure: the weights (each account's stake at opening) and the last vote of each
//! account go in, the totals per option come out, and the coordinator records the result in
//! the ledger log as a `Record` entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest proposal title and text, and most options, in bytes and options.
pub const TITLE_BYTES_MAX: usize = 200;
pub const TEXT_BYTES_MAX: usize = 8 * 1024;
pub const OPTIONS_MAX: usize = 16;
pub const OPTION_BYTES_MAX: usize = 100;

/// The result of a closed proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub proposal_id: String,
    /// Stake behind each option, in IO base units, in the proposal's option order.
    pub option_weights: Vec<u64>,
    pub voters: u64,
    /// The option with the most weight; none on a tie at the top or when nobody with stake
    /// voted.
    pub winner: Option<usize>,
}

/// Tallies `votes` (account → option index) with `weights` (account → stake at opening).
/// Votes of accounts without weight, and votes for options that do not exist, count nothing.
pub fn tally(
    proposal_id: &str,
    option_count: usize,
    weights: &BTreeMap<String, u64>,
    votes: &BTreeMap<String, usize>,
) -> Tally {
    let mut option_weights = vec![0u64; option_count];
    let mut voters = 0;
    for (account, &option) in votes {
        let Some(&weight) = weights.get(account) else {
            continue;
        };
        if option >= option_count || weight == 0 {
            continue;
        }
        option_weights[option] = option_weights[option].saturating_add(weight);
        voters += 1;
    }
    let top = option_weights.iter().copied().max().unwrap_or(0);
    let leaders: Vec<usize> = (0..option_count)
        .filter(|&i| option_weights[i] == top)
        .collect();
    let winner = (top > 0 && leaders.len() == 1).then(|| leaders[0]);
    Tally {
        proposal_id: proposal_id.to_owned(),
        option_weights,
        voters,
        winner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stake_at_opening_decides_and_ties_have_no_winner() {
        let weights: BTreeMap<String, u64> =
            [("a".into(), 10), ("b".into(), 7), ("c".into(), 4)].into();
        let votes: BTreeMap<String, usize> = [
            ("a".into(), 0),
            ("b".into(), 1),
            ("c".into(), 1),
            ("d".into(), 0),
        ]
        .into();
        let result = tally("prp_1", 2, &weights, &votes);
        assert_eq!(result.option_weights, vec![10, 11]);
        assert_eq!((result.voters, result.winner), (3, Some(1)));
        let votes: BTreeMap<String, usize> = [("a".into(), 1), ("b".into(), 0)].into();
        let weights: BTreeMap<String, u64> = [("a".into(), 5), ("b".into(), 5)].into();
        assert_eq!(tally("p", 2, &weights, &votes).winner, None);
        assert_eq!(tally("p", 2, &weights, &BTreeMap::new()).winner, None);
    }
}
