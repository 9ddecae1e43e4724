//! Each account's Merkle tree, kept by the append transaction and read for digests and proofs.
//! The tree's shape and proofs are [`crate::audit::tree`]'s; this module stores and fetches.

use std::collections::HashMap;

use sqlx::AnyConnection;
use taskledger_events::merkle::{event_leaf_hash, Hash};

use super::sql::Statement;
use super::{Store, StoreError};
use crate::audit::tree::{
    block_nodes, is_stored, Frontier, NodeId, Plan, TreeError, BLOCK_LEAVES, STORED_FROM_LEVEL,
};

/// Nodes per INSERT: 5 parameters each.
const NODES_PER_INSERT: usize = 1000;
/// Events read per page when a tree is rebuilt or recomputed.
const PAGE: i64 = 5000;
/// Blocks read per round when an event's leaf is searched for.
const SEARCH_PROBES: u64 = 32;

/// One appended event, as its account's tree sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leaf<'a> {
    pub account_id: &'a str,
    pub global_position: i64,
    /// The event's hex hash.
    pub hash: &'a str,
}

/// An account's tree as of its last append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    pub account_id: String,
    pub tree_size: u64,
    pub last_global_position: i64,
    pub root: Hash,
}

#[derive(sqlx::FromRow)]
struct HeadRow {
    account_id: String,
    tree_size: i64,
    last_global_position: i64,
    frontier: String,
}

struct NewNode<'a> {
    account_id: &'a str,
    id: NodeId,
    hash: Hash,
    /// The global position of the node's last leaf: blocks are searched by it.
    global_position: i64,
}

fn corrupt_tree(account_id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptTree {
        account_id: account_id.to_string(),
        message: e.to_string(),
    }
}

fn leaf_of(account_id: &str, hash: &str) -> Result<Hash, StoreError> {
    event_leaf_hash(hash).map_err(|e| corrupt_tree(account_id, e))
}

/// Where a block's leaves start: after the last leaf of the stored node before it, which
/// `fetched` must hold.
fn block_start(
    account_id: &str,
    fetched: &HashMap<NodeId, (Hash, i64)>,
    block: u64,
) -> Result<i64, StoreError> {
    if block == 0 {
        return Ok(0);
    }
    let id = NodeId {
        level: STORED_FROM_LEVEL,
        index: block - 1,
    };
    fetched.get(&id).map(|(_, last)| *last).ok_or_else(|| {
        corrupt_tree(
            account_id,
            TreeError::MissingNode {
                level: id.level,
                index: id.index,
            },
        )
    })
}

/// The frontiers of `accounts` as stored (an account without a tree has an empty one).
async fn read_frontiers(
    conn: &mut AnyConnection,
    accounts: &[&str],
) -> Result<HashMap<String, (Frontier, i64)>, StoreError> {
    let mut sql = String::from(
        "SELECT account_id, tree_size, last_global_position, frontier FROM merkle_heads \
         WHERE account_id IN (",
    );
    for i in 0..accounts.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("${}", i + 1));
    }
    sql.push(')');
    let rows: Vec<HeadRow> = accounts
        .iter()
        .fold(sqlx::query_as(&sql), |q, a| q.bind(*a))
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|r| {
            let frontier = Frontier::from_stored(r.tree_size as u64, &r.frontier)
                .map_err(|e| corrupt_tree(&r.account_id, e))?;
            Ok((r.account_id, (frontier, r.last_global_position)))
        })
        .collect()
}

