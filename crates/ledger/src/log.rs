//! The verifiable log: every entry chained to the one before by hash; each epoch's entries
//! under one Merkle root signed by the coordinator's key; an inclusion proof for any entry; and
//! an export that anyone can check offline.
//!
//! Export format (JSON lines, one object per line): a header
//! `{"format":"flotilla-ledger-export","version":1,"public_key":HEX,"epoch_ms":N}`, then
//! `{"entry":ENTRY}` lines in sequence order with `{"seal":SEAL}` lines after each epoch's
//! entries (or each part of a long epoch's), and last `{"head":HEAD}`, the chain's end signed
//! at export time, so no entry, seal or head, the last entries included, can change
//! unnoticed. (Bytes that do not change what a line says, such as an unknown field added to
//! an entry, are not covered: what is verified is the parsed content.)

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use flotilla_proof::merkle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::book::{Book, Entry};

pub type Hash = [u8; 32];

pub const EXPORT_FORMAT: &str = "flotilla-ledger-export";
pub const EXPORT_VERSION: u32 = 1;
/// Longest line of an export, in bytes (an entry's fields are bounded far below this).
pub const EXPORT_LINE_BYTES_MAX: usize = 64 * 1024;
/// Most entries under one seal: an epoch with more is sealed in parts, so building a seal or
/// an inclusion proof holds at most this many hashes (8 MiB) in memory.
pub const SEAL_PART_ENTRIES_MAX: usize = 1 << 18;

const ENTRY_DOMAIN: &[u8] = b"flotilla-ledger-entry-v1";
const SEAL_DOMAIN: &[u8] = b"flotilla-ledger-epoch-v1";
const HEAD_DOMAIN: &[u8] = b"flotilla-ledger-head-v1";

/// The hash of an entry: its canonical JSON (fields in declared order), which carries the
/// previous entry's hash.
pub fn entry_hash(entry: &Entry) -> Hash {
    canonical_hash(&canonical_json(entry))
}

/// An entry's canonical JSON: what its hash covers, and what the store keeps as its body.
pub fn canonical_json(entry: &Entry) -> String {
    serde_json::to_string(entry).expect("an entry serializes")
}

/// The hash of an entry whose canonical JSON is `canonical`.
pub fn canonical_hash(canonical: &str) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(ENTRY_DOMAIN);
    hasher.update(canonical.as_bytes());
    hasher.finalize().into()
}

/// The epoch an entry at `at_ms` belongs to.
pub fn epoch_of(at_ms: i64, epoch_ms: u64) -> u64 {
    u64::try_from(at_ms).unwrap_or(0) / epoch_ms.max(1)
}

/// One epoch's entries under a signed Merkle root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochSeal {
    pub epoch: u64,
    /// An epoch longer than [`SEAL_PART_ENTRIES_MAX`] entries is sealed in parts 0, 1, ...
    pub part: u32,
    pub first_seq: u64,
    pub entry_count: u64,
    /// Merkle root over the entries' hashes, in sequence order.
    pub root: String,
    /// The chain's hash after the epoch's last entry.
    pub last_hash: String,
    pub signature: String,
}

impl EpochSeal {
    /// Seals `entries` (one epoch's, in order, at least one) with `key`.
    pub fn sign(epoch: u64, part: u32, entries: &[Entry], key: &SigningKey) -> EpochSeal {
        assert!(
            !entries.is_empty(),
            "an epoch seal covers at least one entry"
        );
        let hashes: Vec<Hash> = entries.iter().map(entry_hash).collect();
        EpochSeal::sign_hashes(epoch, part, entries[0].seq, &hashes, key)
    }

    /// Seals an epoch given its entries' hashes in order, the first being entry `first_seq`.
    pub fn sign_hashes(
        epoch: u64,
        part: u32,
        first_seq: u64,
        hashes: &[Hash],
        key: &SigningKey,
    ) -> EpochSeal {
        assert!(
            !hashes.is_empty(),
            "an epoch seal covers at least one entry"
        );
        let root = merkle_root(hashes);
        let last = *hashes.last().expect("at least one entry");
        let mut seal = EpochSeal {
            epoch,
            part,
            first_seq,
            entry_count: hashes.len() as u64,
            root: hex::encode(root),
            last_hash: hex::encode(last),
            signature: String::new(),
        };
        seal.signature = hex::encode(key.sign(&seal.message()).to_bytes());
        seal
    }

