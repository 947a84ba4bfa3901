//! Tokens and accounts.
//!
//! An account is named `OWNER:PURPOSE:TOKEN` (`usr_ab12:main:IOSD`, `system:treasury:IO`,
//! `req_cd34:escrow:IOSD`), so one owner holds one account per purpose per token, and the name
//! alone says whether it may go below zero.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Base units in one token: amounts are integers of millionths.
pub const MICROS_PER_TOKEN: u64 = 1_000_000;

/// The owner of the system's own accounts.
pub const SYSTEM_OWNER: &str = "system";

/// Longest owner name, in bytes.
pub const OWNER_BYTES_MAX: usize = 64;

/// The two tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Token {
    /// Utility: rewards, staking, governance.
    #[serde(rename = "IO")]
    Io,
    /// Stable: one is one US dollar.
    #[serde(rename = "IOSD")]
    Iosd,
}

impl Token {
    pub const ALL: [Token; 2] = [Token::Io, Token::Iosd];

    pub const fn as_str(self) -> &'static str {
        match self {
            Token::Io => "IO",
            Token::Iosd => "IOSD",
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Token {
    type Err = AccountParseError;
    fn from_str(text: &str) -> Result<Token, AccountParseError> {
        match text {
            "IO" | "io" => Ok(Token::Io),
            "IOSD" | "iosd" => Ok(Token::Iosd),
            _ => Err(AccountParseError("token must be IO or IOSD")),
        }
    }
}

/// What an account is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A user's spendable funds.
    Main,
    /// A user's staked IO; unstaking and slashing hold it before it leaves.
    Stake,
    /// A cluster's (or request's) prepaid rent, owned by the cluster's id.
    Escrow,
    /// The system's treasury: fees land here.
    Treasury,
    /// Mints IO block rewards: its balance is minus everything emitted.
    Emission,
    /// The world outside: USD deposits minted as IOSD, IO settled in and out, withdrawals.
    /// Its balance is minus everything that came in net.
    External,
    /// Where burned tokens go and stay.
    Burn,
}

impl Purpose {
    const ALL: [Purpose; 7] = [
        Purpose::Main,
        Purpose::Stake,
        Purpose::Escrow,
        Purpose::Treasury,
        Purpose::Emission,
        Purpose::External,
        Purpose::Burn,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Purpose::Main => "main",
            Purpose::Stake => "stake",
            Purpose::Escrow => "escrow",
            Purpose::Treasury => "treasury",
            Purpose::Emission => "emission",
            Purpose::External => "external",
            Purpose::Burn => "burn",
        }
    }

    /// Purposes only the system owns.
    const fn is_system(self) -> bool {
        matches!(
            self,
            Purpose::Treasury | Purpose::Emission | Purpose::External | Purpose::Burn
        )
    }
}

/// One account: an owner's purpose in one token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId {
    owner: String,
    purpose: Purpose,
    token: Token,
}

/// A malformed account name or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccountParseError(pub &'static str);

