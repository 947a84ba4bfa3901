//! The offer search language:
//!
//! ```text
//! gpu=rtx4090 count>=4 vram>=24 price<0.40 region in [eu,us] tier>=high reliability>0.98
//! ```
//!
//! A query is clauses separated by spaces; each is `field op value` or `field in [a,b]`. Fields:
//! `gpu` (model key; `=` or `in`), `count` (free GPUs of the model on one worker), `vram` (GB of
//! memory per GPU, 10^9 bytes), `price` (USD per GPU hour), `region` (a region such as `eu-west`
//! or a continent such as `eu`; `=` or `in`), `country` (`=` or `in`), `tier` (low, medium,
//! high, ultra), `reliability` (a fraction, 0 to 1). Numbers are exact decimals, never floats.
//! A malformed query gets a [`QueryError`] naming the column and the token expected there.

use crate::types::{Filter, PPM, PRICE_UNITS_PER_USD, Range, Tier};

/// The longest query accepted, in bytes.
pub const QUERY_BYTES_MAX: usize = 4_096;
/// The most values in one `in [...]` list.
pub const LIST_VALUES_MAX: usize = 64;

/// A malformed query: where, what was expected there, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: expected {expected}, found {found}")]
pub struct QueryError {
    /// 1-based character column.
    pub column: usize,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(word) => format!("\"{word}\""),
            Token::Op(op) => format!("\"{op}\""),
            Token::Open => "\"[\"".to_owned(),
            Token::Close => "\"]\"".to_owned(),
            Token::Comma => "\",\"".to_owned(),
            Token::End => "the end of the query".to_owned(),
        }
    }
}

const OPERATORS: [&str; 6] = ["<=", ">=", "!=", "=", "<", ">"];

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Splits a query into tokens with their 1-based columns.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, QueryError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if is_word_char(c) {
            let start = i;
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            tokens.push((column, Token::Word(chars[start..i].iter().collect())));
        } else if let Some(op) = OPERATORS.iter().find(|op| {
            op.chars()
                .enumerate()
                .all(|(k, oc)| chars.get(i + k) == Some(&oc))
        }) {
            i += op.len();
            tokens.push((column, Token::Op(op)));
        } else {
            let token = match c {
                '[' => Token::Open,
                ']' => Token::Close,
                ',' => Token::Comma,
                other => {
                    return Err(QueryError {
                        column,
                        expected: "a field, an operator, a value, \"[\", \",\" or \"]\"".to_owned(),
                        found: format!("\"{other}\""),
                    });
                }
            };
            tokens.push((column, token));
            i += 1;
        }
    }
    tokens.push((chars.len() + 1, Token::End));
    Ok(tokens)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Gpu,
    Count,
    Vram,
    Price,
    Region,
    Country,
    Tier,
    Reliability,
}

const FIELDS: &[(&str, Field)] = &[
    ("gpu", Field::Gpu),
    ("count", Field::Count),
    ("vram", Field::Vram),
    ("price", Field::Price),
    ("region", Field::Region),
    ("country", Field::Country),
    ("tier", Field::Tier),
    ("reliability", Field::Reliability),
];

const FIELD_NAMES: &str = "a field (gpu, count, vram, price, region, country, tier, reliability)";

impl Field {
    fn is_list(self) -> bool {
        matches!(self, Field::Gpu | Field::Region | Field::Country)
    }
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> &(usize, Token) {
        &self.tokens[self.next]
    }

    fn bump(&mut self) -> (usize, Token) {
        let token = self.tokens[self.next].clone();
        if token.1 != Token::End {
            self.next += 1;
        }
        token
    }

    fn fail<T>(&self, expected: &str) -> Result<T, QueryError> {
        let (column, token) = self.peek();
        Err(QueryError {
            column: *column,
            expected: expected.to_owned(),
            found: token.describe(),
        })
    }

    fn word(&mut self, expected: &str) -> Result<(usize, String), QueryError> {
        match self.peek().clone() {
            (column, Token::Word(word)) => {
                self.bump();
                Ok((column, word))
            }
            _ => self.fail(expected),
        }
    }

    /// `[a, b, ...]` after `in`.
    fn list(&mut self, what: &str) -> Result<Vec<(usize, String)>, QueryError> {
        if self.peek().1 != Token::Open {
            return self.fail("\"[\"");
        }
        self.bump();
        let mut values = vec![self.word(what)?];
        loop {
            match self.peek().1 {
                Token::Comma => {
                    self.bump();
                    if values.len() == LIST_VALUES_MAX {
                        return self.fail(&format!("at most {LIST_VALUES_MAX} values"));
                    }
                    values.push(self.word(what)?);
                }
                Token::Close => {
                    self.bump();
                    return Ok(values);
                }
                _ => return self.fail("\",\" or \"]\""),
            }
        }
    }
}