    fn message(&self) -> Vec<u8> {
        let mut message = SEAL_DOMAIN.to_vec();
        message.extend_from_slice(&self.epoch.to_be_bytes());
        message.extend_from_slice(&self.part.to_be_bytes());
        message.extend_from_slice(&self.first_seq.to_be_bytes());
        message.extend_from_slice(&self.entry_count.to_be_bytes());
        message.extend_from_slice(self.root.as_bytes());
        message.extend_from_slice(self.last_hash.as_bytes());
        message
    }

    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), LogError> {
        verify_signature(key, &self.message(), &self.signature)
            .map_err(|_| LogError::BadSignature(format!("seal of epoch {}", self.epoch)))
    }
}

/// The chain's end, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub seq: u64,
    pub hash: String,
    pub signature: String,
}

impl SignedHead {
    pub fn sign(seq: u64, hash: &Hash, key: &SigningKey) -> SignedHead {
        let mut head = SignedHead {
            seq,
            hash: hex::encode(hash),
            signature: String::new(),
        };
        head.signature = hex::encode(key.sign(&head.message()).to_bytes());
        head
    }

    fn message(&self) -> Vec<u8> {
        let mut message = HEAD_DOMAIN.to_vec();
        message.extend_from_slice(&self.seq.to_be_bytes());
        message.extend_from_slice(self.hash.as_bytes());
        message
    }
}

/// Proof that an entry is in a sealed epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub entry: Entry,
    pub seal: EpochSeal,
    /// Merkle siblings from the entry's leaf up to the seal's root.
    pub path: Vec<String>,
}

impl InclusionProof {
    /// Builds the proof for `entries[index]`, where `entries` are the sealed epoch's.
    pub fn build(entries: &[Entry], index: usize, seal: EpochSeal) -> InclusionProof {
        let hashes: Vec<Hash> = entries.iter().map(entry_hash).collect();
        InclusionProof::build_from_hashes(entries[index].clone(), &hashes, seal)
    }

    /// Builds the proof for `entry` from its sealed epoch's entry hashes, in order.
    pub fn build_from_hashes(entry: Entry, hashes: &[Hash], seal: EpochSeal) -> InclusionProof {
        let index = usize::try_from(entry.seq - seal.first_seq).expect("the entry is in the epoch");
        let leaves: Vec<Hash> = hashes.iter().map(|h| merkle::leaf_hash(h)).collect();
        let path = merkle::Tree::new(leaves).path(index);
        InclusionProof {
            entry,
            seal,
            path: path.iter().map(hex::encode).collect(),
        }
    }

    /// Checks the path up to the root, and the seal's signature under `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), LogError> {
        let seal = &self.seal;
        let fail = |why: &str| {
            Err(LogError::BadProof(format!(
                "entry {}: {why}",
                self.entry.seq
            )))
        };
        let Some(index) = self.entry.seq.checked_sub(seal.first_seq) else {
            return fail("is before the seal's first entry");
        };
        if index >= seal.entry_count {
            return fail("is after the seal's last entry");
        }
        let mut path = Vec::with_capacity(self.path.len());
        for sibling in &self.path {
            let Some(hash) = decode_hash(sibling) else {
                return fail("path holds a malformed hash");
            };
            path.push(hash);
        }
        let Some(root) = decode_hash(&seal.root) else {
            return fail("seal holds a malformed root");
        };
        let leaf = merkle::leaf_hash(&entry_hash(&self.entry));
        let (Ok(index), Ok(count)) = (usize::try_from(index), usize::try_from(seal.entry_count))
        else {
            return fail("is out of range");
        };
        if !merkle::verify_path(&root, &leaf, index, count, &path) {
            return fail("path does not lead to the seal's root");
        }
        seal.verify_signature(key)
    }
}

fn merkle_root(hashes: &[Hash]) -> Hash {
    merkle::Tree::new(hashes.iter().map(|h| merkle::leaf_hash(h)).collect()).root()
}

