//! The book: balances and holds, changed only by applying transfers in order.
//!
//! A transfer (the command) is checked against the book and, if it passes, becomes an
//! [`Effect`] written into a chained [`Entry`]. Replaying the entries' effects from an empty
//! book rebuilds every balance: that is how an export is verified. The book may hold only the
//! accounts and holds a batch touches (the store loads them); an account it does not hold is
//! taken to be empty, so the caller must load every account a batch names.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::account::{AccountId, Token};
use crate::log::{Hash, canonical_hash, canonical_json, entry_hash};

/// Largest amount of one transfer, in base units (a thousand billion tokens).
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000_000;
/// Longest transfer id, in bytes.
pub const TRANSFER_ID_BYTES_MAX: usize = 64;
/// Longest reference, in bytes.
pub const REFERENCE_BYTES_MAX: usize = 256;
/// Longest body of a record entry, in bytes.
pub const RECORD_BYTES_MAX: usize = 16 * 1024;

/// What a transfer is, for people reading the log; the API decides who may ask for which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Transfer,
    Deposit,
    Withdrawal,
    Faucet,
    Escrow,
    Rent,
    Fee,
    Refund,
    Reward,
    Stake,
    Unstake,
    Slash,
    Burn,
    Governance,
}

/// What happens to a hold nobody resolved by its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// The funds go back (an escrow nobody used).
    Void,
    /// The funds move (an unstake after its cooldown, a slash after its appeal window).
    Post,
}

/// The change a transfer asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Moves `amount` from `debit` to `credit` now.
    Move {
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    },
    /// Reserves `amount` of `debit` for `credit` until posted, voided or expired.
    Hold {
        debit: AccountId,
        credit: AccountId,
        amount: u64,
        expires_at_ms: i64,
        on_expiry: OnExpiry,
    },
    /// Moves `amount` (all when absent) of the hold `hold` and releases the rest.
    Post { hold: String, amount: Option<u64> },
    /// Releases the hold `hold`.
    Void { hold: String },
    /// Resolves the hold `hold` as its `on_expiry` says; only at or after its expiry.
    Expire { hold: String },
    /// Writes a fact into the log without moving money (a governance tally).
    Record { body: String },
}

/// A command: one id, applied at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    pub id: String,
    pub kind: Kind,
    #[serde(flatten)]
    pub op: Op,
    #[serde(default)]
    pub reference: String,
    /// Commits together with the next transfer of the batch, or fails with it.
    #[serde(default)]
    pub linked: bool,
}

impl Transfer {
    /// A transfer not linked to the next.
    pub fn new(id: String, kind: Kind, op: Op, reference: String) -> Transfer {
        Transfer {
            id,
            kind,
            op,
            reference,
            linked: false,
        }
    }

    /// A move from `debit` to `credit`, not linked.
    pub fn moving(
        id: String,
        kind: Kind,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    ) -> Transfer {
        Transfer::new(
            id,
            kind,
            Op::Move {
                debit,
                credit,
                amount,
            },
            String::new(),
        )
    }

    pub fn with_reference(self, reference: String) -> Transfer {
        Transfer { reference, ..self }
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Posted,
    Voided,
    Expired,
}

/// What an entry did to the balances: enough to replay it without the book's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    Move {
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    },
    Hold {
        debit: AccountId,
        credit: AccountId,
        amount: u64,
        expires_at_ms: i64,
        on_expiry: OnExpiry,
    },
    Resolve {
        hold: String,
        debit: AccountId,
        credit: AccountId,
        /// Moved from debit to credit.
        posted: u64,
        /// Given back to debit.
        released: u64,
        resolution: Resolution,
    },
    Record {
        body: String,
    },
}

impl Effect {
    /// The accounts that moved, debit first.
    pub fn accounts(&self) -> Option<(&AccountId, &AccountId)> {
        match self {
            Effect::Move { debit, credit, .. }
            | Effect::Hold { debit, credit, .. }
            | Effect::Resolve { debit, credit, .. } => Some((debit, credit)),
            Effect::Record { .. } => None,
        }
    }
}