/// Writes new nodes. The append path inserts (`replace` false): a plain INSERT is what keeps
/// the trees' cost small on PostgreSQL, and an append never meets a stored node. A rebuild
/// overwrites (`replace` true): a node is a function of the events below it, so this writes
/// the same value again, except over the leftovers of a ledger whose events were removed
/// behind its back, which `verify --digest` reports and a rebuild clears.
async fn write_nodes(
    conn: &mut AnyConnection,
    nodes: &[NewNode<'_>],
    replace: bool,
) -> Result<(), StoreError> {
    for chunk in nodes.chunks(NODES_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO merkle_nodes (account_id, level, idx, hash, global_position) VALUES ",
        );
        for r in 0..chunk.len() {
            let b = r * 5;
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        if replace {
            sql.push_str(
                " ON CONFLICT (account_id, level, idx) DO UPDATE SET hash = excluded.hash, \
                 global_position = excluded.global_position",
            );
        }
        chunk
            .iter()
            .fold(sqlx::query(&sql), |q, n| {
                q.bind(n.account_id)
                    .bind(i64::from(n.id.level))
                    .bind(n.id.index as i64)
                    .bind(n.hash.to_vec())
                    .bind(n.global_position)
            })
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn write_heads(
    conn: &mut AnyConnection,
    heads: &[(&str, &Frontier, i64)],
) -> Result<(), StoreError> {
    if heads.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO merkle_heads (account_id, tree_size, last_global_position, frontier) VALUES ",
    );
    for r in 0..heads.len() {
        let b = r * 4;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
    }
    sql.push_str(
        " ON CONFLICT (account_id) DO UPDATE SET tree_size = excluded.tree_size, \
         last_global_position = excluded.last_global_position, frontier = excluded.frontier",
    );
    heads
        .iter()
        .fold(sqlx::query(&sql), |q, (account, frontier, last)| {
            q.bind(*account)
                .bind(frontier.size() as i64)
                .bind(*last)
                .bind(frontier.to_stored())
        })
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// An account's frontier and the global position of its last leaf.
pub(super) type Head = (Frontier, i64);

/// Accounts whose frontier a process keeps in memory at most. An entry is an account id and
/// `O(log n)` hashes (under a kilobyte for a billion leaves); an account left out is read
/// back on its next append.
const REMEMBERED_ACCOUNTS: usize = 10_000;
/// Values one guarded statement binds at most (PostgreSQL takes 65,535); a larger append
/// reads the frontiers and writes in separate statements.
const GUARDED_VALUES: usize = 30_000;

/// The frontiers this process last wrote, per account, so that an append need not read
/// them. What is remembered is only a guess: the statement that grows a tree from it checks,
/// under the ledger head lock, that the stored frontier is still that one (another process,
/// a rolled-back transaction or a rebuild may have changed it), and writes nothing if not.
#[derive(Debug, Default)]
pub struct KnownFrontiers {
    heads: HashMap<String, Head>,
    /// How many appends read their trees' heads (not known, or known wrong).
    reads: u64,
}

impl KnownFrontiers {
    pub(super) fn get(&self, account_id: &str) -> Option<&Head> {
        self.heads.get(account_id)
    }

    pub(super) fn remember(&mut self, account_id: String, head: Head) {
        if !self.heads.contains_key(&account_id) && self.heads.len() >= REMEMBERED_ACCOUNTS {
            // Any one goes: the bound matters, which one does not.
            if let Some(some) = self.heads.keys().next().cloned() {
                self.heads.remove(&some);
            }
        }
        self.heads.insert(account_id, head);
    }

    pub(super) fn forget(&mut self, account_id: &str) {
        self.heads.remove(account_id);
    }

    pub(super) fn read_back(&mut self) {
        self.reads += 1;
    }
}

/// What appending leaves does to their accounts' trees, worked out in memory from the heads
/// the trees are expected to have.
pub(super) struct Growth<'a> {
    accounts: Vec<GrownAccount<'a>>,
    nodes: Vec<NewNode<'a>>,
    /// The accounts' heads before, after, and the new nodes, as the guarded statement binds
    /// them (JSON arrays of rows).
    json: [String; 3],
}

struct GrownAccount<'a> {
    account_id: &'a str,
    size_before: i64,
    stored_before: String,
    after: Head,
    stored_after: String,
}

impl<'a> Growth<'a> {
    /// The growth from the heads `known` gives, `None` if it does not know every account's.
    pub(super) fn from_known(
        leaves: &[Leaf<'a>],
        known: impl Fn(&str) -> Option<Head>,
    ) -> Result<Option<Growth<'a>>, StoreError> {
        let mut starts = HashMap::new();
        for leaf in leaves {
            if !starts.contains_key(leaf.account_id) {
                let Some(head) = known(leaf.account_id) else {
                    return Ok(None);
                };
                starts.insert(leaf.account_id, head);
            }
        }
        Growth::from(leaves, starts).map(Some)
    }

    /// The growth from `starts`, which holds every account's head (in any order).
    fn from(
        leaves: &[Leaf<'a>],
        mut starts: HashMap<&'a str, Head>,
    ) -> Result<Growth<'a>, StoreError> {
        let mut accounts: Vec<GrownAccount> = Vec::new();
        let mut nodes: Vec<NewNode> = Vec::with_capacity(leaves.len() / 4 + 1);
        let mut stored: Vec<(NodeId, Hash)> = Vec::new();
        for leaf in leaves {
            let i = match accounts
                .iter()
                .position(|a| a.account_id == leaf.account_id)
            {
                Some(i) => i,
                None => {
                    let head = starts
                        .remove(leaf.account_id)
                        .unwrap_or_else(|| (Frontier::empty(), 0));
                    accounts.push(GrownAccount {
                        account_id: leaf.account_id,
                        size_before: head.0.size() as i64,
                        stored_before: head.0.to_stored(),
                        after: head,
                        stored_after: String::new(),
                    });
                    accounts.len() - 1
                }
            };
            let (frontier, last) = &mut accounts[i].after;
            stored.clear();
            frontier.push(leaf_of(leaf.account_id, leaf.hash)?, &mut stored);
            *last = leaf.global_position;
            for (id, hash) in stored.iter().filter(|(id, _)| is_stored(*id)) {
                nodes.push(NewNode {
                    account_id: leaf.account_id,
                    id: *id,
                    hash: *hash,
                    global_position: leaf.global_position,
                });
            }
        }
        for a in &mut accounts {
            a.stored_after = a.after.0.to_stored();
        }
        let before: Vec<serde_json::Value> = accounts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "account_id": a.account_id,
                    "tree_size": a.size_before,
                    "frontier": a.stored_before,
                })
            })
            .collect();
        let after: Vec<serde_json::Value> = accounts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "account_id": a.account_id,
                    "tree_size": a.after.0.size(),
                    "last_global_position": a.after.1,
                    "frontier": a.stored_after,
                })
            })
            .collect();
        let new_nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "a": n.account_id,
                    "l": n.id.level,
                    "i": n.id.index,
                    "h": hex::encode(n.hash),
                    "g": n.global_position,
                })
            })
            .collect();
        let json = [before, after, new_nodes].map(|rows| serde_json::Value::from(rows).to_string());
        Ok(Growth {
            accounts,
            nodes,
            json,
        })
    }

    /// Whether [`Growth::push_guarded`] stays within a statement's bound values.
    pub(super) fn fits_one_statement(&self, already_bound: usize) -> bool {
        already_bound + 4 <= GUARDED_VALUES
    }

    /// The accounts' heads once grown.
    pub(super) fn into_heads(self) -> impl Iterator<Item = (String, Head)> + 'a {
        self.accounts
            .into_iter()
            .map(|a| (a.account_id.to_string(), a.after))
    }

    /// PostgreSQL common table expressions, to follow `WITH ` or a comma: `mk` (one row, `ok`:
    /// whether every account's stored tree is the one this growth starts from, a row-less
    /// account counting as the empty tree), then the new nodes and heads, written only if
    /// `ok`. Appends hold the ledger head lock, so nothing changes the trees between the
    /// check and the writes. The rows travel as three JSON values, so the text is the same
    /// for every growth and PostgreSQL prepares and plans it once per connection.
    pub(super) fn push_guarded(&'a self, s: &mut Statement<'a>) {
        s.push("mk AS (SELECT COUNT(*) = ");
        s.int(Some(self.accounts.len() as i64));
        s.push(" AS ok FROM json_to_recordset(");
        s.text(Some(&self.json[0]));
        s.push(
            "::json) AS v (account_id text, tree_size bigint, frontier text) \
             LEFT JOIN merkle_heads m ON m.account_id = v.account_id \
             WHERE COALESCE(m.tree_size, 0) = v.tree_size \
             AND COALESCE(m.frontier, '') = v.frontier), \
             mh AS (INSERT INTO merkle_heads (account_id, tree_size, last_global_position, \
             frontier) SELECT account_id, tree_size, last_global_position, frontier \
             FROM json_to_recordset(",
        );
        s.text(Some(&self.json[1]));
        s.push(
            "::json) AS v (account_id text, tree_size bigint, last_global_position bigint, \
             frontier text) WHERE (SELECT ok FROM mk) ON CONFLICT (account_id) DO UPDATE \
             SET tree_size = excluded.tree_size, \
             last_global_position = excluded.last_global_position, \
             frontier = excluded.frontier), \
             mn AS (INSERT INTO merkle_nodes (account_id, level, idx, hash, global_position) \
             SELECT a, l, i, decode(h, 'hex'), g FROM json_to_recordset(",
        );
        s.text(Some(&self.json[2]));
        s.push(
            "::json) AS v (a text, l bigint, i bigint, h text, g bigint) \
             WHERE (SELECT ok FROM mk))",
        );
    }
}

