//! The book's rules as examples, a property-based state machine over every operation, and the
//! log's export and proofs under tampering.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use crate::account::{AccountId, Purpose, Token};
use crate::book::{Book, Entry, Head, Kind, OnExpiry, Op, Outcome, Transfer, TransferError};
use crate::log::{
    EXPORT_FORMAT, EXPORT_VERSION, EpochSeal, ExportHeader, ExportLine, InclusionProof, SignedHead,
    canonical_hash, entry_hash, epoch_of, verify_export,
};
use crate::rent::{FeePolicy, NodeMinute, minute_transfers};

fn main(owner: &str, token: Token) -> AccountId {
    AccountId::main(owner, token)
}

fn external(token: Token) -> AccountId {
    AccountId::system(Purpose::External, token)
}

fn transfer(id: &str, kind: Kind, op: Op) -> Transfer {
    Transfer {
        id: id.to_owned(),
        kind,
        op,
        reference: String::new(),
        linked: false,
    }
}

fn mv(id: &str, debit: AccountId, credit: AccountId, amount: u64) -> Transfer {
    transfer(
        id,
        Kind::Transfer,
        Op::Move {
            debit,
            credit,
            amount,
        },
    )
}

fn applied(outcome: &Outcome) -> &Entry {
    match outcome {
        Outcome::Applied(entry) => entry,
        other => panic!("expected applied, got {other:?}"),
    }
}

#[test]
fn an_id_applies_once_and_other_content_under_it_is_refused() {
    let mut book = Book::default();
    let deposit = mv("t1", external(Token::Iosd), main("usr_a", Token::Iosd), 100);
    let first = book.apply_batch(std::slice::from_ref(&deposit), 0);
    assert_eq!(applied(&first[0]).seq, 1);
    let again = book.apply_batch(std::slice::from_ref(&deposit), 5);
    assert_eq!(again, vec![Outcome::Duplicate { seq: 1 }]);
    let other = mv("t1", external(Token::Iosd), main("usr_a", Token::Iosd), 101);
    assert!(matches!(
        book.apply_batch(&[other], 5)[0],
        Outcome::Refused(TransferError::IdReused { .. })
    ));
    assert_eq!(book.balance(&main("usr_a", Token::Iosd)).posted, 100);
}

#[test]
fn overdrafts_are_refused_and_a_failed_link_undoes_its_chain() {
    let mut book = Book::default();
    let a = main("usr_a", Token::Io);
    let b = main("usr_b", Token::Io);
    book.apply_batch(&[mv("d", external(Token::Io), a.clone(), 50)], 0);
    let mut first = mv("x1", a.clone(), b.clone(), 30);
    first.linked = true;
    let second = mv("x2", a.clone(), b.clone(), 30);
    let (outcomes, canonical) = book.apply_batch_canonical(&[first, second], 1);
    assert_eq!(canonical, [None, None], "no JSON for the undone chain");
    assert_eq!(
        outcomes[0],
        Outcome::Refused(TransferError::LinkedFailed),
        "{outcomes:?}"
    );
    assert!(matches!(
        outcomes[1],
        Outcome::Refused(TransferError::InsufficientFunds { .. })
    ));
    assert_eq!(book.balance(&a).posted, 50);
    assert_eq!(book.head().seq, 1, "the chain's entries were undone");
    // The ids of a failed chain stay free.
    let retry = book.apply_batch(&[mv("x1", a.clone(), b.clone(), 30)], 2);
    assert_eq!(applied(&retry[0]).seq, 2);
    assert!(matches!(
        book.apply_batch(
            &[mv("t", a.clone(), AccountId::main("usr_a", Token::Iosd), 1)],
            3
        )[0],
        Outcome::Refused(TransferError::Invalid { .. })
    ));
}