/// One committed entry of the log. Its hash covers every field and the previous hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub id: String,
    pub at_ms: i64,
    pub kind: Kind,
    pub reference: String,
    #[serde(flatten)]
    pub effect: Effect,
    /// Hash of the entry before (all zero for the first).
    pub prev_hash: String,
}

/// An account's balance. `posted` is credits minus debits; `held` is reserved by open holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub posted: i64,
    pub held: i64,
}

impl Balance {
    /// What may still be spent.
    pub fn available(&self) -> i64 {
        self.posted - self.held
    }
}

/// A hold and whether it is still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub debit: AccountId,
    pub credit: AccountId,
    pub amount: u64,
    pub expires_at_ms: i64,
    pub on_expiry: OnExpiry,
    /// None while open.
    pub resolution: Option<Resolution>,
}

/// The end of the chain: the last entry's sequence number, hash and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
    pub at_ms: i64,
}

/// Why a transfer was refused. Nothing of a refused transfer (or of its linked chain) applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum TransferError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("transfer id {id} was already used for a different transfer")]
    IdReused { id: String },
    #[error("{account} has {available} available, {needed} needed")]
    InsufficientFunds {
        account: String,
        available: i64,
        needed: u64,
    },
    #[error("hold {hold} does not exist")]
    HoldNotFound { hold: String },
    #[error("hold {hold} was already {resolution:?}")]
    HoldResolved {
        hold: String,
        resolution: Resolution,
    },
    #[error("hold {hold} expired")]
    HoldExpired { hold: String },
    #[error("hold {hold} expires later")]
    HoldNotDue { hold: String },
    #[error("a transfer linked with this one failed")]
    LinkedFailed,
}

impl TransferError {
    fn invalid(field: &str, problem: &str) -> TransferError {
        TransferError::Invalid {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }
}

/// The answer for one transfer of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Newly applied as entry `seq`.
    Applied(Entry),
    /// The same transfer was applied before, as entry `seq`.
    Duplicate {
        seq: u64,
    },
    Refused(TransferError),
}

/// What the book knows of an applied transfer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub digest: Hash,
    pub seq: u64,
}

/// Balances, holds and applied ids, and the chain's head.
#[derive(Debug, Clone, Default)]
pub struct Book {
    balances: HashMap<AccountId, Balance>,
    holds: HashMap<String, Hold>,
    seen: HashMap<String, Seen>,
    head: Head,
}

/// A transfer's outcome, and the canonical JSON of the entry it applied as (none unless
/// applied).
type Applied = (Outcome, Option<String>);

/// One change to undo if a linked chain fails.
enum Undo {
    Balance(AccountId, Option<Balance>),
    Hold(String, Option<Hold>),
    Seen(String),
    Head(Head),
}

