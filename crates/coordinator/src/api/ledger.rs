//! Money through the ledger: the caller's wallet (balances, history, transfers, withdrawals,
//! staking), admin deposits and slashes, the demo faucet, and the public log (key, supply,
//! sealed epochs, inclusion proofs, export).
//!
//! Requests that move money take an `Idempotency-Key` header: the transfer's id is derived
//! from the caller and the key, so a retry applies once and answers the first outcome, and
//! the same key with another body is refused with 409.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use flotilla_ledger::{
    AccountId, Effect, Entry, Hold, Kind, OnExpiry, Op, Outcome, Purpose, Token, Transfer,
    TransferError,
};
use flotilla_proto::api::{
    BalanceInfo, DepositRequest, EntryInfo, EpochInfo, ErrorBody, FaucetRequest, HoldInfo,
    LedgerInfo, Role, SlashRequest, SpendingInfo, StakeInfo, StakeRequest, SupplyInfo,
    TokenSpending, TransferRequest, TransferResult, WalletInfo, WithdrawalRequest,
};
use flotilla_proto::id::{IdKind, new_id};
use flotilla_proto::time::rfc3339;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, ClientIp, JsonBody, PathId, QueryParams};
use crate::ledger::{LedgerError, entry_from_row};
use crate::{AppState, now_ms};

/// Most one faucet call hands out: 10,000 tokens.
pub const FAUCET_MICROS_MAX: u64 = 10_000 * flotilla_ledger::MICROS_PER_TOKEN;
/// Longest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
const HISTORY_LIMIT_DEFAULT: u32 = 50;
const HISTORY_LIMIT_MAX: u32 = 500;
const EPOCHS_LIMIT_MAX: u32 = 500;
/// Entries per page of an export read from the store.
const EXPORT_PAGE_ENTRIES: u32 = 256;

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> ApiError {
        match error {
            LedgerError::Busy => ApiError::RateLimited { retry_after_s: 1 },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A refused transfer as an answer: bad fields are 422 naming the field, the rest 409.
fn refusal(error: TransferError) -> ApiError {
    let message = error.to_string();
    match error {
        TransferError::Invalid { field, .. } => ApiError::invalid(&field, message),
        TransferError::IdReused { .. } => ApiError::conflict("idempotency_key_reused", message),
        TransferError::InsufficientFunds { .. } => {
            ApiError::conflict("insufficient_funds", message)
        }
        TransferError::HoldNotFound { .. } => ApiError::NotFound("hold"),
        TransferError::HoldResolved { .. } => ApiError::conflict("hold_resolved", message),
        TransferError::HoldExpired { .. } => ApiError::conflict("hold_expired", message),
        TransferError::HoldNotDue { .. } => ApiError::conflict("hold_not_due", message),
        TransferError::LinkedFailed => ApiError::conflict("linked_transfer_failed", message),
    }
}

fn parse_token(field: &str, text: &str) -> ApiResult<Token> {
    text.parse()
        .map_err(|_| ApiError::invalid(field, "must be IO or IOSD"))
}

fn check_amount(field: &str, micros: u64) -> ApiResult<u64> {
    if micros == 0 || micros > flotilla_ledger::book::AMOUNT_MAX {
        return Err(ApiError::invalid(
            field,
            "must be between 1 and 10^18 base units",
        ));
    }
    Ok(micros)
}

fn check_reference(field: &str, text: &str, required: bool) -> ApiResult<()> {
    if required && text.trim().is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if text.len() > flotilla_ledger::book::REFERENCE_BYTES_MAX || text.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            field,
            "must be at most 256 bytes without control characters",
        ));
    }
    Ok(())
}

/// The transfer id: from the caller's `Idempotency-Key` when given, else fresh.
fn transfer_id(caller_id: &str, headers: &HeaderMap) -> ApiResult<String> {
    Ok(idempotency_key(caller_id, headers)?.unwrap_or_else(|| new_id(IdKind::Transfer)))
}

/// The caller's `Idempotency-Key`, hashed with the caller's id (so two callers' keys never
/// meet), or none when the request carries none.
pub(crate) fn idempotency_key(caller_id: &str, headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX)
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 128 visible ASCII characters",
            )
        })?;
    let digest = Sha256::new()
        .chain_update(caller_id.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    Ok(Some(format!("idk_{}", &hex::encode(digest)[..40])))
}

fn user_account(field: &str, owner: &str, purpose: Purpose, token: Token) -> ApiResult<AccountId> {
    AccountId::new(owner, purpose, token).map_err(|e| ApiError::invalid(field, e.0))
}

