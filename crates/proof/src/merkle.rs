//! A binary SHA-256 Merkle tree over fixed leaves, with inclusion paths.
//!
//! Leaves and inner nodes are hashed with different prefixes, so a path cannot pass an inner
//! node off as a leaf. An odd node at the end of a level is promoted unchanged.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(bytes);
    hasher.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// All levels of the tree, leaves first.
#[derive(Debug, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Tree {
        assert!(!leaves.is_empty(), "a tree needs at least one leaf");
        let mut levels = vec![leaves];
        while levels.last().expect("one level").len() > 1 {
            let below = levels.last().expect("one level");
            let above = below
                .chunks(2)
                .map(|pair| {
                    if pair.len() == 2 {
                        node_hash(&pair[0], &pair[1])
                    } else {
                        pair[0]
                    }
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    pub fn root(&self) -> Hash {
        self.levels.last().expect("one level")[0]
    }

    /// Every level, leaves first: the layout a prover that builds the tree elsewhere (a GPU)
    /// must reproduce.
    pub fn levels(&self) -> &[Vec<Hash>] {
        &self.levels
    }

    /// The siblings from leaf `index` up to the root (absent siblings are skipped).
    pub fn path(&self, mut index: usize) -> Vec<Hash> {
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = index ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            index /= 2;
        }
        path
    }
}

/// Whether `leaf` sits at `index` of a tree with `leaf_count` leaves and this `root`.
pub fn verify_path(
    root: &Hash,
    leaf: &Hash,
    mut index: usize,
    leaf_count: usize,
    path: &[Hash],
) -> bool {
    if index >= leaf_count {
        return false;
    }
    let mut node = *leaf;
    let mut width = leaf_count;
    let mut siblings = path.iter();
    while width > 1 {
        let sibling = index ^ 1;
        if sibling < width {
            let Some(other) = siblings.next() else {
                return false;
            };
            node = if index.is_multiple_of(2) {
                node_hash(&node, other)
            } else {
                node_hash(other, &node)
            };
        }
        index /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none() && node == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_leaf_proves_and_wrong_ones_do_not() {
        for count in [1usize, 2, 3, 5, 8, 13] {
            let leaves: Vec<Hash> = (0..count).map(|i| leaf_hash(&[i as u8])).collect();
            let tree = Tree::new(leaves.clone());
            for (index, leaf) in leaves.iter().enumerate() {
                let path = tree.path(index);
                assert!(
                    verify_path(&tree.root(), leaf, index, count, &path),
                    "count {count} index {index}"
                );
                assert!(!verify_path(
                    &tree.root(),
                    &leaf_hash(b"x"),
                    index,
                    count,
                    &path
                ));
                if count > 1 {
                    assert!(!verify_path(
                        &tree.root(),
                        leaf,
                        (index + 1) % count,
                        count,
                        &path
                    ));
                }
            }
        }
    }
}