impl Book {
    pub fn new(head: Head) -> Book {
        Book {
            head,
            ..Book::default()
        }
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub fn balance(&self, account: &AccountId) -> Balance {
        self.balances.get(account).copied().unwrap_or_default()
    }

    pub fn balances(&self) -> impl Iterator<Item = (&AccountId, &Balance)> {
        self.balances.iter()
    }

    pub fn hold(&self, id: &str) -> Option<&Hold> {
        self.holds.get(id)
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// Loads a stored balance (the store's view before a batch).
    pub fn load_balance(&mut self, account: AccountId, balance: Balance) {
        self.balances.insert(account, balance);
    }

    pub fn load_hold(&mut self, hold: Hold) {
        self.holds.insert(hold.id.clone(), hold);
    }

    pub fn load_seen(&mut self, id: String, seen: Seen) {
        self.seen.insert(id, seen);
    }

    pub fn knows_account(&self, account: &AccountId) -> bool {
        self.balances.contains_key(account)
    }

    pub fn knows_hold(&self, id: &str) -> bool {
        self.holds.contains_key(id)
    }

    /// What the book knows of an applied id (until [`Book::trim`]).
    pub fn seen(&self, id: &str) -> Option<Seen> {
        self.seen.get(id).copied()
    }

    pub fn account_count(&self) -> usize {
        self.balances.len()
    }

    /// Forgets applied ids of entries up to `seq` (committed: the store answers for them now),
    /// keeping those of batches still in flight.
    pub fn trim_seen_through(&mut self, seq: u64) {
        self.seen.retain(|_, seen| seen.seq > seq);
    }

    pub fn hold_count(&self) -> usize {
        self.holds.len()
    }

    /// Forgets applied ids and resolved holds, which a loader finds again in the store when a
    /// later batch names them; keeps balances and open holds, which a writer's cache reuses.
    pub fn trim(&mut self) {
        self.seen.clear();
        self.holds.retain(|_, hold| hold.resolution.is_none());
    }

    /// Open holds whose expiry is at or before `now_ms`.
    pub fn holds_due(&self, now_ms: i64) -> Vec<String> {
        let mut due: Vec<&Hold> = self
            .holds
            .values()
            .filter(|h| h.resolution.is_none() && h.expires_at_ms <= now_ms)
            .collect();
        due.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        due.into_iter().map(|h| h.id.clone()).collect()
    }

    /// Applies a batch in order at the server's time `now_ms`. A linked chain (transfers with
    /// `linked` set, and the one after the last of them) applies whole or not at all.
    pub fn apply_batch(&mut self, batch: &[Transfer], now_ms: i64) -> Vec<Outcome> {
        self.apply_batch_canonical(batch, now_ms).0
    }

    /// [`Book::apply_batch`], with each applied entry's canonical JSON beside its outcome
    /// (`None` for the others): the bytes its hash covers, which a writer stores as they are
    /// rather than serializing the entry a second time.
    pub fn apply_batch_canonical(
        &mut self,
        batch: &[Transfer],
        now_ms: i64,
    ) -> (Vec<Outcome>, Vec<Option<String>>) {
        let mut applied = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let end = batch[start..]
                .iter()
                .position(|t| !t.linked)
                .map_or(batch.len(), |i| start + i + 1);
            self.apply_chain(&batch[start..end], now_ms, &mut applied);
            start = end;
        }
        applied.into_iter().unzip()
    }

    fn apply_chain(&mut self, chain: &[Transfer], now_ms: i64, applied: &mut Vec<Applied>) {
        let mut undo = Vec::new();
        let first = applied.len();
        for (index, transfer) in chain.iter().enumerate() {
            let one = self.apply_one(transfer, now_ms, &mut undo);
            let failed = matches!(one.0, Outcome::Refused(_));
            applied.push(one);
            if failed {
                // Also for a lone transfer: its debit may have applied before its credit failed.
                self.roll_back(undo);
                for earlier in &mut applied[first..first + index] {
                    *earlier = (Outcome::Refused(TransferError::LinkedFailed), None);
                }
                applied.extend(
                    (index + 1..chain.len())
                        .map(|_| (Outcome::Refused(TransferError::LinkedFailed), None)),
                );
                return;
            }
        }
    }

    fn roll_back(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Balance(account, Some(balance)) => {
                    self.balances.insert(account, balance);
                }
                Undo::Balance(account, None) => {
                    self.balances.remove(&account);
                }
                Undo::Hold(id, Some(hold)) => {
                    self.holds.insert(id, hold);
                }
                Undo::Hold(id, None) => {
                    self.holds.remove(&id);
                }
                Undo::Seen(id) => {
                    self.seen.remove(&id);
                }
                Undo::Head(head) => self.head = head,
            }
        }
    }

    /// One transfer's outcome, and the canonical JSON of the entry it applied as.
    fn apply_one(&mut self, transfer: &Transfer, now_ms: i64, undo: &mut Vec<Undo>) -> Applied {
        let digest = transfer_digest(transfer);
        if let Some(seen) = self.seen.get(&transfer.id) {
            let outcome = if seen.digest == digest {
                Outcome::Duplicate { seq: seen.seq }
            } else {
                Outcome::Refused(TransferError::IdReused {
                    id: transfer.id.clone(),
                })
            };
            return (outcome, None);
        }
        // The chain's time never runs backwards (coordinators' clocks differ a little); holds
        // are judged at the time the entry will carry.
        let at_ms = now_ms.max(self.head.at_ms);
        let effect = match self.check(transfer, at_ms) {
            Ok(effect) => effect,
            Err(error) => return (Outcome::Refused(error), None),
        };
        let entry = Entry {
            seq: self.head.seq + 1,
            id: transfer.id.clone(),
            at_ms,
            kind: transfer.kind,
            reference: transfer.reference.clone(),
            effect,
            prev_hash: crate::log::encode_hash(&self.head.hash),
        };
        if let Err(error) = self.apply_effect(&entry, undo) {
            return (Outcome::Refused(error), None);
        }
        let canonical = canonical_json(&entry);
        undo.push(Undo::Head(self.head));
        self.head = Head {
            seq: entry.seq,
            hash: canonical_hash(&canonical),
            at_ms,
        };
        undo.push(Undo::Seen(transfer.id.clone()));
        self.seen.insert(
            transfer.id.clone(),
            Seen {
                digest,
                seq: entry.seq,
            },
        );
        (Outcome::Applied(entry), Some(canonical))
    }

    /// Checks a transfer's own fields and the holds it names, and says what it would do.
    /// Balances are checked when the effect applies.
    fn check(&self, transfer: &Transfer, now_ms: i64) -> Result<Effect, TransferError> {
        check_text("id", &transfer.id, 1, TRANSFER_ID_BYTES_MAX)?;
        check_text("reference", &transfer.reference, 0, REFERENCE_BYTES_MAX)?;
        match &transfer.op {
            Op::Move {
                debit,
                credit,
                amount,
            } => {
                check_pair(debit, credit, *amount)?;
                Ok(Effect::Move {
                    debit: debit.clone(),
                    credit: credit.clone(),
                    amount: *amount,
                })
            }
            Op::Hold {
                debit,
                credit,
                amount,
                expires_at_ms,
                on_expiry,
            } => {
                check_pair(debit, credit, *amount)?;
                if *expires_at_ms <= now_ms {
                    return Err(TransferError::invalid(
                        "expires_at_ms",
                        "must be in the future",
                    ));
                }
                if self.holds.contains_key(&transfer.id) {
                    return Err(TransferError::IdReused {
                        id: transfer.id.clone(),
                    });
                }
                Ok(Effect::Hold {
                    debit: debit.clone(),
                    credit: credit.clone(),
                    amount: *amount,
                    expires_at_ms: *expires_at_ms,
                    on_expiry: *on_expiry,
                })
            }
            Op::Post { hold, amount } => {
                let open = self.open_hold(hold)?;
                if now_ms >= open.expires_at_ms {
                    return Err(TransferError::HoldExpired { hold: hold.clone() });
                }
                let posted = amount.unwrap_or(open.amount);
                if posted > open.amount {
                    return Err(TransferError::invalid("amount", "exceeds the hold"));
                }
                Ok(resolve(open, posted, Resolution::Posted))
            }
            Op::Void { hold } => Ok(resolve(self.open_hold(hold)?, 0, Resolution::Voided)),
            Op::Expire { hold } => {
                let open = self.open_hold(hold)?;
                if now_ms < open.expires_at_ms {
                    return Err(TransferError::HoldNotDue { hold: hold.clone() });
                }
                let posted = match open.on_expiry {
                    OnExpiry::Post => open.amount,
                    OnExpiry::Void => 0,
                };
                Ok(resolve(open, posted, Resolution::Expired))
            }
            Op::Record { body } => {
                check_text("body", body, 1, RECORD_BYTES_MAX)?;
                Ok(Effect::Record { body: body.clone() })
            }
        }
    }

    fn open_hold(&self, id: &str) -> Result<&Hold, TransferError> {
        let hold = self
            .holds
            .get(id)
            .ok_or_else(|| TransferError::HoldNotFound {
                hold: id.to_owned(),
            })?;
        match hold.resolution {
            Some(resolution) => Err(TransferError::HoldResolved {
                hold: id.to_owned(),
                resolution,
            }),
            None => Ok(hold),
        }
    }

    /// Applies an entry's effect, refusing one that would overdraw an account that may not go
    /// below zero. Used both for new entries and to replay a log.
    ///
    /// Beyond balances, it re-checks what the book's rules guarantee of any entry it wrote, so
    /// a log signed by a careless or dishonest coordinator does not verify either: accounts of
    /// one token, amounts in range, ids used once, and holds resolved as their expiry allows.
    pub fn replay(&mut self, entry: &Entry) -> Result<(), TransferError> {
        if self.seen.contains_key(&entry.id) {
            return Err(TransferError::IdReused {
                id: entry.id.clone(),
            });
        }
        check_text("id", &entry.id, 1, TRANSFER_ID_BYTES_MAX)?;
        check_text("reference", &entry.reference, 0, REFERENCE_BYTES_MAX)?;
        self.check_effect(entry)?;
        let mut undo = Vec::new();
        let result = self.apply_effect(entry, &mut undo);
        if result.is_err() {
            self.roll_back(undo);
        } else {
            self.seen.insert(
                entry.id.clone(),
                Seen {
                    digest: [0; 32],
                    seq: entry.seq,
                },
            );
            self.head = Head {
                seq: entry.seq,
                hash: entry_hash(entry),
                at_ms: entry.at_ms,
            };
        }
        result
    }

    /// The rules an effect must satisfy that [`Book::check`] enforced when it was made.
    fn check_effect(&self, entry: &Entry) -> Result<(), TransferError> {
        match &entry.effect {
            Effect::Move {
                debit,
                credit,
                amount,
            }
            | Effect::Hold {
                debit,
                credit,
                amount,
                ..
            } => check_pair(debit, credit, *amount),
            Effect::Resolve {
                hold,
                posted,
                resolution,
                ..
            } => {
                let open = self.open_hold(hold)?;
                let allowed = match resolution {
                    Resolution::Posted => entry.at_ms < open.expires_at_ms,
                    Resolution::Voided => *posted == 0,
                    Resolution::Expired => {
                        let due = match open.on_expiry {
                            OnExpiry::Post => open.amount,
                            OnExpiry::Void => 0,
                        };
                        entry.at_ms >= open.expires_at_ms && *posted == due
                    }
                };
                if allowed {
                    Ok(())
                } else {
                    Err(TransferError::invalid(
                        "effect",
                        "resolves its hold against the hold's expiry rule",
                    ))
                }
            }
            Effect::Record { body } => check_text("body", body, 1, RECORD_BYTES_MAX),
        }
    }

    fn apply_effect(&mut self, entry: &Entry, undo: &mut Vec<Undo>) -> Result<(), TransferError> {
        match &entry.effect {
            Effect::Move {
                debit,
                credit,
                amount,
            } => {
                let amount = signed(*amount)?;
                self.change(debit, -amount, 0, undo)?;
                self.change(credit, amount, 0, undo)
            }
            Effect::Hold {
                debit,
                credit,
                amount,
                expires_at_ms,
                on_expiry,
            } => {
                if self.holds.contains_key(&entry.id) {
                    return Err(TransferError::IdReused {
                        id: entry.id.clone(),
                    });
                }
                self.change(debit, 0, signed(*amount)?, undo)?;
                undo.push(Undo::Hold(entry.id.clone(), None));
                self.holds.insert(
                    entry.id.clone(),
                    Hold {
                        id: entry.id.clone(),
                        debit: debit.clone(),
                        credit: credit.clone(),
                        amount: *amount,
                        expires_at_ms: *expires_at_ms,
                        on_expiry: *on_expiry,
                        resolution: None,
                    },
                );
                Ok(())
            }
            Effect::Resolve {
                hold,
                debit,
                credit,
                posted,
                released,
                resolution,
            } => {
                let open = self.open_hold(hold)?.clone();
                let matches = open.debit == *debit
                    && open.credit == *credit
                    && posted.checked_add(*released) == Some(open.amount);
                if !matches {
                    return Err(TransferError::invalid("effect", "does not match its hold"));
                }
                let (held, posted) = (signed(open.amount)?, signed(*posted)?);
                self.change(debit, -posted, -held, undo)?;
                self.change(credit, posted, 0, undo)?;
                undo.push(Undo::Hold(hold.clone(), Some(open.clone())));
                self.holds.insert(
                    hold.clone(),
                    Hold {
                        resolution: Some(*resolution),
                        ..open
                    },
                );
                Ok(())
            }
            Effect::Record { .. } => Ok(()),
        }
    }

    /// Changes one balance, refusing an overdraft. A debit may always shrink its own hold.
    fn change(
        &mut self,
        account: &AccountId,
        posted_delta: i64,
        held_delta: i64,
        undo: &mut Vec<Undo>,
    ) -> Result<(), TransferError> {
        let before = self.balances.get(account).copied();
        let old = before.unwrap_or_default();
        let (Some(posted), Some(held)) = (
            old.posted.checked_add(posted_delta),
            old.held.checked_add(held_delta),
        ) else {
            return Err(TransferError::invalid("amount", "overflows a balance"));
        };
        let new = Balance { posted, held };
        if new.held < 0 {
            return Err(TransferError::invalid(
                "effect",
                "releases more than was held",
            ));
        }
        let spends = posted_delta < 0 || held_delta > 0;
        if spends && !account.may_go_negative() && new.available() < 0 {
            return Err(TransferError::InsufficientFunds {
                account: account.to_string(),
                available: old.available(),
                needed: (-posted_delta + held_delta).unsigned_abs(),
            });
        }
        undo.push(Undo::Balance(account.clone(), before));
        // One lookup for an account the book holds (the common case), no second key copy.
        match self.balances.get_mut(account) {
            Some(balance) => *balance = new,
            None => {
                self.balances.insert(account.clone(), new);
            }
        }
        Ok(())
    }
}