/// Submits one transfer and answers it: 201 applied, 200 an earlier identical one.
pub async fn apply(
    app: &AppState,
    transfer: Transfer,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    match app.ledger.submit_one(transfer).await? {
        Outcome::Applied(entry) => {
            let hash = hex::encode(flotilla_ledger::log::entry_hash(&entry));
            let result = TransferResult {
                status: "applied".into(),
                entry: entry_info(&entry, hash),
            };
            Ok((StatusCode::CREATED, Json(result)))
        }
        Outcome::Duplicate { seq } => {
            let row = app
                .store
                .ledger_entry(seq)
                .await?
                .ok_or_else(|| ApiError::Internal(format!("entry {seq} missing")))?;
            let entry = entry_from_row(&row)?;
            let result = TransferResult {
                status: "duplicate".into(),
                entry: entry_info(&entry, row.hash),
            };
            Ok((StatusCode::OK, Json(result)))
        }
        Outcome::Refused(error) => Err(refusal(error)),
    }
}

/// An entry as the API shows it.
pub fn entry_info(entry: &Entry, hash: String) -> EntryInfo {
    let (effect, amount) = match &entry.effect {
        Effect::Move { amount, .. } => ("move", *amount),
        Effect::Hold { amount, .. } => ("hold", *amount),
        Effect::Resolve { posted, .. } => ("resolve", *posted),
        Effect::Record { .. } => ("record", 0),
    };
    let accounts = entry.effect.accounts();
    EntryInfo {
        seq: entry.seq,
        id: entry.id.clone(),
        at: rfc3339(entry.at_ms),
        kind: serde_json::to_value(entry.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        reference: entry.reference.clone(),
        effect: effect.into(),
        debit: accounts.map(|(d, _)| d.to_string()),
        credit: accounts.map(|(_, c)| c.to_string()),
        token: accounts.map(|(d, _)| d.token().as_str().to_owned()),
        amount_micros: amount,
        hash,
        entry: serde_json::to_value(entry).unwrap_or_default(),
    }
}

fn hold_info(hold: &Hold) -> HoldInfo {
    HoldInfo {
        id: hold.id.clone(),
        debit: hold.debit.to_string(),
        credit: hold.credit.to_string(),
        amount_micros: hold.amount,
        expires_at: rfc3339(hold.expires_at_ms),
        on_expiry: match hold.on_expiry {
            OnExpiry::Post => "post",
            OnExpiry::Void => "void",
        }
        .into(),
    }
}

async fn open_holds(app: &AppState, owner: &str) -> ApiResult<Vec<Hold>> {
    let mut holds = Vec::new();
    for row in app.store.ledger_open_holds(owner).await? {
        let hold: Hold = serde_json::from_str(&row.body)
            .map_err(|e| ApiError::Internal(format!("stored hold: {e}")))?;
        holds.push(hold);
    }
    Ok(holds)
}

/// The caller's balances and open holds.
#[utoipa::path(get, path = "/api/v1/wallet", security(("api_key" = [])), responses((status = 200, body = WalletInfo)))]
pub async fn wallet(State(app): State<AppState>, caller: Caller) -> ApiResult<Json<WalletInfo>> {
    let owner = caller.account_id();
    let mut balances: Vec<BalanceInfo> = Vec::new();
    for row in app.store.ledger_accounts_of(owner).await? {
        let account: AccountId = row
            .id
            .parse()
            .map_err(|_| ApiError::Internal(format!("stored account {}", row.id)))?;
        balances.push(BalanceInfo {
            account: row.id,
            purpose: account.purpose().as_str().into(),
            token: account.token().as_str().into(),
            posted_micros: row.posted,
            held_micros: row.held,
            available_micros: row.posted - row.held,
        });
    }
    for token in Token::ALL {
        let main = AccountId::main(owner, token).to_string();
        if !balances.iter().any(|b| b.account == main) {
            balances.push(BalanceInfo {
                account: main,
                purpose: "main".into(),
                token: token.as_str().into(),
                posted_micros: 0,
                held_micros: 0,
                available_micros: 0,
            });
        }
    }
    balances.sort_by(|a, b| a.account.cmp(&b.account));
    let holds = open_holds(&app, owner)
        .await?
        .iter()
        .map(hold_info)
        .collect();
    Ok(Json(WalletInfo {
        account_id: owner.to_owned(),
        balances,
        holds,
    }))
}

/// What the caller spent on rentals this calendar month (UTC): paid into escrows less refunds.
#[utoipa::path(get, path = "/api/v1/wallet/spending", security(("api_key" = [])), responses((status = 200, body = SpendingInfo)))]
pub async fn spending(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SpendingInfo>> {
    let month = app
        .spending
        .this_month(&app.store, caller.account_id(), now_ms())
        .await?;
    Ok(Json(SpendingInfo {
        since: rfc3339(month.month_start_ms),
        tokens: Token::ALL
            .into_iter()
            .map(|token| TokenSpending {
                token: token.as_str().into(),
                spent_micros: month.spent.get(&token).copied().unwrap_or(0),
            })
            .collect(),
        complete: month.complete,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Entries before this sequence number (the previous page's last).
    pub before: Option<u64>,
    pub limit: Option<u32>,
}

/// Entries that touched the caller's accounts, newest first.
#[utoipa::path(get, path = "/api/v1/wallet/history", params(HistoryQuery), security(("api_key" = [])), responses((status = 200, body = [EntryInfo])))]
pub async fn history(
    State(app): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> ApiResult<Json<Vec<EntryInfo>>> {
    let limit = query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let rows = app
        .store
        .ledger_history(
            caller.account_id(),
            query.before.unwrap_or(u64::MAX >> 1),
            limit,
        )
        .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let entry = entry_from_row(&row)?;
        entries.push(entry_info(&entry, row.hash));
    }
    Ok(Json(entries))
}

/// Moves funds from the caller's main account to another account's.
#[utoipa::path(post, path = "/api/v1/wallet/transfers", request_body = TransferRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 200, body = TransferResult), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn transfer(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<TransferRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_write()?;
    let token = parse_token("token", &request.token)?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    check_reference("reference", &request.reference, false)?;
    let to = user_account("to", &request.to, Purpose::Main, token)?;
    if request.to == caller.account_id() {
        return Err(ApiError::invalid("to", "must be another account"));
    }
    if app.store.account(&request.to).await?.is_none() {
        return Err(ApiError::invalid("to", "no such account"));
    }
    let transfer = Transfer::moving(
        transfer_id(caller.account_id(), &headers)?,
        Kind::Transfer,
        AccountId::main(caller.account_id(), token),
        to,
        amount,
    )
    .with_reference(request.reference);
    apply(&app, transfer).await
}

/// Moves funds out to the external settlement account; an adapter settles them outside.
#[utoipa::path(post, path = "/api/v1/wallet/withdrawals", request_body = WithdrawalRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn withdraw(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<WithdrawalRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_write()?;
    let token = parse_token("token", &request.token)?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    check_reference("reference", &request.reference, true)?;
    let transfer = Transfer::moving(
        transfer_id(caller.account_id(), &headers)?,
        Kind::Withdrawal,
        AccountId::main(caller.account_id(), token),
        AccountId::system(Purpose::External, token),
        amount,
    )
    .with_reference(request.reference);
    apply(&app, transfer).await
}

/// Demo funds; only where the coordinator runs a faucet (`flotilla dev`).
#[utoipa::path(post, path = "/api/v1/wallet/faucet", request_body = FaucetRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn faucet(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<FaucetRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_write()?;
    if !app.config.faucet {
        return Err(ApiError::Forbidden(
            "this coordinator runs no faucet".into(),
        ));
    }
    let token = parse_token("token", &request.token)?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    if amount > FAUCET_MICROS_MAX {
        return Err(ApiError::invalid(
            "amount_micros",
            "at most 10,000 tokens per call",
        ));
    }
    let transfer = Transfer::moving(
        transfer_id(caller.account_id(), &headers)?,
        Kind::Faucet,
        AccountId::system(Purpose::External, token),
        AccountId::main(caller.account_id(), token),
        amount,
    )
    .with_reference("faucet".into());
    apply(&app, transfer).await
}

/// Admin: IOSD minted against a USD deposit, or IO settled in from outside.
#[utoipa::path(post, path = "/api/v1/ledger/deposits", request_body = DepositRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn deposit(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<DepositRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_role(Role::Admin)?;
    caller.require_write()?;
    let token = parse_token("token", &request.token)?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    check_reference("reference", &request.reference, true)?;
    let to = user_account("account_id", &request.account_id, Purpose::Main, token)?;
    if app.store.account(&request.account_id).await?.is_none() {
        return Err(ApiError::invalid("account_id", "no such account"));
    }
    let transfer = Transfer::moving(
        transfer_id(caller.account_id(), &headers)?,
        Kind::Deposit,
        AccountId::system(Purpose::External, token),
        to,
        amount,
    )
    .with_reference(request.reference);
    apply(&app, transfer).await
}

/// The caller's stake, its holds, and what their devices need staked to earn rewards.
#[utoipa::path(get, path = "/api/v1/wallet/stake", security(("api_key" = [])), responses((status = 200, body = StakeInfo)))]
pub async fn stake_info(State(app): State<AppState>, caller: Caller) -> ApiResult<Json<StakeInfo>> {
    let owner = caller.account_id();
    let staked = crate::ledger::balance(&app.store, &AccountId::stake(owner))
        .await?
        .posted;
    let holds = open_holds(&app, owner)
        .await?
        .iter()
        .filter(|h| h.debit.purpose() == Purpose::Stake)
        .map(hold_info)
        .collect();
    let required_micros = crate::ledger_upkeep::required_stake(&app, owner).await?;
    Ok(Json(StakeInfo {
        staked_micros: staked,
        holds,
        required_micros,
    }))
}

/// Locks IO from the caller's main account as stake.
#[utoipa::path(post, path = "/api/v1/wallet/stake", request_body = StakeRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn stake(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<StakeRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_write()?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    let transfer = Transfer::moving(
        transfer_id(caller.account_id(), &headers)?,
        Kind::Stake,
        AccountId::main(caller.account_id(), Token::Io),
        AccountId::stake(caller.account_id()),
        amount,
    );
    apply(&app, transfer).await
}

