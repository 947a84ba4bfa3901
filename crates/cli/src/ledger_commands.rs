//! Ledger commands: `flotilla wallet ...`, `flotilla ledger ...` (export and verify offline,
//! proofs, epochs, admin slashes) and `flotilla proposals ...`. Amounts are decimal tokens on
//! the command line (`12.5`) and exact base units underneath.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flotilla_ledger::{InclusionProof, format_micros, parse_micros, verify_export};
use flotilla_proto::api::{
    DepositRequest, EntryInfo, EpochInfo, FaucetRequest, LedgerInfo, ProposalCreate, ProposalInfo,
    SlashRequest, SpendingInfo, StakeInfo, StakeRequest, TransferRequest, TransferResult,
    VoteRequest, WalletInfo, WithdrawalRequest,
};

use crate::client_commands::Connection;
use crate::output::{Format, opt, print};

/// A money-moving command's retry guard.
#[derive(Debug, Clone, clap::Args)]
pub struct Idempotency {
    /// Applied once per key: rerunning with the same key answers the first outcome. A fresh
    /// key is made when absent.
    #[arg(long)]
    idempotency_key: Option<String>,
}

impl Idempotency {
    fn key(&self) -> String {
        self.idempotency_key
            .clone()
            .unwrap_or_else(|| flotilla_proto::id::new_id(flotilla_proto::id::IdKind::Transfer))
    }
}

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Balances (main, stake, escrow) and open holds.
    Balance(Connection),
    /// What rentals cost this calendar month (UTC): paid into escrows less refunds.
    Spending(Connection),
    /// Entries that touched the caller's accounts, newest first.
    History {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Entries before this sequence number.
        #[arg(long)]
        before: Option<u64>,
    },
    /// Send tokens to another account.
    Transfer {
        #[command(flatten)]
        connection: Connection,
        /// The receiving account (usr_...).
        to: String,
        /// Tokens, such as 12.5.
        amount: String,
        #[arg(long, default_value = "IOSD")]
        token: String,
        #[arg(long, default_value = "")]
        reference: String,
        #[command(flatten)]
        idempotency: Idempotency,
    },
    /// Withdraw tokens to the outside world.
    Withdraw {
        #[command(flatten)]
        connection: Connection,
        amount: String,
        #[arg(long, default_value = "IOSD")]
        token: String,
        /// Where the funds go (bank reference or chain address).
        #[arg(long)]
        reference: String,
        #[command(flatten)]
        idempotency: Idempotency,
    },
    /// Demo funds from a coordinator that runs a faucet (`flotilla dev`).
    Faucet {
        #[command(flatten)]
        connection: Connection,
        amount: String,
        #[arg(long, default_value = "IOSD")]
        token: String,
        #[command(flatten)]
        idempotency: Idempotency,
    },
    /// Admin: record a deposit (IOSD minted against USD, or IO settled in).
    Deposit {
        #[command(flatten)]
        connection: Connection,
        account: String,
        amount: String,
        #[arg(long, default_value = "IOSD")]
        token: String,
        #[arg(long)]
        reference: String,
        #[command(flatten)]
        idempotency: Idempotency,
    },
    /// Stake IO; without an amount, show the stake and what the caller's devices need.
    Stake {
        #[command(flatten)]
        connection: Connection,
        amount: Option<String>,
        #[command(flatten)]
        idempotency: Idempotency,
    },
    /// Unstake IO: held for the cooldown (14 days by default), then spendable.
    Unstake {
        #[command(flatten)]
        connection: Connection,
        amount: String,
        #[command(flatten)]
        idempotency: Idempotency,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// The ledger's public key, head and supply.
    Info(Connection),
    /// Sealed epochs and their signed roots.
    Epochs {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Download the whole log to FILE, for `flotilla ledger verify`.
    Export {
        #[command(flatten)]
        connection: Connection,
        file: PathBuf,
    },
    /// Check an export offline: the chain, every signature, every balance replayed from zero,
    /// and any inclusion proofs given.
    Verify {
        file: PathBuf,
        /// An inclusion proof (from `flotilla ledger proof`) to check against the export's key.
        #[arg(long = "proof")]
        proofs: Vec<PathBuf>,
        /// The coordinator's ledger key you trust (hex); the export must be signed by it.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print an entry's inclusion proof (JSON), by sequence number or transfer id.
    Proof {
        #[command(flatten)]
        connection: Connection,
        entry: String,
    },
    /// Admin: slash stake for fraud (held through the appeal window, then burned).
    Slash {
        #[command(flatten)]
        connection: Connection,
        account: String,
        amount: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        evidence: String,
        #[command(flatten)]
        idempotency: Idempotency,
    },
    /// Admin: uphold an appeal, returning a slash's held stake.
    ReturnSlash {
        #[command(flatten)]
        connection: Connection,
        slash: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProposalsCommand {
    List(Connection),
    Show {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// Open a proposal (needs stake); votes are weighted by stake counted now.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        title: String,
        #[arg(long)]
        body: String,
        /// A choice; repeat for each (2 to 16).
        #[arg(long = "option", required = true)]
        options: Vec<String>,
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        voting_period_s: u64,
    },
    /// Vote for an option (by index); voting again changes the vote.
    Vote {
        #[command(flatten)]
        connection: Connection,
        id: String,
        option: u32,
    },
}

fn amount(text: &str) -> Result<u64> {
    parse_micros(text).map_err(|e| anyhow::anyhow!("amount {text:?}: {e}"))
}

fn print_result(format: Format, result: &TransferResult) {
    let entry = &result.entry;
    print(
        format,
        result,
        &[
            "STATUS", "SEQ", "KIND", "AMOUNT", "TOKEN", "DEBIT", "CREDIT",
        ],
        vec![vec![
            result.status.clone(),
            entry.seq.to_string(),
            entry.kind.clone(),
            format_micros(i64::try_from(entry.amount_micros).unwrap_or(i64::MAX)),
            opt(entry.token.clone()),
            opt(entry.debit.clone()),
            opt(entry.credit.clone()),
        ]],
    );
}

fn entry_rows(entries: &[EntryInfo]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.clone(),
                e.kind.clone(),
                e.effect.clone(),
                format_micros(i64::try_from(e.amount_micros).unwrap_or(i64::MAX)),
                opt(e.token.clone()),
                opt(e.debit.clone()),
                opt(e.credit.clone()),
                e.reference.clone(),
            ]
        })
        .collect()
}

pub async fn wallet(command: WalletCommand) -> Result<()> {
    match command {
        WalletCommand::Balance(connection) => {
            let wallet: WalletInfo = connection.client()?.get("wallet").await?;
            let mut rows: Vec<Vec<String>> = wallet
                .balances
                .iter()
                .map(|b| {
                    vec![
                        b.account.clone(),
                        format_micros(b.available_micros),
                        format_micros(b.held_micros),
                        format_micros(b.posted_micros),
                    ]
                })
                .collect();
            rows.extend(wallet.holds.iter().map(|h| {
                vec![
                    format!("  hold {} -> {}", h.id, h.credit),
                    String::new(),
                    format_micros(i64::try_from(h.amount_micros).unwrap_or(i64::MAX)),
                    format!("{} at {}", h.on_expiry, h.expires_at),
                ]
            }));
            print(
                connection.output,
                &wallet,
                &["ACCOUNT", "AVAILABLE", "HELD", "POSTED"],
                rows,
            );
        }
        WalletCommand::Spending(connection) => {
            let spending: SpendingInfo = connection.client()?.get("wallet/spending").await?;
            let rows = spending
                .tokens
                .iter()
                .map(|t| {
                    vec![
                        t.token.clone(),
                        format_micros(t.spent_micros),
                        spending.since.clone(),
                    ]
                })
                .collect();
            print(
                connection.output,
                &spending,
                &["TOKEN", "SPENT", "SINCE"],
                rows,
            );
            if !spending.complete {
                eprintln!("still adding up this month's entries: ask again for the rest");
            }
        }
        WalletCommand::History {
            connection,
            limit,
            before,
        } => {
            let mut path = format!("wallet/history?limit={limit}");
            if let Some(before) = before {
                path.push_str(&format!("&before={before}"));
            }
            let entries: Vec<EntryInfo> = connection.client()?.get(&path).await?;
            print(
                connection.output,
                &entries,
                &[
                    "SEQ", "AT", "KIND", "EFFECT", "AMOUNT", "TOKEN", "DEBIT", "CREDIT", "REF",
                ],
                entry_rows(&entries),
            );
        }
        WalletCommand::Transfer {
            connection,
            to,
            amount: text,
            token,
            reference,
            idempotency,
        } => {
            let body = TransferRequest {
                to,
                token,
                amount_micros: amount(&text)?,
                reference,
            };
            send_money(&connection, "wallet/transfers", &body, &idempotency).await?;
        }
        WalletCommand::Withdraw {
            connection,
            amount: text,
            token,
            reference,
            idempotency,
        } => {
            let body = WithdrawalRequest {
                token,
                amount_micros: amount(&text)?,
                reference,
            };
            send_money(&connection, "wallet/withdrawals", &body, &idempotency).await?;
        }
        WalletCommand::Faucet {
            connection,
            amount: text,
            token,
            idempotency,
        } => {
            let body = FaucetRequest {
                token,
                amount_micros: amount(&text)?,
            };
            send_money(&connection, "wallet/faucet", &body, &idempotency).await?;
        }
        WalletCommand::Deposit {
            connection,
            account,
            amount: text,
            token,
            reference,
            idempotency,
        } => {
            let body = DepositRequest {
                account_id: account,
                token,
                amount_micros: amount(&text)?,
                reference,
            };
            send_money(&connection, "ledger/deposits", &body, &idempotency).await?;
        }
        WalletCommand::Stake {
            connection,
            amount: None,
            ..
        } => {
            let info: StakeInfo = connection.client()?.get("wallet/stake").await?;
            print(
                connection.output,
                &info,
                &["STAKED", "REQUIRED", "HOLDS"],
                vec![vec![
                    format_micros(info.staked_micros),
                    format_micros(i64::try_from(info.required_micros).unwrap_or(i64::MAX)),
                    info.holds.len().to_string(),
                ]],
            );
        }
        WalletCommand::Stake {
            connection,
            amount: Some(text),
            idempotency,
        } => {
            stake_call(&connection, "wallet/stake", &text, &idempotency).await?;
        }
        WalletCommand::Unstake {
            connection,
            amount: text,
            idempotency,
        } => {
            stake_call(&connection, "wallet/unstake", &text, &idempotency).await?;
        }
    }
    Ok(())
}

async fn stake_call(
    connection: &Connection,
    path: &str,
    text: &str,
    idempotency: &Idempotency,
) -> Result<()> {
    let body = StakeRequest {
        amount_micros: amount(text)?,
    };
    send_money(connection, path, &body, idempotency).await
}

/// Posts a money-moving request under its idempotency key and prints the outcome.
async fn send_money<B: serde::Serialize>(
    connection: &Connection,
    path: &str,
    body: &B,
    idempotency: &Idempotency,
) -> Result<()> {
    let result: TransferResult = connection
        .client()?
        .post_idempotent(path, body, &idempotency.key())
        .await?;
    print_result(connection.output, &result);
    Ok(())
}

pub async fn ledger(command: LedgerCommand) -> Result<()> {
    match command {
        LedgerCommand::Info(connection) => {
            let info: LedgerInfo = connection.client()?.get("ledger").await?;
            let rows = info
                .supply
                .iter()
                .map(|s| {
                    vec![
                        s.token.clone(),
                        format_micros(s.circulating_micros),
                        format_micros(s.minted_micros),
                        format_micros(s.burned_micros),
                    ]
                })
                .collect();
            if connection.output == Format::Table {
                println!(
                    "key {}  head {} ({})  epoch {} ms",
                    info.public_key, info.head_seq, info.head_hash, info.epoch_ms
                );
            }
            print(
                connection.output,
                &info,
                &["TOKEN", "CIRCULATING", "MINTED", "BURNED"],
                rows,
            );
        }
        LedgerCommand::Epochs { connection, from } => {
            let epochs: Vec<EpochInfo> = connection
                .client()?
                .get(&format!("ledger/epochs?from={from}"))
                .await?;
            let rows = epochs
                .iter()
                .map(|e| {
                    vec![
                        e.epoch.to_string(),
                        e.first_seq.to_string(),
                        e.entry_count.to_string(),
                        e.root.clone(),
                    ]
                })
                .collect();
            print(
                connection.output,
                &epochs,
                &["EPOCH", "FIRST", "ENTRIES", "ROOT"],
                rows,
            );
        }
        LedgerCommand::Export { connection, file } => {
            let text = connection.client()?.get_text("ledger/export").await?;
            std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("wrote {} lines to {}", text.lines().count(), file.display());
        }
        LedgerCommand::Verify {
            file,
            proofs,
            key,
            output,
        } => verify(&file, &proofs, key.as_deref(), output)?,
        LedgerCommand::Proof { connection, entry } => {
            let proof: InclusionProof = connection
                .client()?
                .get(&format!("ledger/entries/{entry}/proof"))
                .await?;
            println!("{}", serde_json::to_string_pretty(&proof)?);
        }
        LedgerCommand::Slash {
            connection,
            account,
            amount: text,
            reason,
            evidence,
            idempotency,
        } => {
            let body = SlashRequest {
                account_id: account,
                amount_micros: amount(&text)?,
                reason,
                evidence,
            };
            send_money(&connection, "ledger/slashes", &body, &idempotency).await?;
        }
        LedgerCommand::ReturnSlash { connection, slash } => {
            let result: TransferResult = connection
                .client()?
                .post_empty(&format!("ledger/slashes/{slash}/return"))
                .await?;
            print_result(connection.output, &result);
        }
    }
    Ok(())
}

fn verify(file: &PathBuf, proofs: &[PathBuf], key: Option<&str>, output: Format) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let verified = verify_export(&text).map_err(|e| anyhow::anyhow!("invalid: {e}"))?;
    let signer = hex::encode(verified.public_key.to_bytes());
    match key {
        Some(trusted) if trusted != signer => {
            bail!("invalid: the export is signed by {signer}, not the trusted key {trusted}")
        }
        Some(_) => {}
        None => eprintln!(
            "note: checked against the key the export names; pass --key with the coordinator's \
             published key (flotilla ledger info) to know who signed it"
        ),
    }
    for path in proofs {
        let proof: InclusionProof = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{} is not an inclusion proof", path.display()))?;
        proof
            .verify(&verified.public_key)
            .map_err(|e| anyhow::anyhow!("invalid: {}: {e}", path.display()))?;
    }
    let mut balances: Vec<(String, i64)> = verified
        .book
        .balances()
        .map(|(account, balance)| (account.to_string(), balance.posted))
        .collect();
    balances.sort();
    let report = serde_json::json!({
        "valid": true,
        "public_key": signer,
        "entries": verified.entries,
        "epochs_sealed": verified.epochs_sealed,
        "entries_unsealed": verified.entries_unsealed,
        "head_hash": hex::encode(verified.head_hash),
        "proofs_checked": proofs.len(),
        "accounts": balances.len(),
    });
    match output {
        Format::Json => println!("{report}"),
        Format::Table => println!(
            "valid: {} entries chained from the first, {} epochs sealed and signed by {signer}, {} entries after the last seal, {} balances replayed from zero, {} inclusion proofs checked",
            verified.entries,
            verified.epochs_sealed,
            verified.entries_unsealed,
            balances.len(),
            proofs.len()
        ),
    }
    Ok(())
}