#[test]
fn a_hold_reserves_and_resolves_once() {
    let mut book = Book::default();
    let renter = main("usr_r", Token::Iosd);
    let escrow = AccountId::escrow("req_c", Token::Iosd);
    book.apply_batch(&[mv("d", external(Token::Iosd), renter.clone(), 100)], 0);
    let hold = transfer(
        "h1",
        Kind::Escrow,
        Op::Hold {
            debit: renter.clone(),
            credit: escrow.clone(),
            amount: 80,
            expires_at_ms: 1_000,
            on_expiry: OnExpiry::Void,
        },
    );
    book.apply_batch(&[hold], 10);
    assert_eq!(book.balance(&renter).available(), 20);
    assert!(matches!(
        book.apply_batch(&[mv("spend", renter.clone(), escrow.clone(), 21)], 11)[0],
        Outcome::Refused(TransferError::InsufficientFunds { .. })
    ));
    let too_much = transfer(
        "p0",
        Kind::Escrow,
        Op::Post {
            hold: "h1".into(),
            amount: Some(81),
        },
    );
    assert!(matches!(
        book.apply_batch(&[too_much], 12)[0],
        Outcome::Refused(TransferError::Invalid { .. })
    ));
    let post = transfer(
        "p1",
        Kind::Escrow,
        Op::Post {
            hold: "h1".into(),
            amount: Some(60),
        },
    );
    book.apply_batch(&[post], 13);
    assert_eq!(book.balance(&renter).posted, 40);
    assert_eq!(book.balance(&renter).held, 0);
    assert_eq!(book.balance(&escrow).posted, 60);
    let void = transfer("v1", Kind::Escrow, Op::Void { hold: "h1".into() });
    assert!(matches!(
        book.apply_batch(&[void], 14)[0],
        Outcome::Refused(TransferError::HoldResolved { .. })
    ));
}

#[test]
fn expiry_follows_the_servers_clock_and_the_holds_rule() {
    let mut book = Book::default();
    let stake = AccountId::stake("usr_s");
    let wallet = main("usr_s", Token::Io);
    book.apply_batch(&[mv("d", external(Token::Io), stake.clone(), 100)], 0);
    let unstake = transfer(
        "u1",
        Kind::Unstake,
        Op::Hold {
            debit: stake.clone(),
            credit: wallet.clone(),
            amount: 40,
            expires_at_ms: 500,
            on_expiry: OnExpiry::Post,
        },
    );
    book.apply_batch(&[unstake], 1);
    assert_eq!(book.holds_due(499), Vec::<String>::new());
    let early = transfer("e0", Kind::Unstake, Op::Expire { hold: "u1".into() });
    assert!(matches!(
        book.apply_batch(&[early], 499)[0],
        Outcome::Refused(TransferError::HoldNotDue { .. })
    ));
    let late_post = transfer(
        "p",
        Kind::Unstake,
        Op::Post {
            hold: "u1".into(),
            amount: None,
        },
    );
    assert!(matches!(
        book.apply_batch(&[late_post], 500)[0],
        Outcome::Refused(TransferError::HoldExpired { .. })
    ));
    assert_eq!(book.holds_due(500), vec!["u1".to_owned()]);
    let expire = transfer("e1", Kind::Unstake, Op::Expire { hold: "u1".into() });
    book.apply_batch(&[expire], 500);
    assert_eq!(book.balance(&wallet).posted, 40);
    assert_eq!(book.balance(&stake).available(), 60);
}

#[test]
fn a_paid_minute_splits_rent_and_fees_and_pays_once() {
    let mut book = Book::default();
    let escrow = AccountId::escrow("req_c", Token::Iosd);
    book.apply_batch(
        &[mv("d", external(Token::Iosd), escrow.clone(), 10_000_000)],
        0,
    );
    let minute = NodeMinute {
        escrow_owner: "req_c".into(),
        supplier: "usr_s".into(),
        node_index: 0,
        minute: 0,
        price_per_hour: 6_000_000,
        token: Token::Iosd,
    };
    let transfers = minute_transfers(&minute, &FeePolicy::default());
    book.apply_batch(&transfers, 1);
    // 100,000 of rent: 250 supplier fee, 2,250 renter fee.
    assert_eq!(book.balance(&main("usr_s", Token::Iosd)).posted, 99_750);
    assert_eq!(
        book.balance(&AccountId::system(Purpose::Treasury, Token::Iosd))
            .posted,
        2_500
    );
    let again = book.apply_batch(&transfers, 2);
    assert!(again.iter().all(|o| matches!(o, Outcome::Duplicate { .. })));
}