/// Parses a hash from its canonical lowercase hex.
/// A hash in lowercase hex, the one spelling [`decode_hash`] accepts. The same text as
/// `hex::encode`, which goes a char at a time; this runs for every entry of a batch, twice.
pub fn encode_hash(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Vec::with_capacity(2 * hash.len());
    for byte in hash {
        text.push(DIGITS[usize::from(byte >> 4)]);
        text.push(DIGITS[usize::from(byte & 0x0f)]);
    }
    String::from_utf8(text).expect("hex digits are ASCII")
}

pub fn decode_hash(text: &str) -> Option<Hash> {
    let bytes = hex::decode(text).ok()?;
    let hash: Hash = bytes.try_into().ok()?;
    // Only the canonical (lowercase) spelling: a hash has one way to be written.
    (hex::encode(hash) == text).then_some(hash)
}

fn verify_signature(key: &VerifyingKey, message: &[u8], signature: &str) -> Result<(), ()> {
    let bytes: [u8; 64] = hex::decode(signature)
        .map_err(|_| ())?
        .try_into()
        .map_err(|_| ())?;
    key.verify(message, &Signature::from_bytes(&bytes))
        .map_err(|_| ())
}

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    pub format: String,
    pub version: u32,
    /// The coordinator's ledger key (ed25519, hex).
    pub public_key: String,
    pub epoch_ms: u64,
}

/// One line of an export after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportLine {
    Entry(Entry),
    Seal(EpochSeal),
    Head(SignedHead),
}

/// Why a log or proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("line {line}: {problem}")]
    Malformed { line: usize, problem: String },
    #[error("entry {seq}: {problem}")]
    Chain { seq: u64, problem: String },
    #[error("epoch {epoch}: {problem}")]
    Seal { epoch: u64, problem: String },
    #[error("bad signature on {0}")]
    BadSignature(String),
    #[error("inclusion proof does not verify: {0}")]
    BadProof(String),
}

/// What a verified export holds.
#[derive(Debug, Clone)]
pub struct VerifiedExport {
    pub public_key: VerifyingKey,
    pub entries: u64,
    pub epochs_sealed: u64,
    /// Entries after the last seal (the epoch still open at export time).
    pub entries_unsealed: u64,
    pub head_hash: Hash,
    /// Every balance, replayed from zero.
    pub book: Book,
}

/// Checks an export: the header, the chain from the first entry, every balance replayed from
/// zero under the book's rules, every seal's root and signature, and the signed head.
/// Hostile input gets an error, never a panic.
pub fn verify_export(text: &str) -> Result<VerifiedExport, LogError> {
    let mut lines = text.lines().enumerate();
    let Some((_, first)) = lines.next() else {
        return Err(malformed(1, "the file is empty"));
    };
    let header: ExportHeader = parse_line(0, first)?;
    if header.format != EXPORT_FORMAT || header.version != EXPORT_VERSION {
        return Err(malformed(1, "not a flotilla ledger export of version 1"));
    }
    let public_key = parse_key(&header.public_key).ok_or_else(|| malformed(1, "bad public_key"))?;
    let mut verifier = ChainVerifier::new(header.epoch_ms, public_key);
    let mut head_seen = None;
    for (index, line) in lines {
        if head_seen.is_some() {
            return Err(malformed(index + 1, "nothing may follow the head"));
        }
        match parse_line(index, line)? {
            ExportLine::Entry(entry) => verifier.entry(entry)?,
            ExportLine::Seal(seal) => verifier.seal(&seal)?,
            ExportLine::Head(head) => head_seen = Some(head),
        }
    }
    let head = head_seen.ok_or_else(|| malformed(0, "the signed head is missing"))?;
    verifier.finish(&head)
}

fn parse_line<T: serde::de::DeserializeOwned>(index: usize, line: &str) -> Result<T, LogError> {
    if line.len() > EXPORT_LINE_BYTES_MAX {
        return Err(malformed(index + 1, "line too long"));
    }
    serde_json::from_str(line).map_err(|e| malformed(index + 1, &e.to_string()))
}

fn malformed(line: usize, problem: &str) -> LogError {
    LogError::Malformed {
        line,
        problem: problem.to_owned(),
    }
}

