//! The compute part: a chain of integer matrix products.
//!
//! `X_0` (n×n bytes) and each `A_i` (n×n signed bytes) come from the seed. Each step computes
//! `X_{i+1}[r][c] = fold(Σ_k X_i[r][k] · A_i[k][c])` with wrapping 32-bit accumulation (int8
//! inputs, int32 sums: what GPUs run natively, and exact on every device). Step `i + 1` needs all
//! of step `i`, so the work cannot be split ahead of time or reused across challenges. The
//! prover commits to every row of every `X_i` with one Merkle root; the verifier recomputes
//! single rows (`row · A_i`, n² operations) at positions drawn from the root, so a check costs
//! 1/(T·n) of the prover's work.

use crate::merkle::{Hash, Tree, leaf_hash, verify_path};
use crate::stream::{Stream, draw_pair};
use crate::{ComputeParams, Failure, RowOpening};

/// The seed-derived starting matrix, row by row.
pub fn start_matrix(seed: &[u8; 32], n: usize) -> Vec<u8> {
    let mut x = vec![0u8; n * n];
    Stream::new(seed, "x0", 0).fill(&mut x);
    x
}

/// The seed-derived matrix of step `step`.
pub fn step_matrix(seed: &[u8; 32], step: u32, n: usize) -> Vec<i8> {
    let mut bytes = vec![0u8; n * n];
    Stream::new(seed, "a", u64::from(step)).fill(&mut bytes);
    bytes.into_iter().map(|b| b as i8).collect()
}

/// Folds a 32-bit sum back to a byte, mixing its high bits in.
fn fold(acc: i32) -> u8 {
    let v = acc as u32;
    (v ^ (v >> 8) ^ (v >> 16) ^ (v >> 24)) as u8
}

/// One row of the next matrix: `row · a`.
pub fn next_row(row: &[u8], a: &[i8], n: usize, out: &mut [u8], acc: &mut [i32]) {
    acc.iter_mut().for_each(|v| *v = 0);
    for (k, &x) in row.iter().enumerate() {
        let x = i32::from(x);
        let a_row = &a[k * n..(k + 1) * n];
        for (sum, &a) in acc.iter_mut().zip(a_row) {
            *sum = sum.wrapping_add(x.wrapping_mul(i32::from(a)));
        }
    }
    for (o, &sum) in out.iter_mut().zip(acc.iter()) {
        *o = fold(sum);
    }
}

fn row_leaf(step: u32, row: u32, bytes: &[u8]) -> Hash {
    let mut data = Vec::with_capacity(8 + bytes.len());
    data.extend_from_slice(&step.to_le_bytes());
    data.extend_from_slice(&row.to_le_bytes());
    data.extend_from_slice(bytes);
    leaf_hash(&data)
}

/// An honest prover's state: every matrix of the chain and the tree over their rows.
#[derive(Debug)]
pub struct ComputeProof {
    n: usize,
    matrices: Vec<Vec<u8>>,
    tree: Tree,
}

impl ComputeProof {
    /// Does the work: `steps` products of n×n matrices.
    pub fn prove(seed: &[u8; 32], params: &ComputeParams) -> ComputeProof {
        let n = params.matrix_n as usize;
        let mut matrices = Vec::with_capacity(params.steps as usize + 1);
        matrices.push(start_matrix(seed, n));
        let mut acc = vec![0i32; n];
        for step in 0..params.steps {
            let a = step_matrix(seed, step, n);
            let previous = matrices.last().expect("the start matrix");
            let mut next = vec![0u8; n * n];
            for (row, out) in previous.chunks(n).zip(next.chunks_mut(n)) {
                next_row(row, &a, n, out, &mut acc);
            }
            matrices.push(next);
        }
        ComputeProof::commit(n, matrices)
    }

    /// Commits to given matrices (the honest ones, or a cheater's, in tests).
    pub fn commit(n: usize, matrices: Vec<Vec<u8>>) -> ComputeProof {
        let leaves = matrices
            .iter()
            .enumerate()
            .flat_map(|(step, m)| {
                m.chunks(n)
                    .enumerate()
                    .map(move |(row, bytes)| row_leaf(step as u32, row as u32, bytes))
            })
            .collect();
        ComputeProof {
            n,
            matrices,
            tree: Tree::new(leaves),
        }
    }

    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    /// Mutable access for tests that model cheaters.
    pub fn matrices_mut(&mut self) -> &mut Vec<Vec<u8>> {
        &mut self.matrices
    }