// --- the state machine ---------------------------------------------------------------------

const USERS: [&str; 3] = ["usr_a", "usr_b", "usr_c"];

#[derive(Debug, Clone)]
enum Step {
    Deposit {
        user: usize,
        token: Token,
        amount: u64,
    },
    Withdraw {
        user: usize,
        token: Token,
        amount: u64,
    },
    Pay {
        from: usize,
        to: usize,
        token: Token,
        amount: u64,
    },
    Hold {
        user: usize,
        amount: u64,
        ttl_ms: i64,
    },
    Post {
        hold: usize,
        amount: u64,
    },
    Void {
        hold: usize,
    },
    Expire,
    Rent {
        escrow_user: usize,
        supplier: usize,
        price: u64,
    },
    Reward {
        user: usize,
        amount: u64,
    },
    Stake {
        user: usize,
        amount: u64,
    },
    Unstake {
        user: usize,
        amount: u64,
        ttl_ms: i64,
    },
    Slash {
        user: usize,
        amount: u64,
        ttl_ms: i64,
    },
    Burn {
        user: usize,
        amount: u64,
    },
    Resend {
        back: usize,
    },
    Tick {
        ms: i64,
    },
}

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![Just(Token::Io), Just(Token::Iosd)]
}

fn step() -> impl Strategy<Value = Step> {
    let user = 0..USERS.len();
    let amount = 1u64..2_000;
    prop_oneof![
        (user.clone(), token(), amount.clone()).prop_map(|(user, token, amount)| Step::Deposit {
            user,
            token,
            amount
        }),
        (user.clone(), token(), amount.clone()).prop_map(|(user, token, amount)| Step::Withdraw {
            user,
            token,
            amount
        }),
        (user.clone(), user.clone(), token(), amount.clone()).prop_map(
            |(from, to, token, amount)| Step::Pay {
                from,
                to,
                token,
                amount
            }
        ),
        (user.clone(), amount.clone(), 1i64..50).prop_map(|(user, amount, ttl_ms)| Step::Hold {
            user,
            amount,
            ttl_ms
        }),
        (0usize..8, amount.clone()).prop_map(|(hold, amount)| Step::Post { hold, amount }),
        (0usize..8).prop_map(|hold| Step::Void { hold }),
        Just(Step::Expire),
        (user.clone(), user.clone(), 0u64..200_000).prop_map(|(escrow_user, supplier, price)| {
            Step::Rent {
                escrow_user,
                supplier,
                price,
            }
        }),
        (user.clone(), amount.clone()).prop_map(|(user, amount)| Step::Reward { user, amount }),
        (user.clone(), amount.clone()).prop_map(|(user, amount)| Step::Stake { user, amount }),
        (user.clone(), amount.clone(), 1i64..50).prop_map(|(user, amount, ttl_ms)| Step::Unstake {
            user,
            amount,
            ttl_ms
        }),
        (user.clone(), amount.clone(), 1i64..50).prop_map(|(user, amount, ttl_ms)| Step::Slash {
            user,
            amount,
            ttl_ms
        }),
        (user.clone(), amount).prop_map(|(user, amount)| Step::Burn { user, amount }),
        (0usize..5).prop_map(|back| Step::Resend { back }),
        (0i64..30).prop_map(|ms| Step::Tick { ms }),
    ]
}