fn resolve(hold: &Hold, posted: u64, resolution: Resolution) -> Effect {
    Effect::Resolve {
        hold: hold.id.clone(),
        debit: hold.debit.clone(),
        credit: hold.credit.clone(),
        posted,
        released: hold.amount - posted,
        resolution,
    }
}

fn check_pair(debit: &AccountId, credit: &AccountId, amount: u64) -> Result<(), TransferError> {
    if amount == 0 || amount > AMOUNT_MAX {
        return Err(TransferError::invalid(
            "amount",
            "must be between 1 and 10^18 base units",
        ));
    }
    if debit == credit {
        return Err(TransferError::invalid("credit", "must differ from debit"));
    }
    if debit.token() != credit.token() {
        return Err(TransferError::invalid(
            "credit",
            "must be in the same token as debit",
        ));
    }
    Ok(())
}

fn check_text(
    field: &str,
    text: &str,
    bytes_min: usize,
    bytes_max: usize,
) -> Result<(), TransferError> {
    if text.len() < bytes_min || text.len() > bytes_max {
        return Err(TransferError::Invalid {
            field: field.to_owned(),
            problem: format!("must be {bytes_min} to {bytes_max} bytes"),
        });
    }
    if text.chars().any(char::is_control) && field != "body" {
        return Err(TransferError::invalid(
            field,
            "must not hold control characters",
        ));
    }
    Ok(())
}