/// Starts unstaking: the IO is held for the cooldown, then returns to the main account.
#[utoipa::path(post, path = "/api/v1/wallet/unstake", request_body = StakeRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn unstake(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<StakeRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_write()?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    let cooldown_ms = i64::try_from(app.config.unstake_cooldown_ms).unwrap_or(i64::MAX);
    let transfer = Transfer::new(
        transfer_id(caller.account_id(), &headers)?,
        Kind::Unstake,
        Op::Hold {
            debit: AccountId::stake(caller.account_id()),
            credit: AccountId::main(caller.account_id(), Token::Io),
            amount,
            expires_at_ms: now_ms().saturating_add(cooldown_ms),
            on_expiry: OnExpiry::Post,
        },
        String::new(),
    );
    apply(&app, transfer).await
}

/// Admin: slashes stake for fraud. The amount is held through the appeal window, then burned.
#[utoipa::path(post, path = "/api/v1/ledger/slashes", request_body = SlashRequest, security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn slash(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<SlashRequest>,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_role(Role::Admin)?;
    caller.require_write()?;
    let amount = check_amount("amount_micros", request.amount_micros)?;
    let stake = user_account("account_id", &request.account_id, Purpose::Stake, Token::Io)?;
    if request.reason.trim().is_empty() || request.evidence.trim().is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "a slash needs a reason and evidence",
        ));
    }
    let reference = format!("{} | evidence: {}", request.reason, request.evidence);
    check_reference("evidence", &reference, true)?;
    let appeal_ms = i64::try_from(app.config.slash_appeal_ms).unwrap_or(i64::MAX);
    let hold = Op::Hold {
        debit: stake,
        credit: AccountId::system(Purpose::Burn, Token::Io),
        amount,
        expires_at_ms: now_ms().saturating_add(appeal_ms),
        on_expiry: OnExpiry::Post,
    };
    let id = transfer_id(caller.account_id(), &headers)?;
    let transfer = Transfer::new(id, Kind::Slash, hold, reference);
    apply(&app, transfer).await
}