/// Parses a query into a filter.
pub fn parse(text: &str) -> Result<Filter, QueryError> {
    if text.len() > QUERY_BYTES_MAX {
        return Err(QueryError {
            column: QUERY_BYTES_MAX + 1,
            expected: format!("at most {QUERY_BYTES_MAX} bytes"),
            found: format!("{} bytes", text.len()),
        });
    }
    let mut parser = Parser {
        tokens: tokenize(text)?,
        next: 0,
    };
    let mut filter = Filter::default();
    let mut seen: Vec<Field> = Vec::new();
    while parser.peek().1 != Token::End {
        let (column, name) = parser.word(FIELD_NAMES)?;
        let Some(&(_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
            return Err(QueryError {
                column,
                expected: FIELD_NAMES.to_owned(),
                found: format!("\"{name}\""),
            });
        };
        if field.is_list() && seen.contains(&field) {
            return Err(QueryError {
                column,
                expected: format!("{name} at most once"),
                found: format!("\"{name}\" again"),
            });
        }
        seen.push(field);
        clause(&mut parser, &mut filter, field)?;
    }
    Ok(filter)
}

fn clause(parser: &mut Parser, filter: &mut Filter, field: Field) -> Result<(), QueryError> {
    if field.is_list() {
        let values = match parser.peek().clone() {
            (_, Token::Op("=")) => {
                parser.bump();
                vec![parser.word("a value")?]
            }
            (_, Token::Word(word)) if word == "in" => {
                parser.bump();
                parser.list("a value")?
            }
            _ => return parser.fail("\"=\" or \"in\""),
        };
        let values: Vec<String> = values.into_iter().map(|(_, v)| v.to_lowercase()).collect();
        match field {
            Field::Gpu => filter.models = values,
            Field::Region => filter.regions = values,
            _ => filter.countries = values,
        }
        return Ok(());
    }
    let op = match parser.peek().1 {
        Token::Op(op) if op != "!=" => {
            parser.bump();
            op
        }
        _ => return parser.fail("an operator (=, <, <=, >, >=)"),
    };
    if field == Field::Tier {
        let (column, word) = parser.word("a tier (low, medium, high, ultra)")?;
        let Some(tier) = Tier::parse(&word.to_lowercase()) else {
            return Err(QueryError {
                column,
                expected: "a tier (low, medium, high, ultra)".to_owned(),
                found: format!("\"{word}\""),
            });
        };
        return narrow_tier(filter, op, tier, column);
    }
    // Each value's base unit is 10^-scale of what the user writes: GB to bytes, USD to IOSD
    // base units, fractions to ppm.
    let (expected, scale_digits) = match field {
        Field::Count => ("a whole number", 0),
        Field::Vram => ("a number of GB", 9),
        Field::Price => ("a price in USD", PRICE_UNITS_PER_USD.ilog10()),
        _ => ("a fraction from 0 to 1", PPM.ilog10()),
    };
    let (column, word) = parser.word(expected)?;
    let Some(value) = parse_decimal(&word, scale_digits) else {
        return Err(QueryError {
            column,
            expected: expected.to_owned(),
            found: format!("\"{word}\""),
        });
    };
    if field == Field::Reliability && value > u64::from(PPM) {
        return Err(QueryError {
            column,
            expected: expected.to_owned(),
            found: format!("\"{word}\""),
        });
    }
    let range = match field {
        Field::Count => &mut filter.count,
        Field::Vram => &mut filter.memory_bytes,
        Field::Price => &mut filter.price_per_hour,
        _ => &mut filter.reliability_ppm,
    };
    narrow(range, op, value);
    Ok(())
}

/// Narrows a range by `op value`; strict bounds move by one base unit.
fn narrow(range: &mut Range, op: &str, value: u64) {
    match op {
        "=" => {
            range.min = range.min.max(value);
            range.max = range.max.min(value);
        }
        "<" => range.max = range.max.min(value.saturating_sub(1)),
        "<=" => range.max = range.max.min(value),
        ">" => range.min = range.min.max(value.saturating_add(1)),
        _ => range.min = range.min.max(value),
    }
}

fn narrow_tier(filter: &mut Filter, op: &str, tier: Tier, column: usize) -> Result<(), QueryError> {
    let index = tier as usize;
    let (min, max) = match op {
        "=" => (index, index),
        ">=" => (index, Tier::ALL.len() - 1),
        ">" => (index + 1, Tier::ALL.len() - 1),
        "<=" => (0, index),
        _ => {
            if index == 0 {
                return Err(QueryError {
                    column,
                    expected: "a tier above low after \"<\"".to_owned(),
                    found: "\"low\"".to_owned(),
                });
            }
            (0, index - 1)
        }
    };
    let Some(&min_tier) = Tier::ALL.get(min) else {
        return Err(QueryError {
            column,
            expected: "a tier below ultra after \">\"".to_owned(),
            found: "\"ultra\"".to_owned(),
        });
    };
    filter.tier_min = filter.tier_min.max(min_tier);
    filter.tier_max = filter.tier_max.min(Tier::ALL[max]);
    Ok(())
}

/// An exact decimal times `10^scale_digits`, allowing that many digits after the point; `None`
/// when malformed, too precise or too large.
pub fn parse_decimal(text: &str, scale_digits: u32) -> Option<u64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    if fraction.len() > scale_digits as usize || text.ends_with('.') {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(10u64.checked_pow(scale_digits)?)?;
    if !fraction.is_empty() {
        let padded: u64 = fraction.parse().ok()?;
        let pad = 10u64.pow(scale_digits - fraction.len() as u32);
        value = value.checked_add(padded * pad)?;
    }
    Some(value)
}

/// How search results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Cheapest first.
    Price,
    /// Most reliable first.
    Reliability,
    /// Most memory per GPU first.
    Vram,
    /// Most free GPUs first.
    Count,
    /// Best throughput per price first.
    Value,
}

impl SortKey {
    pub const NAMES: &'static str = "price, reliability, vram, count, value";

    pub fn parse(text: &str) -> Option<SortKey> {
        Some(match text {
            "price" => SortKey::Price,
            "reliability" => SortKey::Reliability,
            "vram" => SortKey::Vram,
            "count" => SortKey::Count,
            "value" => SortKey::Value,
            _ => return None,
        })
    }
}
