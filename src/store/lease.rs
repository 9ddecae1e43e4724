//! Leadership among the processes sharing a ledger: one active relay (or reactor) at a time.
//!
//! On PostgreSQL a session-level advisory lock, held on a connection of its own: when the
//! holder dies its connection closes and the lock is free for another process. A SQLite ledger
//! belongs to one process, which is therefore always the leader.

use sqlx::AnyConnection;
use sqlx::{Connection, Pool};

use super::{Backend, Store, StoreError};

pub struct Leadership {
    conn: Option<AnyConnection>,
}

impl Leadership {
    /// Whether the lock is still held: the connection that holds it still answers.
    pub async fn still_held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}

/// A stable advisory-lock key for a role name.
fn lock_key(role: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in role.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl Store {
    /// Takes leadership of `role` if no other process has it.
    pub async fn try_lead(&self, role: &str) -> Result<Option<Leadership>, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(Leadership { conn: None }));
        }
        let mut conn = Pool::acquire(&self.pool).await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(role))
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Leadership { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