/// Admin: upholds an appeal, returning a slash's held stake (voids the hold).
#[utoipa::path(post, path = "/api/v1/ledger/slashes/{id}/return", params(("id" = String, Path)), security(("api_key" = [])),
    responses((status = 201, body = TransferResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn return_slash(
    State(app): State<AppState>,
    caller: Caller,
    PathId(hold_id): PathId,
) -> ApiResult<(StatusCode, Json<TransferResult>)> {
    caller.require_role(Role::Admin)?;
    caller.require_write()?;
    let Some(row) = app.store.ledger_entry_by_id(&hold_id).await? else {
        return Err(ApiError::NotFound("slash"));
    };
    if entry_from_row(&row)?.kind != Kind::Slash {
        return Err(ApiError::NotFound("slash"));
    }
    let transfer = Transfer::new(
        flotilla_ledger::book::derived_id("appeal", &hold_id),
        Kind::Slash,
        Op::Void { hold: hold_id },
        "appeal upheld".into(),
    );
    apply(&app, transfer).await
}

/// The ledger's public key, head and supply.
#[utoipa::path(get, path = "/api/v1/ledger", responses((status = 200, body = LedgerInfo)))]
pub async fn ledger_info(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
) -> ApiResult<Json<LedgerInfo>> {
    super::market::limit_reads(&app.limits.market_reads, &ip)?;
    let head = app.store.ledger_head().await?;
    let mut supply = Vec::new();
    let totals = app.store.ledger_totals().await?;
    for token in Token::ALL {
        let of = |purpose: Purpose| {
            let id = AccountId::system(purpose, token).to_string();
            totals.iter().find(|(a, _)| *a == id).map_or(0, |(_, v)| *v)
        };
        let minted = -(of(Purpose::Emission) + of(Purpose::External));
        let burned = of(Purpose::Burn);
        supply.push(SupplyInfo {
            token: token.as_str().into(),
            minted_micros: minted,
            burned_micros: burned,
            circulating_micros: minted - burned,
        });
    }
    Ok(Json(LedgerInfo {
        public_key: app.ledger.public_key_hex(),
        epoch_ms: app.config.ledger_epoch_ms,
        head_seq: head.seq,
        head_hash: head.hash,
        supply,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EpochQuery {
    /// First epoch number to list.
    pub from: Option<u64>,
    pub limit: Option<u32>,
}

/// Sealed epochs: their entries' Merkle roots, signed.
#[utoipa::path(get, path = "/api/v1/ledger/epochs", params(EpochQuery), responses((status = 200, body = [EpochInfo])))]
pub async fn epochs(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    QueryParams(query): QueryParams<EpochQuery>,
) -> ApiResult<Json<Vec<EpochInfo>>> {
    super::market::limit_reads(&app.limits.market_reads, &ip)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=EPOCHS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let rows = app
        .store
        .ledger_seals(query.from.unwrap_or(0), limit)
        .await?;
    let mut epochs = Vec::with_capacity(rows.len());
    for row in rows {
        let seal: serde_json::Value = serde_json::from_str(&row.seal)
            .map_err(|e| ApiError::Internal(format!("stored seal: {e}")))?;
        epochs.push(EpochInfo {
            epoch: row.epoch,
            part: row.part,
            first_seq: row.first_seq,
            entry_count: row.entry_count,
            root: seal["root"].as_str().unwrap_or_default().to_owned(),
            seal,
            rewards_paid_micros: row.rewards_paid_micros,
        });
    }
    Ok(Json(epochs))
}

/// An entry's inclusion proof (by sequence number or transfer id), once its epoch is sealed.
#[utoipa::path(get, path = "/api/v1/ledger/entries/{id}/proof", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn entry_proof(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    PathId(id): PathId,
) -> ApiResult<Json<flotilla_ledger::InclusionProof>> {
    super::market::limit_reads(&app.limits.market_reads, &ip)?;
    let row = match id.parse::<u64>() {
        Ok(seq) => app.store.ledger_entry(seq).await?,
        Err(_) => app.store.ledger_entry_by_id(&id).await?,
    }
    .ok_or(ApiError::NotFound("entry"))?;
    let entry = entry_from_row(&row)?;
    let proof = crate::ledger_upkeep::inclusion_proof(&app, entry).await?;
    proof.map(Json).ok_or_else(|| {
        ApiError::conflict(
            "not_sealed",
            "the entry's epoch is not sealed yet; ask again after it ends",
        )
    })
}

/// The whole log as JSON lines (header, entries, seals, signed head): what `flotilla ledger
/// verify` checks.
#[utoipa::path(get, path = "/api/v1/ledger/export", responses((status = 200, body = String, content_type = "application/x-ndjson")))]
pub async fn export(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
) -> ApiResult<axum::response::Response> {
    super::market::limit_reads(&app.limits.ledger_reads, &ip)?;
    let chunks = crate::ledger_upkeep::export_stream(app, EXPORT_PAGE_ENTRIES).await?;
    axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(chunks))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_per_caller() {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", "k1".parse().unwrap());
        let a = transfer_id("usr_a", &headers).unwrap();
        assert_eq!(a, transfer_id("usr_a", &headers).unwrap());
        assert_ne!(a, transfer_id("usr_b", &headers).unwrap());
        assert!(a.len() <= flotilla_ledger::book::TRANSFER_ID_BYTES_MAX);
        headers.insert("idempotency-key", "x".repeat(129).parse().unwrap());
        assert!(transfer_id("usr_a", &headers).is_err());
    }
}