/// Adds appended events (in global order, any accounts) to their accounts' trees as
/// stored, inside the append transaction: one read of the accounts' frontiers, then the new
/// stored nodes (an eighth of one per event) and the new frontiers, each in one statement. The accounts'
/// heads once grown.
pub(super) async fn append_leaves(
    conn: &mut AnyConnection,
    leaves: &[Leaf<'_>],
) -> Result<Vec<(String, Head)>, StoreError> {
    if leaves.is_empty() {
        return Ok(Vec::new());
    }
    let mut accounts: Vec<&str> = Vec::new();
    for leaf in leaves {
        if !accounts.contains(&leaf.account_id) {
            accounts.push(leaf.account_id);
        }
    }
    let mut read = read_frontiers(conn, &accounts).await?;
    let starts: HashMap<&str, Head> = accounts
        .iter()
        .filter_map(|a| read.remove(*a).map(|head| (*a, head)))
        .collect();
    let growth = Growth::from(leaves, starts)?;
    write_nodes(conn, &growth.nodes, false).await?;
    let heads: Vec<(&str, &Frontier, i64)> = growth
        .accounts
        .iter()
        .map(|a| (a.account_id, &a.after.0, a.after.1))
        .collect();
    write_heads(conn, &heads).await?;
    Ok(growth.into_heads().collect())
}

/// Grows the trees by `leaves` with one guarded statement (see [`Growth::push_guarded`]) if
/// `known` has every account's head; `None` if it has not, or they were not the stored ones
/// and nothing was written.
pub(super) async fn append_known_leaves(
    conn: &mut AnyConnection,
    leaves: &[Leaf<'_>],
    known: impl Fn(&str) -> Option<Head>,
) -> Result<Option<Vec<(String, Head)>>, StoreError> {
    let Some(growth) = Growth::from_known(leaves, known)? else {
        return Ok(None);
    };
    if !growth.fits_one_statement(0) {
        return Ok(None);
    }
    let mut s = Statement::default();
    s.push("WITH ");
    growth.push_guarded(&mut s);
    s.push(" SELECT ok FROM mk");
    let ok: bool = sqlx::Row::try_get(&s.query().fetch_one(&mut *conn).await?, 0)?;
    Ok(ok.then(|| growth.into_heads().collect()))
}

impl Store {
    /// How many appends through this store (and its clones) read their trees' heads from
    /// the database instead of growing them from the heads this process wrote last.
    pub fn tree_heads_read(&self) -> u64 {
        self.frontiers.lock().expect("the frontiers lock").reads
    }

    /// The account's tree as of its last append (an empty tree if it has no events).
    pub async fn tree_head(&self, account_id: &str) -> Result<TreeHead, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let frontiers = read_frontiers(&mut conn, &[account_id]).await?;
        let (frontier, last) = frontiers
            .get(account_id)
            .cloned()
            .unwrap_or_else(|| (Frontier::empty(), 0));
        Ok(TreeHead {
            account_id: account_id.to_string(),
            tree_size: frontier.size(),
            last_global_position: last,
            root: frontier.root(),
        })
    }

    /// Runs a root or proof plan over the account's tree: one read of the `O(log n)` stored
    /// nodes it needs (with the nodes that say where its blocks start), then one read of each
    /// block's leaves (at most two blocks of [`BLOCK_LEAVES`] events).
    pub async fn tree_answer(
        &self,
        account_id: &str,
        plan: &Plan,
    ) -> Result<Vec<Hash>, StoreError> {
        let (mut wanted, blocks) = plan.needed_split();
        // A block starts after the last leaf of the stored node before it.
        wanted.extend(blocks.iter().filter(|b| **b > 0).map(|b| NodeId {
            level: STORED_FROM_LEVEL,
            index: b - 1,
        }));
        wanted.sort_unstable();
        wanted.dedup();
        let fetched = self.stored_nodes(account_id, &wanted).await?;
        let mut nodes: HashMap<NodeId, Hash> =
            fetched.iter().map(|(id, (hash, _))| (*id, *hash)).collect();
        for block in blocks {
            let after = block_start(account_id, &fetched, block)?;
            let leaves = self.block_leaves(account_id, after).await?;
            nodes.extend(block_nodes(block, &leaves));
        }
        plan.run(&nodes)
            .map_err(|e: TreeError| corrupt_tree(account_id, e))
    }

    /// The stored nodes among `ids`, with the global position of each one's last leaf.
    async fn stored_nodes(
        &self,
        account_id: &str,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, (Hash, i64)>, StoreError> {
        let mut nodes = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let mut sql = String::from(
                "SELECT level, idx, hash, global_position FROM merkle_nodes \
                 WHERE account_id = $1 AND (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str(&format!(
                    "(level = ${} AND idx = ${})",
                    2 + 2 * i,
                    3 + 2 * i
                ));
            }
            sql.push(')');
            let rows: Vec<(i64, i64, Vec<u8>, Option<i64>)> = chunk
                .iter()
                .fold(sqlx::query_as(&sql).bind(account_id), |q, id| {
                    q.bind(i64::from(id.level)).bind(id.index as i64)
                })
                .fetch_all(&self.pool)
                .await?;
            for (level, idx, hash, position) in rows {
                let hash: Hash = hash
                    .try_into()
                    .map_err(|_| corrupt_tree(account_id, "a node is not 32 bytes"))?;
                nodes.insert(
                    NodeId {
                        level: level as u32,
                        index: idx as u64,
                    },
                    (hash, position.unwrap_or(0)),
                );
            }
        }
        Ok(nodes)
    }

    /// The leaves of the block that starts after global position `after`: the hashes of the
    /// account's next [`BLOCK_LEAVES`] events (fewer for the block not yet complete).
    async fn block_leaves(&self, account_id: &str, after: i64) -> Result<Vec<Hash>, StoreError> {
        let hashes: Vec<String> = sqlx::query_scalar(
            "SELECT hash FROM events WHERE account_id = $1 AND global_position > $2 \
             ORDER BY global_position LIMIT $3",
        )
        .bind(account_id)
        .bind(after)
        .bind(BLOCK_LEAVES as i64)
        .fetch_all(&self.pool)
        .await?;
        hashes.iter().map(|h| leaf_of(account_id, h)).collect()
    }

    /// The leaf index and global position of one of the account's events, if it is in the
    /// account's tree. Leaves are in global order, and each stored node of the lowest stored
    /// level knows the position of its block's last leaf, so the event's block is found by
    /// searching those: each round reads [`SEARCH_PROBES`] of them by primary key and narrows
    /// the range that many times (six rounds for a billion leaves), then one read of the
    /// block's events places it.
    pub async fn leaf_of_event(
        &self,
        account_id: &str,
        event_id: &str,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE event_id = $1 AND account_id = $2",
        )
        .bind(event_id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(position) = position else {
            return Ok(None);
        };
        let size = self.tree_head(account_id).await?.tree_size;
        // The event's block is the first complete one whose last leaf is at or after it, or
        // the block not yet complete: it is in [lo, hi], where hi = blocks is that last one.
        let blocks = size / BLOCK_LEAVES;
        let (mut lo, mut hi) = (0u64, blocks);
        while lo < hi {
            let step = (hi - lo).div_ceil(SEARCH_PROBES).max(1);
            let probes: Vec<u64> = (lo..hi).step_by(step as usize).collect();
            let ids: Vec<NodeId> = probes
                .iter()
                .map(|index| NodeId {
                    level: STORED_FROM_LEVEL,
                    index: *index,
                })
                .collect();
            let found = self.stored_nodes(account_id, &ids).await?;
            let mut next = (probes[probes.len() - 1] + 1, hi);
            for (i, id) in ids.iter().enumerate() {
                let (_, last) = found.get(id).ok_or_else(|| {
                    corrupt_tree(account_id, "a stored node below the tree's size is missing")
                })?;
                if *last >= position {
                    next = (if i == 0 { lo } else { probes[i - 1] + 1 }, probes[i]);
                    break;
                }
            }
            (lo, hi) = next;
        }
        let block = lo;
        let mut before = 0;
        if block > 0 {
            let id = NodeId {
                level: STORED_FROM_LEVEL,
                index: block - 1,
            };
            let found = self.stored_nodes(account_id, &[id]).await?;
            before = found
                .get(&id)
                .ok_or_else(|| corrupt_tree(account_id, "a stored node is missing"))?
                .1;
        }
        let positions: Vec<i64> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE account_id = $1 AND global_position > $2 \
             ORDER BY global_position LIMIT $3",
        )
        .bind(account_id)
        .bind(before)
        .bind(BLOCK_LEAVES as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(positions
            .iter()
            .position(|p| *p == position)
            .map(|offset| block * BLOCK_LEAVES + offset as u64)
            .filter(|leaf| *leaf < size)
            .map(|leaf| (leaf, position)))
    }

    /// The accounts with events at global positions in `(after, until]`: one range read of
    /// the events' primary key, so its cost is that of the events in the range.
    pub async fn accounts_with_events_between(
        &self,
        after: i64,
        until: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT account_id FROM events WHERE global_position > $1 \
             AND global_position <= $2",
        )
        .bind(after)
        .bind(until)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Builds the trees of a ledger that had events before trees existed, once.
    pub async fn ensure_trees(&self) -> Result<(), StoreError> {
        let complete: i64 = sqlx::query_scalar("SELECT complete FROM merkle_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        if complete == 1 {
            return Ok(());
        }
        tracing::info!("building the accounts' Merkle trees over the existing events (once)");
        self.rebuild_trees(|_| {}).await?;
        sqlx::query("UPDATE merkle_state SET complete = 1 WHERE id = 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rebuilds every account's tree from its events (`replay`). Each account's events are
    /// streamed a page at a time while writers run; only the few events appended meanwhile
    /// are folded in under the ledger head lock, where the account's frontier is written.
    pub async fn rebuild_trees(&self, progress: impl Fn(u64)) -> Result<u64, StoreError> {
        let accounts: Vec<String> =
            sqlx::query_scalar("SELECT account_id FROM accounts ORDER BY account_id")
                .fetch_all(&self.pool)
                .await?;
        let mut leaves = 0;
        for account in accounts {
            // Each account has two ledgers, each with its tree: its own and its test ledger.
            for ledger in [false, true].map(|test| taskledger_events::ledger_of(&account, test)) {
                leaves += self.rebuild_tree(&ledger, &progress).await?;
            }
        }
        Ok(leaves)
    }

    async fn rebuild_tree(
        &self,
        account_id: &str,
        progress: &impl Fn(u64),
    ) -> Result<u64, StoreError> {
        let snapshot = self.head_position().await?;
        let mut frontier = Frontier::empty();
        let mut last = 0;
        let mut conn = self.pool.acquire().await?;
        let mut done = 0;
        loop {
            let page = fold_page(
                &mut conn,
                account_id,
                &mut frontier,
                &mut last,
                Some(snapshot),
            )
            .await?;
            done += page;
            progress(page);
            if page == 0 {
                break;
            }
        }
        drop(conn);
        let mut tx = self.begin_append().await?;
        loop {
            let page = fold_page(tx.conn(), account_id, &mut frontier, &mut last, None).await?;
            done += page;
            if page == 0 {
                break;
            }
        }
        // Nodes beyond the rebuilt tree (left by events removed behind the ledger's back)
        // would collide with the next appends: one range of each level.
        for level in 0..64u32 {
            let first_beyond = (frontier.size() >> level) as i64;
            sqlx::query(
                "DELETE FROM merkle_nodes WHERE account_id = $1 AND level = $2 AND idx >= $3",
            )
            .bind(account_id)
            .bind(i64::from(level))
            .bind(first_beyond)
            .execute(tx.conn())
            .await?;
        }
        write_heads(tx.conn(), &[(account_id, &frontier, last)]).await?;
        tx.commit().await?;
        // What this process remembered of the tree may be what the rebuild replaced.
        self.frontiers
            .lock()
            .expect("the frontiers lock")
            .forget(account_id);
        Ok(done)
    }
}

/// Folds the account's next page of events (after `last`, up to `until`) into `frontier`,
/// writing every node it completes; the number of events folded.
async fn fold_page(
    conn: &mut AnyConnection,
    account_id: &str,
    frontier: &mut Frontier,
    last: &mut i64,
    until: Option<i64>,
) -> Result<u64, StoreError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT global_position, hash FROM events WHERE account_id = $1 \
         AND global_position > $2 AND global_position <= $3 ORDER BY global_position LIMIT $4",
    )
    .bind(account_id)
    .bind(*last)
    .bind(until.unwrap_or(i64::MAX))
    .bind(PAGE)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = Vec::new();
    let mut nodes = Vec::with_capacity(rows.len() / 4 + 1);
    for (position, hash) in &rows {
        stored.clear();
        frontier.push(leaf_of(account_id, hash)?, &mut stored);
        for (id, hash) in stored.iter().filter(|(id, _)| is_stored(*id)) {
            nodes.push(NewNode {
                account_id,
                id: *id,
                hash: *hash,
                global_position: *position,
            });
        }
        *last = *position;
    }
    write_nodes(conn, &nodes, true).await?;
    Ok(rows.len() as u64)
}