/// An amount as a balance change; an amount past [`AMOUNT_MAX`] (only a forged log has one) is
/// refused.
fn signed(amount: u64) -> Result<i64, TransferError> {
    if amount > AMOUNT_MAX {
        return Err(TransferError::invalid("amount", "exceeds 10^18 base units"));
    }
    Ok(amount as i64)
}

/// The id of a transfer that settles another (an expiry, an appeal): `PREFIX-ID` when that
/// is a valid id, else `PREFIX-` and a hash of the other id, so it is always valid and the
/// same for the same other.
pub fn derived_id(prefix: &str, of: &str) -> String {
    let plain = format!("{prefix}-{of}");
    if plain.len() <= TRANSFER_ID_BYTES_MAX && plain.is_ascii() {
        return plain;
    }
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(of.as_bytes()));
    format!("{prefix}-{}", &digest[..40])
}

/// A hash of a transfer's content, to tell a retry from another transfer with the same id.
pub fn transfer_digest(transfer: &Transfer) -> Hash {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(transfer).expect("a transfer serializes");
    Sha256::digest(&bytes).into()
}

/// The total of every balance in one token: zero after every batch, by construction.
pub fn sum_of_balances(book: &Book, token: Token) -> i64 {
    book.balances()
        .filter(|(account, _)| account.token() == token)
        .map(|(_, balance)| balance.posted)
        .sum()
}
