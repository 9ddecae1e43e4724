//! Checking RFC 6962 / RFC 9162 Merkle proofs, for anyone holding a digest.
//!
//! These functions follow the verification algorithms of RFC 9162 sections 2.1.3.2
//! (inclusion) and 2.1.4.2 (consistency) step by step. They share no code with the service's
//! tree building, on purpose: a bug there cannot hide itself by being repeated here.
//!
//! Each account's tree has one leaf per event of the account, in global order; a leaf is
//! `SHA-256(0x00 || event hash bytes)` ([`event_leaf_hash`]) and a node is
//! `SHA-256(0x01 || left || right)` ([`node_hash`]).

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// The leaf index is not inside the tree, or the sizes are out of order.
    OutOfRange(String),
    /// The proof has the wrong number of hashes for the sizes given.
    WrongLength,
    /// The proof computes a different root than the one given.
    RootMismatch,
    /// A hash is not 64 hex digits.
    BadHash(String),
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::OutOfRange(why) => write!(f, "out of range: {why}"),
            ProofError::WrongLength => write!(f, "the proof has the wrong number of hashes"),
            ProofError::RootMismatch => write!(f, "the proof does not lead to the given root"),
            ProofError::BadHash(h) => write!(f, "{h:?} is not a hex SHA-256 hash"),
        }
    }
}

impl std::error::Error for ProofError {}

/// The root of the empty tree: the SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The leaf of an event: its `hash` (hex) decoded to bytes, hashed as leaf data.
pub fn event_leaf_hash(event_hash_hex: &str) -> Result<Hash, ProofError> {
    Ok(leaf_hash(&parse_hash(event_hash_hex)?))
}