fn proposal_rows(proposals: &[ProposalInfo]) -> Vec<Vec<String>> {
    proposals
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.state.clone(),
                p.title.clone(),
                p.closes_at.clone(),
                opt(p.my_vote),
                opt(p.winner.and_then(|w| p.options.get(w as usize).cloned())),
            ]
        })
        .collect()
}

pub async fn proposals(command: ProposalsCommand) -> Result<()> {
    let headers = ["ID", "STATE", "TITLE", "CLOSES", "MY VOTE", "WINNER"];
    match command {
        ProposalsCommand::List(connection) => {
            let list: Vec<ProposalInfo> = connection.client()?.get("proposals").await?;
            print(connection.output, &list, &headers, proposal_rows(&list));
        }
        ProposalsCommand::Show { connection, id } => {
            let proposal: ProposalInfo =
                connection.client()?.get(&format!("proposals/{id}")).await?;
            let rows = proposal_rows(std::slice::from_ref(&proposal));
            print(connection.output, &proposal, &headers, rows);
        }
        ProposalsCommand::Create {
            connection,
            title,
            body,
            options,
            voting_period_s,
        } => {
            let create = ProposalCreate {
                title,
                body,
                options,
                voting_period_s,
            };
            let proposal: ProposalInfo = connection.client()?.post("proposals", &create).await?;
            let rows = proposal_rows(std::slice::from_ref(&proposal));
            print(connection.output, &proposal, &headers, rows);
        }
        ProposalsCommand::Vote {
            connection,
            id,
            option,
        } => {
            let proposal: ProposalInfo = connection
                .client()?
                .post(&format!("proposals/{id}/votes"), &VoteRequest { option })
                .await?;
            let rows = proposal_rows(std::slice::from_ref(&proposal));
            print(connection.output, &proposal, &headers, rows);
        }
    }
    Ok(())
}