impl AccountId {
    /// An account of a user, cluster or request (`usr_…`, `req_…`).
    pub fn new(
        owner: &str,
        purpose: Purpose,
        token: Token,
    ) -> Result<AccountId, AccountParseError> {
        if owner.is_empty() || owner.len() > OWNER_BYTES_MAX {
            return Err(AccountParseError("owner must be 1 to 64 bytes"));
        }
        if !owner
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(AccountParseError(
                "owner holds only lowercase letters, digits and '_'",
            ));
        }
        if (owner == SYSTEM_OWNER) != purpose.is_system() {
            return Err(AccountParseError(
                "treasury, emission, external and burn are the system's, and only those",
            ));
        }
        Ok(AccountId {
            owner: owner.to_owned(),
            purpose,
            token,
        })
    }

    /// A user's spendable account. Panics on a malformed owner: callers pass stored ids.
    pub fn main(owner: &str, token: Token) -> AccountId {
        AccountId::new(owner, Purpose::Main, token).expect("a stored owner id is well formed")
    }

    /// A user's stake (IO).
    pub fn stake(owner: &str) -> AccountId {
        AccountId::new(owner, Purpose::Stake, Token::Io).expect("a stored owner id is well formed")
    }

    /// A cluster's or request's escrow.
    pub fn escrow(owner: &str, token: Token) -> AccountId {
        AccountId::new(owner, Purpose::Escrow, token).expect("a stored owner id is well formed")
    }

    /// One of the system's accounts.
    pub fn system(purpose: Purpose, token: Token) -> AccountId {
        assert!(purpose.is_system(), "{purpose:?} is not a system purpose");
        AccountId {
            owner: SYSTEM_OWNER.to_owned(),
            purpose,
            token,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// Accounts that create tokens by going below zero: emission and the outside world.
    pub fn may_go_negative(&self) -> bool {
        matches!(self.purpose, Purpose::Emission | Purpose::External)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Piece by piece rather than `write!`: every entry's JSON and every stored balance
        // row spells account names, and the format machinery was a visible share of a batch.
        f.write_str(&self.owner)?;
        f.write_str(":")?;
        f.write_str(self.purpose.as_str())?;
        f.write_str(":")?;
        f.write_str(self.token.as_str())
    }
}

impl FromStr for AccountId {
    type Err = AccountParseError;
    fn from_str(text: &str) -> Result<AccountId, AccountParseError> {
        let mut parts = text.split(':');
        let (Some(owner), Some(purpose), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AccountParseError("an account is OWNER:PURPOSE:TOKEN"));
        };
        let purpose = Purpose::ALL
            .into_iter()
            .find(|p| p.as_str() == purpose)
            .ok_or(AccountParseError(
                "purpose must be main, stake, escrow, treasury, emission, external or burn",
            ))?;
        let token = match token {
            "IO" => Token::Io,
            "IOSD" => Token::Iosd,
            _ => return Err(AccountParseError("token must be IO or IOSD")),
        };
        AccountId::new(owner, purpose, token)
    }
}

impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AccountId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Formats base units as a decimal token amount (`1.5`, `0.000001`), exactly.
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let whole = magnitude / MICROS_PER_TOKEN;
    let fraction = magnitude % MICROS_PER_TOKEN;
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let digits = format!("{fraction:06}");
    format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
}

/// Parses a decimal token amount (`12`, `0.25`) into base units; more than six decimals, a
/// sign, or an overflow is an error.
pub fn parse_micros(text: &str) -> Result<u64, AccountParseError> {
    const BAD: AccountParseError =
        AccountParseError("an amount is a number with at most 6 decimals, like 12.5");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || fraction.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(BAD);
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| BAD)?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| BAD)?;
    whole
        .checked_mul(MICROS_PER_TOKEN)
        .and_then(|w| w.checked_add(fraction))
        .ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_refused() {
        for name in [
            "usr_ab12:main:IOSD",
            "system:treasury:IO",
            "req_x:escrow:IO",
        ] {
            let id: AccountId = name.parse().unwrap();
            assert_eq!(id.to_string(), name);
        }
        for bad in [
            "usr_a:main",
            "usr_a:treasury:IO",
            "system:main:IO",
            "USR:main:IO",
            "usr_a:main:BTC",
            "a:b:c:d",
        ] {
            assert!(bad.parse::<AccountId>().is_err(), "{bad}");
        }
        assert!(AccountId::system(Purpose::External, Token::Io).may_go_negative());
        assert!(!AccountId::main("usr_a", Token::Io).may_go_negative());
    }

    #[test]
    fn amounts_are_exact_decimals() {
        assert_eq!(parse_micros("12.5").unwrap(), 12_500_000);
        assert_eq!(parse_micros("0.000001").unwrap(), 1);
        assert_eq!(parse_micros(".5").unwrap(), 500_000);
        for bad in ["", ".", "1.0000001", "-1", "1e3", "18446744073709551616"] {
            assert!(parse_micros(bad).is_err(), "{bad}");
        }
        assert_eq!(format_micros(12_500_000), "12.5");
        assert_eq!(format_micros(-1), "-0.000001");
        assert_eq!(format_micros(3_000_000), "3");
    }
}