/// Parses an ed25519 public key from hex.
pub fn parse_key(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Walks entries in order, replaying them and collecting each epoch's hashes for its seal.
struct ChainVerifier {
    epoch_ms: u64,
    key: VerifyingKey,
    book: Book,
    prev_hash: Hash,
    last_seq: u64,
    last_at_ms: i64,
    /// Hashes of entries not yet covered by a seal, with their epoch.
    pending: Vec<(u64, u64, Hash)>,
    epochs_sealed: u64,
    /// The last seal's epoch and part.
    last_sealed: Option<(u64, u32)>,
}

impl ChainVerifier {
    fn new(epoch_ms: u64, key: VerifyingKey) -> ChainVerifier {
        ChainVerifier {
            epoch_ms,
            key,
            book: Book::default(),
            prev_hash: [0; 32],
            last_seq: 0,
            last_at_ms: 0,
            pending: Vec::new(),
            epochs_sealed: 0,
            last_sealed: None,
        }
    }

    fn entry(&mut self, entry: Entry) -> Result<(), LogError> {
        let seq = entry.seq;
        let fail = |problem: &str| {
            Err(LogError::Chain {
                seq,
                problem: problem.to_owned(),
            })
        };
        if Some(seq) != self.last_seq.checked_add(1) {
            return fail("sequence numbers must run 1, 2, 3, ... without gaps");
        }
        if entry.prev_hash != hex::encode(self.prev_hash) {
            return fail("prev_hash is not the previous entry's hash");
        }
        if entry.at_ms < self.last_at_ms {
            return fail("time runs backwards");
        }
        let epoch = epoch_of(entry.at_ms, self.epoch_ms);
        if self.last_sealed.is_some_and(|(sealed, _)| epoch < sealed) {
            return fail("belongs to an epoch already sealed");
        }
        if let Err(error) = self.book.replay(&entry) {
            return fail(&format!("does not replay: {error}"));
        }
        let hash = entry_hash(&entry);
        self.pending.push((epoch, seq, hash));
        self.prev_hash = hash;
        self.last_seq = seq;
        self.last_at_ms = entry.at_ms;
        Ok(())
    }

    /// A seal covers exactly the pending entries of its epoch, which must be the oldest.
    fn seal(&mut self, seal: &EpochSeal) -> Result<(), LogError> {
        let fail = |problem: &str| {
            Err(LogError::Seal {
                epoch: seal.epoch,
                problem: problem.to_owned(),
            })
        };
        let count = self
            .pending
            .iter()
            .take_while(|(epoch, _, _)| *epoch == seal.epoch)
            .count();
        if count == 0 || count != self.pending.len() || count > SEAL_PART_ENTRIES_MAX {
            return fail("must follow exactly its own epoch's entries");
        }
        let part_expected = match self.last_sealed {
            Some((epoch, part)) if epoch == seal.epoch => part.checked_add(1),
            Some((epoch, _)) if epoch > seal.epoch => None,
            _ => Some(0),
        };
        if part_expected != Some(seal.part) {
            return fail("parts of an epoch are sealed in order from 0");
        }
        let hashes: Vec<Hash> = self.pending.iter().map(|(_, _, h)| *h).collect();
        if seal.first_seq != self.pending[0].1 || seal.entry_count != count as u64 {
            return fail("covers other entries than its epoch's");
        }
        if seal.root != hex::encode(merkle_root(&hashes)) {
            return fail("root does not match the entries");
        }
        if seal.last_hash != hex::encode(self.prev_hash) {
            return fail("last_hash does not match the chain");
        }
        seal.verify_signature(&self.key)?;
        self.pending.clear();
        self.epochs_sealed += 1;
        self.last_sealed = Some((seal.epoch, seal.part));
        Ok(())
    }

    fn finish(self, head: &SignedHead) -> Result<VerifiedExport, LogError> {
        if head.seq != self.last_seq || head.hash != hex::encode(self.prev_hash) {
            return Err(LogError::Chain {
                seq: head.seq,
                problem: "the signed head is not the last entry".to_owned(),
            });
        }
        verify_signature(&self.key, &head.message(), &head.signature)
            .map_err(|_| LogError::BadSignature("head".to_owned()))?;
        Ok(VerifiedExport {
            public_key: self.key,
            entries: self.last_seq,
            epochs_sealed: self.epochs_sealed,
            entries_unsealed: self.pending.len() as u64,
            head_hash: self.prev_hash,
            book: self.book,
        })
    }
}