    /// Opens the rows at the positions the root selects.
    pub fn open(&self, seed: &[u8; 32], params: &ComputeParams) -> Vec<RowOpening> {
        check_positions(seed, &self.root(), params)
            .into_iter()
            .map(|(step, row)| {
                let n = self.n;
                let (s, r) = (step as usize, row as usize);
                RowOpening {
                    step,
                    row,
                    values: hex::encode(&self.matrices[s][r * n..(r + 1) * n]),
                    next_values: hex::encode(&self.matrices[s + 1][r * n..(r + 1) * n]),
                    path: self.tree.path(s * n + r).iter().map(hex::encode).collect(),
                    next_path: self
                        .tree
                        .path((s + 1) * n + r)
                        .iter()
                        .map(hex::encode)
                        .collect(),
                }
            })
            .collect()
    }
}

/// The (step, row) pairs to check, drawn from the seed and the commitment (Fiat–Shamir): the
/// prover cannot know them before committing, and anyone can re-derive them later.
pub fn check_positions(seed: &[u8; 32], root: &Hash, params: &ComputeParams) -> Vec<(u32, u32)> {
    (0..params.checks)
        .map(|index| {
            let (a, b) = draw_pair(
                b"flotilla/proof/checks/v1",
                &[seed, root, &index.to_le_bytes()],
            );
            (
                (a % u64::from(params.steps)) as u32,
                (b % u64::from(params.matrix_n)) as u32,
            )
        })
        .collect()
}

fn decode_row(text: &str, n: usize, what: &'static str) -> Result<Vec<u8>, Failure> {
    let bytes = hex::decode(text).map_err(|_| Failure::Malformed(what))?;
    if bytes.len() != n {
        return Err(Failure::Malformed(what));
    }
    Ok(bytes)
}

pub(crate) fn decode_path(path: &[String]) -> Result<Vec<Hash>, Failure> {
    path.iter()
        .map(|h| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out).map_err(|_| Failure::Malformed("merkle path"))?;
            Ok(out)
        })
        .collect()
}

/// Checks every opening against the root and by recomputation.
pub fn verify(
    seed: &[u8; 32],
    params: &ComputeParams,
    root: &Hash,
    openings: &[RowOpening],
) -> Result<(), Failure> {
    let n = params.matrix_n as usize;
    let leaf_count = (params.steps as usize + 1) * n;
    let positions = check_positions(seed, root, params);
    if openings.len() != positions.len() {
        return Err(Failure::WrongOpenings);
    }
    let start = start_matrix(seed, n);
    let mut acc = vec![0i32; n];
    let mut expected = vec![0u8; n];
    let mut cached: Option<(u32, Vec<i8>)> = None;
    for (opening, &(step, row)) in openings.iter().zip(&positions) {
        if (opening.step, opening.row) != (step, row) {
            return Err(Failure::WrongOpenings);
        }
        let values = decode_row(&opening.values, n, "row")?;
        let next_values = decode_row(&opening.next_values, n, "next row")?;
        let (s, r) = (step as usize, row as usize);
        let in_tree = verify_path(
            root,
            &row_leaf(step, row, &values),
            s * n + r,
            leaf_count,
            &decode_path(&opening.path)?,
        ) && verify_path(
            root,
            &row_leaf(step + 1, row, &next_values),
            (s + 1) * n + r,
            leaf_count,
            &decode_path(&opening.next_path)?,
        );
        if !in_tree {
            return Err(Failure::NotCommitted { step, row });
        }
        if step == 0 && values != start[r * n..(r + 1) * n] {
            return Err(Failure::WrongRow { step, row });
        }
        if cached
            .as_ref()
            .is_none_or(|(cached_step, _)| *cached_step != step)
        {
            cached = Some((step, step_matrix(seed, step, n)));
        }
        let a = &cached.as_ref().expect("just cached").1;
        next_row(&values, a, n, &mut expected, &mut acc);
        if expected != next_values {
            return Err(Failure::WrongRow {
                step: step + 1,
                row,
            });
        }
    }
    Ok(())
}