/// The test's own account of supply: what it minted and burned, per token.
#[derive(Default)]
struct Model {
    now_ms: i64,
    next_id: u64,
    holds: Vec<String>,
    sent: Vec<Vec<Transfer>>,
    minted: HashMap<Token, i64>,
    burned: HashMap<Token, i64>,
    rent_minutes: u64,
    entries: Vec<Entry>,
}

impl Model {
    fn id(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}-{}", self.next_id)
    }

    fn batch(&mut self, step: &Step, book: &Book) -> Vec<Transfer> {
        let user = |i: usize| USERS[i];
        match *step {
            Step::Deposit {
                user: u,
                token,
                amount,
            } => {
                vec![transfer(
                    &self.id("dep"),
                    Kind::Deposit,
                    Op::Move {
                        debit: external(token),
                        credit: main(user(u), token),
                        amount,
                    },
                )]
            }
            Step::Withdraw {
                user: u,
                token,
                amount,
            } => {
                vec![transfer(
                    &self.id("wd"),
                    Kind::Withdrawal,
                    Op::Move {
                        debit: main(user(u), token),
                        credit: external(token),
                        amount,
                    },
                )]
            }
            Step::Pay {
                from,
                to,
                token,
                amount,
            } => {
                vec![mv(
                    &self.id("pay"),
                    main(user(from), token),
                    main(user(to), token),
                    amount,
                )]
            }
            Step::Hold {
                user: u,
                amount,
                ttl_ms,
            } => {
                let id = self.id("hold");
                self.holds.push(id.clone());
                vec![transfer(
                    &id,
                    Kind::Escrow,
                    Op::Hold {
                        debit: main(user(u), Token::Iosd),
                        credit: AccountId::escrow(user(u), Token::Iosd),
                        amount,
                        expires_at_ms: self.now_ms + ttl_ms,
                        on_expiry: OnExpiry::Void,
                    },
                )]
            }
            Step::Post { hold, amount } => match self.holds.get(hold).cloned() {
                Some(hold) => vec![transfer(
                    &self.id("post"),
                    Kind::Escrow,
                    Op::Post {
                        hold,
                        amount: Some(amount),
                    },
                )],
                None => vec![],
            },
            Step::Void { hold } => match self.holds.get(hold).cloned() {
                Some(hold) => vec![transfer(&self.id("void"), Kind::Escrow, Op::Void { hold })],
                None => vec![],
            },
            Step::Expire => book
                .holds_due(self.now_ms)
                .into_iter()
                .map(|hold| transfer(&format!("exp-{hold}"), Kind::Escrow, Op::Expire { hold }))
                .collect(),
            Step::Rent {
                escrow_user,
                supplier,
                price,
            } => {
                self.rent_minutes += 1;
                minute_transfers(
                    &NodeMinute {
                        escrow_owner: user(escrow_user).to_owned(),
                        supplier: user(supplier).to_owned(),
                        node_index: 0,
                        minute: self.rent_minutes,
                        price_per_hour: price,
                        token: Token::Iosd,
                    },
                    &FeePolicy::default(),
                )
            }
            Step::Reward { user: u, amount } => {
                vec![transfer(
                    &self.id("rw"),
                    Kind::Reward,
                    Op::Move {
                        debit: AccountId::system(Purpose::Emission, Token::Io),
                        credit: main(user(u), Token::Io),
                        amount,
                    },
                )]
            }
            Step::Stake { user: u, amount } => {
                vec![transfer(
                    &self.id("stk"),
                    Kind::Stake,
                    Op::Move {
                        debit: main(user(u), Token::Io),
                        credit: AccountId::stake(user(u)),
                        amount,
                    },
                )]
            }
            Step::Unstake {
                user: u,
                amount,
                ttl_ms,
            } => {
                vec![transfer(
                    &self.id("unstk"),
                    Kind::Unstake,
                    Op::Hold {
                        debit: AccountId::stake(user(u)),
                        credit: main(user(u), Token::Io),
                        amount,
                        expires_at_ms: self.now_ms + ttl_ms,
                        on_expiry: OnExpiry::Post,
                    },
                )]
            }
            Step::Slash {
                user: u,
                amount,
                ttl_ms,
            } => {
                let id = self.id("slash");
                self.holds.push(id.clone());
                vec![transfer(
                    &id,
                    Kind::Slash,
                    Op::Hold {
                        debit: AccountId::stake(user(u)),
                        credit: AccountId::system(Purpose::Burn, Token::Io),
                        amount,
                        expires_at_ms: self.now_ms + ttl_ms,
                        on_expiry: OnExpiry::Post,
                    },
                )]
            }
            Step::Burn { user: u, amount } => {
                vec![transfer(
                    &self.id("burn"),
                    Kind::Burn,
                    Op::Move {
                        debit: main(user(u), Token::Io),
                        credit: AccountId::system(Purpose::Burn, Token::Io),
                        amount,
                    },
                )]
            }
            Step::Resend { back } => {
                let len = self.sent.len();
                if back < len {
                    self.sent[len - 1 - back].clone()
                } else {
                    vec![]
                }
            }
            Step::Tick { .. } => vec![],
        }
    }

    /// Supply bookkeeping from what actually applied.
    fn record(&mut self, entry: &Entry) {
        let Some((debit, credit)) = entry.effect.accounts() else {
            return;
        };
        let moved = match &entry.effect {
            crate::book::Effect::Move { amount, .. } => *amount,
            crate::book::Effect::Resolve { posted, .. } => *posted,
            _ => 0,
        };
        let moved = i64::try_from(moved).unwrap();
        let token = debit.token();
        if debit.may_go_negative() {
            *self.minted.entry(token).or_default() += moved;
        }
        if credit.may_go_negative() {
            *self.minted.entry(token).or_default() -= moved;
        }
        if credit.purpose() == Purpose::Burn {
            *self.burned.entry(token).or_default() += moved;
        }
        self.entries.push(entry.clone());
    }
}

