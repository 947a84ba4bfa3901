//! What renters spent this calendar month (UTC), summed incrementally: each account's tally
//! remembers the last ledger entry it read, so a page that polls reads only the entries since,
//! not the whole month again. The ledger is appended in sequence order by one writer, so a
//! reader never sees an entry appear below one it has already read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use flotilla_ledger::{Effect, Entry, Kind, Token};
use flotilla_proto::time::month_start_ms;

use crate::error::ApiResult;
use crate::ledger::entry_from_row;

/// Accounts whose tallies are kept; past this the tallies start again (each is rebuilt from the
/// ledger on its next read).
pub const SPENDING_ACCOUNTS_CACHED_MAX: usize = 10_000;
/// Ledger entries one read takes at most; a tally further behind catches up over later reads.
pub const SPENDING_ENTRIES_READ_MAX: u32 = 20_000;

#[derive(Debug, Clone, Default)]
struct Tally {
    month_start_ms: i64,
    /// The last entry summed.
    after_seq: u64,
    spent: BTreeMap<Token, i64>,
}

/// A month's spending of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthSpending {
    pub month_start_ms: i64,
    pub spent: BTreeMap<Token, i64>,
    /// False while the tally has not caught up with the ledger.
    pub complete: bool,
}

/// The tallies of the accounts that asked lately.
#[derive(Debug, Default)]
pub struct Spending {
    tallies: Mutex<HashMap<String, Tally>>,
}

impl Spending {
    /// What `owner` spent in the month of `now_ms`, as of the ledger now.
    pub async fn this_month(
        &self,
        store: &flotilla_store::Store,
        owner: &str,
        now_ms: i64,
    ) -> ApiResult<MonthSpending> {
        let month_start_ms = month_start_ms(now_ms);
        let mut tally = self
            .tallies
            .lock()
            .expect("spending lock")
            .get(owner)
            .filter(|tally| tally.month_start_ms == month_start_ms)
            .cloned()
            .unwrap_or(Tally {
                month_start_ms,
                ..Tally::default()
            });
        let rows = store
            .ledger_owner_entries_after(
                owner,
                tally.after_seq,
                month_start_ms,
                SPENDING_ENTRIES_READ_MAX,
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            entries.push(entry_from_row(row)?);
        }
        for (token, delta) in spent(&entries, owner) {
            let total = tally.spent.entry(token).or_default();
            *total = total.saturating_add(delta);
        }
        tally.after_seq = rows.last().map_or(tally.after_seq, |row| row.seq);
        let answer = MonthSpending {
            month_start_ms,
            spent: tally.spent.clone(),
            complete: rows.len() < SPENDING_ENTRIES_READ_MAX as usize,
        };
        let mut tallies = self.tallies.lock().expect("spending lock");
        if tallies.len() >= SPENDING_ACCOUNTS_CACHED_MAX && !tallies.contains_key(owner) {
            tallies.clear();
        }
        tallies.insert(owner.to_owned(), tally);
        Ok(answer)
    }
}

/// What `renter` spent on rentals in `entries`, per token, in base units: what went from its
/// accounts into escrows (a hold posted at placement, an extension) less what came back
/// (refunds). Negative when more came back than went in, as when a refund follows an escrow
/// paid before the entries begin.
pub fn spent(entries: &[Entry], renter: &str) -> BTreeMap<Token, i64> {
    let signed = |amount: u64| i64::try_from(amount).unwrap_or(i64::MAX);
    let mut spent = BTreeMap::new();
    for entry in entries {
        let (account, delta) = match (entry.kind, &entry.effect) {
            (Kind::Escrow, Effect::Move { debit, amount, .. }) => (debit, signed(*amount)),
            (Kind::Escrow, Effect::Resolve { debit, posted, .. }) => (debit, signed(*posted)),
            (Kind::Refund, Effect::Move { credit, amount, .. }) => (credit, -signed(*amount)),
            _ => continue,
        };
        if account.owner() == renter {
            let total: &mut i64 = spent.entry(account.token()).or_default();
            *total = total.saturating_add(delta);
        }
    }
    spent
}

#[cfg(test)]
mod tests {
    use flotilla_ledger::AccountId;

    use super::*;

    fn entry(kind: Kind, effect: Effect) -> Entry {
        Entry {
            seq: 1,
            id: "t".into(),
            at_ms: 0,
            kind,
            reference: String::new(),
            effect,
            prev_hash: String::new(),
        }
    }

    #[test]
    fn spending_is_what_went_into_escrows_less_refunds() {
        let main = AccountId::main("acc_renter", Token::Iosd);
        let escrow = AccountId::escrow("clu_a", Token::Iosd);
        let moved = |kind, debit: &AccountId, credit: &AccountId, amount| {
            let (debit, credit) = (debit.clone(), credit.clone());
            entry(
                kind,
                Effect::Move {
                    debit,
                    credit,
                    amount,
                },
            )
        };
        let posted = entry(
            Kind::Escrow,
            Effect::Resolve {
                hold: "escrow-clu_a".into(),
                debit: main.clone(),
                credit: escrow.clone(),
                posted: 900,
                released: 100,
                resolution: flotilla_ledger::Resolution::Posted,
            },
        );
        let held = entry(
            Kind::Escrow,
            Effect::Hold {
                debit: main.clone(),
                credit: escrow.clone(),
                amount: 1_000,
                expires_at_ms: 1,
                on_expiry: flotilla_ledger::OnExpiry::Void,
            },
        );
        let entries = [
            held,
            posted,
            moved(Kind::Escrow, &main, &escrow, 300),
            moved(Kind::Refund, &escrow, &main, 250),
            // Rent out of the escrow is the supplier's income, not more spending.
            moved(
                Kind::Rent,
                &escrow,
                &AccountId::main("acc_supplier", Token::Iosd),
                50,
            ),
            moved(
                Kind::Deposit,
                &AccountId::main("external", Token::Io),
                &main,
                7,
            ),
        ];
        let by_renter = spent(&entries, "acc_renter");
        assert_eq!(by_renter, BTreeMap::from([(Token::Iosd, 950)]));
        assert!(spent(&entries, "acc_supplier").is_empty());
        let refund_only = [moved(Kind::Refund, &escrow, &main, 40)];
        assert_eq!(
            spent(&refund_only, "acc_renter"),
            BTreeMap::from([(Token::Iosd, -40)])
        );
    }
}