/// What the account's events themselves say about its tree, recomputed from scratch: for
/// `verify --digest`, which must not trust the stored nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecomputedTree {
    pub events: u64,
    /// The root over the first `at` events, if the account has that many.
    pub root_at: Option<Hash>,
    pub root: Hash,
    /// The first event whose stored hash is not the hash of its content.
    pub first_bad_hash: Option<String>,
    /// The first stored subtree the events no longer give.
    pub first_changed_leaves: Option<ChangedLeaves>,
}

/// Leaves of which at least one differs from what was appended. Only subtrees of
/// [`STORED_FROM_LEVEL`] and up are kept, with the frontier's smaller ones at the tree's
/// right edge, so a change is placed within at most a block of [`BLOCK_LEAVES`] events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedLeaves {
    pub first_leaf: u64,
    /// The events at those leaves, in order.
    pub event_ids: Vec<String>,
}

impl Store {
    /// Streams the account's events in global order (constant memory) and recomputes its
    /// tree, the root at `at` leaves, and where the events no longer match what is stored.
    pub async fn recompute_tree(
        &self,
        account_id: &str,
        at: u64,
    ) -> Result<RecomputedTree, StoreError> {
        let mut frontier = Frontier::empty();
        let mut out = RecomputedTree {
            events: 0,
            root_at: (at == 0).then(taskledger_events::merkle::empty_root),
            root: taskledger_events::merkle::empty_root(),
            first_bad_hash: None,
            first_changed_leaves: None,
        };
        let mut after = 0;
        let sql = format!(
            "SELECT {} FROM events WHERE account_id = $1 AND global_position > $2 \
             ORDER BY global_position LIMIT $3",
            super::read::EVENT_COLUMNS
        );
        let mut scratch = Vec::new();
        // The events of the block being walked: a change is named by them.
        let mut block: Vec<String> = Vec::with_capacity(BLOCK_LEAVES as usize);
        loop {
            let rows: Vec<super::read::EventRow> = sqlx::query_as(&sql)
                .bind(account_id)
                .bind(after)
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await?;
            if rows.is_empty() {
                break;
            }
            // The stored nodes of the blocks these events complete, one primary-key range read.
            let first = frontier.size() / BLOCK_LEAVES;
            let end = (frontier.size() + rows.len() as u64) / BLOCK_LEAVES;
            let stored: HashMap<i64, Vec<u8>> = sqlx::query_as(
                "SELECT idx, hash FROM merkle_nodes WHERE account_id = $1 AND level = $2 \
                 AND idx >= $3 AND idx < $4",
            )
            .bind(account_id)
            .bind(i64::from(STORED_FROM_LEVEL))
            .bind(first as i64)
            .bind(end as i64)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
            for e in &rows {
                after = e.global_position;
                let content_matches = e
                    .envelope()
                    .ok()
                    .and_then(|env| env.expected_hash_of(&e.payload).ok())
                    .is_some_and(|h| h == e.hash);
                if !content_matches && out.first_bad_hash.is_none() {
                    out.first_bad_hash = Some(e.event_id.clone());
                }
                block.push(e.event_id.clone());
                scratch.clear();
                frontier.push(leaf_of(account_id, &e.hash)?, &mut scratch);
                for (id, hash) in &scratch {
                    if id.level != STORED_FROM_LEVEL {
                        continue;
                    }
                    if out.first_changed_leaves.is_none()
                        && stored.get(&(id.index as i64)).map(Vec::as_slice) != Some(&hash[..])
                    {
                        out.first_changed_leaves = Some(ChangedLeaves {
                            first_leaf: id.index * BLOCK_LEAVES,
                            event_ids: block.clone(),
                        });
                    }
                    block.clear();
                }
                if frontier.size() == at {
                    out.root_at = Some(frontier.root());
                }
            }
        }
        if out.first_changed_leaves.is_none() {
            out.first_changed_leaves = self
                .changed_in_last_block(account_id, &frontier, &block)
                .await?;
        }
        out.events = frontier.size();
        out.root = frontier.root();
        Ok(out)
    }

