//! The ledger's pure core. Every payment, reward, stake and vote moves through one
//! double-entry book in two tokens (IO and IOSD), in integer base units (a millionth of a
//! token), and every change is an entry of one hash-chained log whose epochs are sealed under
//! signed Merkle roots, so anyone can check it.
//!
//! Invariants:
//! - No IO and no clock: the caller passes the server's time and loads the accounts a batch
//!   touches; the same book and batch give the same entries.
//! - Per token, the balances sum to zero after every batch (each entry debits what it
//!   credits); tokens enter circulation only from the emission and external accounts, the only
//!   ones allowed below zero, and leave it only to the burn account.
//! - No other account's available balance (posted less held) goes below zero.
//! - A transfer id applies once; the same id with other content is refused; a linked chain
//!   applies whole or not at all; a hold resolves (post, void, expiry) once.
//! - A log that does not verify is reported, never a panic: the verifier reads hostile files.

pub mod account;
pub mod book;
pub mod emission;
pub mod governance;
pub mod log;
pub mod rent;

#[cfg(test)]
mod tests;

pub use account::{AccountId, MICROS_PER_TOKEN, Purpose, Token, format_micros, parse_micros};
pub use book::{
    Balance, Book, Effect, Entry, Head, Hold, Kind, OnExpiry, Op, Outcome, Resolution, Seen,
    Transfer, TransferError,
};
pub use log::{EpochSeal, Hash, InclusionProof, SignedHead, VerifiedExport, verify_export};