fn check_invariants(book: &Book, model: &Model) {
    for token in Token::ALL {
        let mut sum = 0i64;
        let mut circulating = 0i64;
        let mut burned = 0i64;
        for (account, balance) in book.balances() {
            if account.token() != token {
                continue;
            }
            sum += balance.posted;
            assert!(balance.held >= 0);
            if account.may_go_negative() {
                continue;
            }
            assert!(balance.available() >= 0, "{account} overdrawn: {balance:?}");
            if account.purpose() == Purpose::Burn {
                burned += balance.posted;
            } else {
                circulating += balance.posted;
            }
        }
        assert_eq!(sum, 0, "debits equal credits in {token}");
        let minted = model.minted.get(&token).copied().unwrap_or(0);
        let model_burned = model.burned.get(&token).copied().unwrap_or(0);
        assert_eq!(burned, model_burned, "burned {token}");
        assert_eq!(circulating, minted - model_burned, "supply of {token}");
    }
    let mut held: HashMap<&AccountId, i64> = HashMap::new();
    for hold in book.holds().filter(|h| h.resolution.is_none()) {
        *held.entry(&hold.debit).or_default() += i64::try_from(hold.amount).unwrap();
    }
    for (account, balance) in book.balances() {
        assert_eq!(
            balance.held,
            held.get(account).copied().unwrap_or(0),
            "held on {account} equals its open holds"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn money_is_conserved_through_any_sequence(steps in prop::collection::vec(step(), 1..80)) {
        let mut book = Book::default();
        let mut model = Model::default();
        for step in &steps {
            if let Step::Tick { ms } = step {
                model.now_ms += ms;
            }
            let batch = model.batch(step, &book);
            let (outcomes, canonical) = book.apply_batch_canonical(&batch, model.now_ms);
            prop_assert_eq!(outcomes.len(), batch.len());
            prop_assert_eq!(canonical.len(), batch.len());
            for (outcome, json) in outcomes.iter().zip(&canonical) {
                match (outcome, json) {
                    (Outcome::Applied(entry), Some(json)) => {
                        // What a writer stores is what the chain hashed.
                        prop_assert_eq!(json, &serde_json::to_string(entry).unwrap());
                        prop_assert_eq!(canonical_hash(json), entry_hash(entry));
                        model.record(entry);
                    }
                    (Outcome::Applied(_), None) => prop_assert!(false, "applied without JSON"),
                    (_, json) => prop_assert!(json.is_none(), "JSON for {:?}", outcome),
                }
            }
            if !matches!(step, Step::Resend { .. }) {
                model.sent.push(batch);
            }
            check_invariants(&book, &model);
        }
        // Replaying the log from zero gives the same book.
        let mut replayed = Book::default();
        for entry in &model.entries {
            replayed.replay(entry).unwrap();
        }
        prop_assert_eq!(replayed.head(), book.head());
        for (account, balance) in book.balances() {
            prop_assert_eq!(replayed.balance(account), *balance);
        }
    }
}

// --- the log ----------------------------------------------------------------------------

const EPOCH_MS: u64 = 100;

/// A book with entries over three epochs, and its export text.
fn exported(key: &SigningKey) -> (Vec<Entry>, String) {
    let mut book = Book::new(Head::default());
    let mut entries = Vec::new();
    for i in 0..30u64 {
        let at = i64::try_from(i * 10).unwrap();
        let deposit = transfer(
            &format!("t{i}"),
            Kind::Deposit,
            Op::Move {
                debit: external(Token::Iosd),
                credit: main(USERS[(i % 3) as usize], Token::Iosd),
                amount: 1 + i,
            },
        );
        for outcome in book.apply_batch(&[deposit], at) {
            entries.push(applied(&outcome).clone());
        }
    }
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        public_key: hex::encode(key.verifying_key().to_bytes()),
        epoch_ms: EPOCH_MS,
    };
    let mut lines = vec![serde_json::to_string(&header).unwrap()];
    let mut start = 0;
    while start < entries.len() {
        let epoch = epoch_of(entries[start].at_ms, EPOCH_MS);
        let end = entries[start..]
            .iter()
            .position(|e| epoch_of(e.at_ms, EPOCH_MS) != epoch)
            .map_or(entries.len(), |i| start + i);
        for entry in &entries[start..end] {
            lines.push(serde_json::to_string(&ExportLine::Entry(entry.clone())).unwrap());
        }
        // The last epoch stays open.
        if end < entries.len() {
            let seal = EpochSeal::sign(epoch, 0, &entries[start..end], key);
            lines.push(serde_json::to_string(&ExportLine::Seal(seal)).unwrap());
        }
        start = end;
    }
    let head = SignedHead::sign(book.head().seq, &book.head().hash, key);
    lines.push(serde_json::to_string(&ExportLine::Head(head)).unwrap());
    (entries, lines.join("\n") + "\n")
}

#[test]
fn an_export_verifies_and_any_changed_byte_is_caught() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let (_, text) = exported(&key);
    let verified = verify_export(&text).unwrap();
    assert_eq!(
        (
            verified.entries,
            verified.epochs_sealed,
            verified.entries_unsealed
        ),
        (30, 2, 10)
    );
    assert_eq!(
        verified.book.balance(&main("usr_a", Token::Iosd)).posted,
        (0..30).filter(|i| i % 3 == 0).map(|i| 1 + i).sum::<i64>()
    );
    let bytes = text.as_bytes();
    // Every byte, each changed to one of a few characters that keep JSON plausible.
    let replacements = [b'0', b'1', b'a', b'"', b' ', b'\n', b'f'];
    for position in 0..bytes.len() - 1 {
        for replacement in [replacements[position % 7], replacements[(position + 3) % 7]] {
            if bytes[position] == replacement {
                continue;
            }
            let mut changed = bytes.to_vec();
            changed[position] = replacement;
            let changed = String::from_utf8(changed).unwrap();
            assert!(
                verify_export(&changed).is_err(),
                "byte {position} changed to {:?} went unnoticed",
                replacement as char
            );
        }
    }
    // Dropping the last entry (and keeping the head) or the head itself is caught too.
    let without_head: String = text
        .lines()
        .take(text.lines().count() - 1)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(verify_export(&without_head).is_err());
    let other_key = SigningKey::from_bytes(&[8; 32]);
    let forged = text.replace(
        &hex::encode(key.verifying_key().to_bytes()),
        &hex::encode(other_key.verifying_key().to_bytes()),
    );
    assert!(
        verify_export(&forged).is_err(),
        "seals are signed by the header's key"
    );
}