    /// The first of the smaller subtrees of the block not yet complete that differs from the
    /// stored frontier's, when the stored tree has as many leaves as the events (otherwise
    /// the sizes already say what broke).
    async fn changed_in_last_block(
        &self,
        account_id: &str,
        frontier: &Frontier,
        block: &[String],
    ) -> Result<Option<ChangedLeaves>, StoreError> {
        let stored = read_frontiers(&mut *self.pool.acquire().await?, &[account_id]).await?;
        let Some((stored, _)) = stored.get(account_id) else {
            return Ok(None);
        };
        if stored.size() != frontier.size() {
            return Ok(None);
        }
        let size = frontier.size();
        // The frontier's subtrees, largest first, one per set bit of the size; those below
        // the stored level cover the block's events in order.
        let mut first_leaf = size - size % BLOCK_LEAVES;
        let mut offset = 0usize;
        for (level, (mine, theirs)) in (0..STORED_FROM_LEVEL)
            .rev()
            .filter(|level| size & (1 << level) != 0)
            .zip(frontier.low_hashes().iter().zip(stored.low_hashes()))
        {
            let leaves = 1usize << level;
            if mine != theirs {
                return Ok(Some(ChangedLeaves {
                    first_leaf,
                    event_ids: block[offset..offset + leaves].to_vec(),
                }));
            }
            first_leaf += leaves as u64;
            offset += leaves;
        }
        Ok(None)
    }
}