/// 64 hex digits to a hash.
pub fn parse_hash(hex_text: &str) -> Result<Hash, ProofError> {
    let bytes = hex::decode(hex_text).map_err(|_| ProofError::BadHash(hex_text.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| ProofError::BadHash(hex_text.to_string()))
}

/// Hex texts to hashes.
pub fn parse_hashes(hex_texts: &[String]) -> Result<Vec<Hash>, ProofError> {
    hex_texts.iter().map(|h| parse_hash(h)).collect()
}

/// The root an inclusion proof leads to (RFC 9162 2.1.3.2, steps 1-5).
pub fn root_from_inclusion_proof(
    leaf_index: u64,
    tree_size: u64,
    leaf: &Hash,
    audit_path: &[Hash],
) -> Result<Hash, ProofError> {
    if leaf_index >= tree_size {
        return Err(ProofError::OutOfRange(format!(
            "leaf {leaf_index} is not in a tree of size {tree_size}"
        )));
    }
    let mut fn_ = leaf_index;
    let mut sn = tree_size - 1;
    let mut r = *leaf;
    for p in audit_path {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

/// Checks that `leaf` is leaf `leaf_index` of the tree of `tree_size` leaves whose root is
/// `root` (RFC 9162 2.1.3.2).
pub fn verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf: &Hash,
    audit_path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_index, tree_size, leaf, audit_path)?;
    if &computed == root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Checks that the tree of `first` leaves with root `first_root` is a prefix of the tree of
/// `second` leaves with root `second_root` (RFC 9162 2.1.4.2). A tree is consistent with
/// itself by an empty proof, and the empty tree with every tree.
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::OutOfRange(format!(
            "a tree of size {first} cannot be a prefix of one of size {second}"
        )));
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    // Step 1: a first tree that is a complete subtree is its own first proof node.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    // Steps 2-4.
    let mut fn_ = first - 1;
    let mut sn = second - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    // Step 6.
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr == first_root && &sr == second_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    //! Against the published RFC 6962 test vectors (as used by the transparency-dev and
    //! certificate-transparency Go libraries): eight leaves, the roots of their first 1 to 8,
    //! and known proofs.
    use super::*;

    fn h(text: &str) -> Hash {
        parse_hash(text).unwrap()
    }

    fn leaves() -> Vec<Hash> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|d| leaf_hash(&hex::decode(d).unwrap()))
        .collect()
    }

    fn roots() -> Vec<Hash> {
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ]
        .iter()
        .map(|r| h(r))
        .collect()
    }

    /// (1-based leaf, tree size, audit path).
    fn inclusion_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                3,
                3,
                vec![h(
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                )],
            ),
            (
                2,
                5,
                vec![
                    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    /// (first size, second size, proof).
    pub(crate) fn consistency_vectors() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                5,
                vec![
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
            (
                6,
                7,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
        ]
    }

    #[test]
    fn the_empty_tree_has_the_published_root() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_published_inclusion_proofs_verify_and_every_corruption_of_them_fails() {
        let (leaves, roots) = (leaves(), roots());
        for (leaf, size, path) in inclusion_vectors() {
            let (index, root, hash) = (
                leaf - 1,
                roots[size as usize - 1],
                leaves[leaf as usize - 1],
            );
            verify_inclusion(index, size, &hash, &path, &root)
                .unwrap_or_else(|e| panic!("leaf {leaf} of {size}: {e}"));
            let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
            let mut bad: Vec<(u64, u64, Hash, Vec<Hash>, Hash)> = vec![
                (index.wrapping_sub(1), size, hash, path.clone(), root),
                (index + 1, size, hash, path.clone(), root),
                (index ^ 2, size, hash, path.clone(), root),
                (index, size * 2, hash, path.clone(), root),
                (index, size / 2, hash, path.clone(), root),
                (index, size, leaf_hash(b"WrongLeaf"), path.clone(), root),
                (index, size, hash, path.clone(), empty_root()),
                (index, size, hash, path.clone(), some),
                (index, size, hash, [path.clone(), vec![root]].concat(), root),
                (index, size, hash, [vec![root], path.clone()].concat(), root),
            ];
            for i in 0..path.len() {
                let mut flipped = path.clone();
                flipped[i][0] ^= 8;
                bad.push((index, size, hash, flipped, root));
            }
            if !path.is_empty() {
                bad.push((index, size, hash, path[..path.len() - 1].to_vec(), root));
            }
            for (n, (i, s, l, p, r)) in bad.into_iter().enumerate() {
                assert!(
                    verify_inclusion(i, s, &l, &p, &r).is_err(),
                    "corruption {n} of leaf {leaf} of {size} verified"
                );
            }
        }
    }

    #[test]
    fn the_published_consistency_proofs_verify_and_every_corruption_of_them_fails() {
        let roots = roots();
        for (first, second, proof) in consistency_vectors() {
            let (r1, r2) = (roots[first as usize - 1], roots[second as usize - 1]);
            verify_consistency(first, second, &proof, &r1, &r2)
                .unwrap_or_else(|e| panic!("{first} to {second}: {e}"));
            if proof.is_empty() {
                continue;
            }
            let mut bad: Vec<(u64, u64, Vec<Hash>, Hash, Hash)> = vec![
                (first - 1, second, proof.clone(), r1, r2),
                (first + 1, second, proof.clone(), r1, r2),
                (first ^ 2, second, proof.clone(), r1, r2),
                (first, second * 2, proof.clone(), r1, r2),
                (first, second / 2, proof.clone(), r1, r2),
                (first, second, proof.clone(), empty_root(), r2),
                (first, second, proof.clone(), r1, empty_root()),
                (first, second, proof.clone(), r2, r1),
                (first, second, vec![], r1, r2),
                (first, second, [proof.clone(), vec![r1]].concat(), r1, r2),
                (first, second, [proof.clone(), vec![r2]].concat(), r1, r2),
                (first, second, [vec![r1], proof.clone()].concat(), r1, r2),
                (
                    first,
                    second,
                    [vec![proof[0]], proof.clone()].concat(),
                    r1,
                    r2,
                ),
                (first, second, proof[..proof.len() - 1].to_vec(), r1, r2),
            ];
            for i in 0..proof.len() {
                let mut flipped = proof.clone();
                flipped[i][0] ^= 16;
                bad.push((first, second, flipped, r1, r2));
            }
            for (n, (a, b, p, x, y)) in bad.into_iter().enumerate() {
                assert!(
                    verify_consistency(a, b, &p, &x, &y).is_err(),
                    "corruption {n} of {first} to {second} verified"
                );
            }
        }
    }

    #[test]
    fn trivial_consistency_holds_only_with_an_empty_proof_and_equal_roots() {
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        assert!(verify_consistency(0, 5, &[], &a, &b).is_ok());
        assert!(verify_consistency(3, 3, &[], &a, &a).is_ok());
        assert!(verify_consistency(3, 3, &[], &a, &b).is_err());
        assert!(verify_consistency(3, 3, &[a], &a, &a).is_err());
        assert!(verify_consistency(4, 3, &[], &a, &a).is_err());
        assert!(verify_consistency(1, 2, &[], &a, &b).is_err());
    }
}