#[test]
fn inclusion_proofs_verify_for_every_entry_and_fail_when_altered() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let (entries, _) = exported(&key);
    let epoch: Vec<Entry> = entries
        .iter()
        .filter(|e| epoch_of(e.at_ms, EPOCH_MS) == 1)
        .cloned()
        .collect();
    let seal = EpochSeal::sign(1, 0, &epoch, &key);
    for index in 0..epoch.len() {
        let proof = InclusionProof::build(&epoch, index, seal.clone());
        proof.verify(&key.verifying_key()).unwrap();
        let mut altered = proof.clone();
        altered.entry.reference = "x".into();
        assert!(altered.verify(&key.verifying_key()).is_err());
        let mut moved = proof.clone();
        moved.entry.seq += 1;
        assert!(moved.verify(&key.verifying_key()).is_err());
    }
    let proof = InclusionProof::build(&epoch, 0, seal);
    assert!(
        proof
            .verify(&SigningKey::from_bytes(&[1; 32]).verifying_key())
            .is_err()
    );
}

proptest! {
    #[test]
    fn the_export_verifier_never_panics_on_garbage(text in "\\PC{0,400}") {
        let _ = verify_export(&text);
    }
}

#[test]
fn replay_refuses_entries_the_book_would_never_write() {
    let mut book = Book::default();
    let mut entries = Vec::new();
    let hold = transfer(
        "h",
        Kind::Escrow,
        Op::Hold {
            debit: main("usr_a", Token::Iosd),
            credit: AccountId::escrow("req_x", Token::Iosd),
            amount: 10,
            expires_at_ms: 100,
            on_expiry: OnExpiry::Void,
        },
    );
    let batch = [
        mv("d", external(Token::Iosd), main("usr_a", Token::Iosd), 50),
        hold,
    ];
    for outcome in book.apply_batch(&batch, 0) {
        entries.push(applied(&outcome).clone());
    }
    let fresh = || {
        let mut replayed = Book::default();
        for entry in &entries {
            replayed.replay(entry).unwrap();
        }
        replayed
    };
    let forged = |effect: crate::book::Effect, id: &str, at_ms: i64| Entry {
        seq: 3,
        id: id.into(),
        at_ms,
        kind: Kind::Transfer,
        reference: String::new(),
        effect,
        prev_hash: hex::encode(book.head().hash),
    };
    let across_tokens = crate::book::Effect::Move {
        debit: main("usr_a", Token::Iosd),
        credit: main("usr_b", Token::Io),
        amount: 1,
    };
    let early_expiry = crate::book::Effect::Resolve {
        hold: "h".into(),
        debit: main("usr_a", Token::Iosd),
        credit: AccountId::escrow("req_x", Token::Iosd),
        posted: 0,
        released: 10,
        resolution: crate::book::Resolution::Expired,
    };
    let expired_but_paid = crate::book::Effect::Resolve {
        hold: "h".into(),
        debit: main("usr_a", Token::Iosd),
        credit: AccountId::escrow("req_x", Token::Iosd),
        posted: 10,
        released: 0,
        resolution: crate::book::Resolution::Expired,
    };
    let zero = crate::book::Effect::Move {
        debit: main("usr_a", Token::Iosd),
        credit: main("usr_b", Token::Iosd),
        amount: 0,
    };
    let fine = crate::book::Effect::Move {
        debit: main("usr_a", Token::Iosd),
        credit: main("usr_b", Token::Iosd),
        amount: 1,
    };
    for (effect, id, at_ms) in [
        (across_tokens, "x1", 5),
        (early_expiry, "x2", 99),
        (expired_but_paid, "x3", 100),
        (zero, "x4", 5),
        (fine.clone(), "d", 5),
    ] {
        let mut replayed = fresh();
        assert!(replayed.replay(&forged(effect, id, at_ms)).is_err(), "{id}");
    }
    fresh().replay(&forged(fine, "x5", 5)).unwrap();
}

#[test]
fn a_long_epoch_verifies_in_parts_sealed_in_order() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut book = Book::default();
    let entries: Vec<Entry> = (0..10)
        .map(|i| {
            let deposit = mv(
                &format!("p{i}"),
                external(Token::Io),
                main("usr_a", Token::Io),
                1,
            );
            applied(&book.apply_batch(&[deposit], 1)[0]).clone()
        })
        .collect();
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        version: EXPORT_VERSION,
        public_key: hex::encode(key.verifying_key().to_bytes()),
        epoch_ms: EPOCH_MS,
    };
    let text = |parts: [u32; 2]| {
        let mut lines = vec![serde_json::to_string(&header).unwrap()];
        for (range, part) in [(0..6, parts[0]), (6..10, parts[1])] {
            for entry in &entries[range.clone()] {
                lines.push(serde_json::to_string(&ExportLine::Entry(entry.clone())).unwrap());
            }
            let seal = EpochSeal::sign(0, part, &entries[range], &key);
            lines.push(serde_json::to_string(&ExportLine::Seal(seal)).unwrap());
        }
        let head = SignedHead::sign(book.head().seq, &book.head().hash, &key);
        lines.push(serde_json::to_string(&ExportLine::Head(head)).unwrap());
        lines.join("\n")
    };
    let verified = verify_export(&text([0, 1])).unwrap();
    assert_eq!((verified.epochs_sealed, verified.entries_unsealed), (2, 0));
    assert!(verify_export(&text([0, 0])).is_err());
    assert!(verify_export(&text([1, 2])).is_err());
}

#[test]
fn derived_ids_are_always_valid_and_stable() {
    assert_eq!(crate::book::derived_id("expire", "h1"), "expire-h1");
    let long = "é".repeat(40);
    let id = crate::book::derived_id("expire", &long);
    assert!(id.len() <= crate::book::TRANSFER_ID_BYTES_MAX && id.is_ascii());
    assert_eq!(id, crate::book::derived_id("expire", &long));
    assert_ne!(id, crate::book::derived_id("expire", &"è".repeat(40)));
}

proptest! {
    /// The fast hash spelling is `hex::encode`'s, which `decode_hash` reads back.
    #[test]
    fn encode_hash_spells_hashes_as_hex_does(hash in any::<[u8; 32]>()) {
        let text = crate::log::encode_hash(&hash);
        prop_assert_eq!(&text, &hex::encode(hash));
        prop_assert_eq!(crate::log::decode_hash(&text), Some(hash));
    }

    /// Account names print as `OWNER:PURPOSE:TOKEN` and parse back to the same account.
    #[test]
    fn account_names_round_trip(owner in "usr_[a-z0-9_]{1,20}", iosd in any::<bool>()) {
        let token = if iosd { Token::Iosd } else { Token::Io };
        let account = AccountId::main(&owner, token);
        let name = account.to_string();
        prop_assert_eq!(&name, &format!("{owner}:main:{}", token.as_str()));
        prop_assert_eq!(name.parse::<AccountId>().unwrap(), account);
    }
}
