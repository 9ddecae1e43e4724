//! Durable callback deliveries: scheduled once per triggering event, claimed under a lease.

use super::{now_micros, Store, StoreError};

/// Where a delivery stands; stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not yet delivered nor given up: due at `next_attempt_at_us`.
    Pending,
    /// A receiver answered 2xx; recorded as `CallbackDelivered`.
    Delivered,
    /// Given up; recorded as `CallbackFailed`.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// A due delivery, as the dispatcher chooses among them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueDelivery {
    pub delivery_id: String,
    pub account_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    pub delivery_id: String,
    pub account_id: String,
    pub task_id: String,
    pub for_sequence: i64,
    pub url: String,
    pub body: String,
    /// Attempts made before this one.
    #[sqlx(try_from = "i64")]
    pub attempts: u32,
    pub created_at_us: i64,
    /// Set by a claim: the lease's end, which is also the claim's fencing token. Outcomes are
    /// recorded only while the row still carries it, so a dispatcher whose lease ran out
    /// (and whose delivery another process took over) cannot overwrite the other's outcome.
    pub lease_until_us: Option<i64>,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_pending_created_at_us: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "delivery_id, account_id, task_id, for_sequence, url, body, \
     attempts, created_at_us, lease_until_us";

impl Store {
    /// Schedules a delivery; scheduling the same event again changes nothing.
    pub async fn schedule_delivery(&self, d: &Delivery) -> Result<(), StoreError> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO callback_deliveries (delivery_id, account_id, task_id, for_sequence, url, \
             body, state, attempts, next_attempt_at_us, created_at_us, updated_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8, $8) \
             ON CONFLICT (delivery_id) DO NOTHING",
        )
        .bind(&d.delivery_id)
        .bind(&d.account_id)
        .bind(&d.task_id)
        .bind(d.for_sequence)
        .bind(&d.url)
        .bind(&d.body)
        .bind(DeliveryState::Pending.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The oldest due, unleased delivery of each account with pending work, up to `limit`
    /// accounts, the longest due first, leaving out the accounts in `skip` (those already at
    /// their in-flight cap in this process).
    ///
    /// The accounts are found by a skip scan of the `(state, account_id, next_attempt_at_us)`
    /// index and each is probed once, so the cost follows the number of accounts with pending
    /// deliveries, never the size of one account's backlog: a tenant with a million due
    /// callbacks to a dead receiver costs the others one index probe per claim.
    pub async fn due_deliveries(
        &self,
        skip: &[String],
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let now = now_micros();
        // The Any driver binds no arrays: one placeholder per skipped account.
        let skipped = if skip.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..skip.len()).map(|i| format!("${}", i + 3)).collect();
            format!("AND a.account_id NOT IN ({}) ", marks.join(", "))
        };
        let due = "FROM callback_deliveries d \
             WHERE d.state = $1 AND d.account_id = a.account_id AND d.next_attempt_at_us <= $2 \
             AND (d.lease_until_us IS NULL OR d.lease_until_us < $2) \
             ORDER BY d.next_attempt_at_us LIMIT 1";
        let sql = format!(
            "WITH RECURSIVE accounts(account_id) AS ( \
                 SELECT MIN(account_id) FROM callback_deliveries WHERE state = $1 \
                 UNION ALL \
                 SELECT (SELECT MIN(c.account_id) FROM callback_deliveries c \
                         WHERE c.state = $1 AND c.account_id > a.account_id) \
                 FROM accounts a WHERE a.account_id IS NOT NULL) \
             SELECT delivery_id, account_id FROM ( \
                 SELECT a.account_id AS account_id, \
                        (SELECT d.delivery_id {due}) AS delivery_id, \
                        (SELECT d.next_attempt_at_us {due}) AS due_at_us \
                 FROM accounts a WHERE a.account_id IS NOT NULL {skipped}) picks \
             WHERE delivery_id IS NOT NULL ORDER BY due_at_us LIMIT {limit}"
        );
        let mut query = sqlx::query_as::<_, DueDelivery>(&sql)
            .bind(DeliveryState::Pending.as_str())
            .bind(now);
        for account in skip {
            query = query.bind(account);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    /// Claims the delivery for `lease_us` if it is still due and unleased; `None` when another
    /// dispatcher took it first. The conditions in the WHERE make two processes racing for
    /// one row end with one winner.
    pub async fn claim_delivery(
        &self,
        delivery_id: &str,
        lease_us: i64,
    ) -> Result<Option<Delivery>, StoreError> {
        let now = now_micros();
        let sql = format!(
            "UPDATE callback_deliveries SET lease_until_us = $1, updated_at_us = $2 \
             WHERE delivery_id = $3 AND state = $4 AND next_attempt_at_us <= $2 \
             AND (lease_until_us IS NULL OR lease_until_us < $2) \
             RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query_as::<_, Delivery>(&sql)
            .bind(now + lease_us)
            .bind(now)
            .bind(delivery_id)
            .bind(DeliveryState::Pending.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row)
    }

    /// The attempt failed; try again at `next_attempt_at_us`. `false` when the lease
    /// `lease_until_us` was lost meanwhile, and nothing was written.
    pub async fn delivery_retry(
        &self,
        delivery_id: &str,
        lease_until_us: i64,
        attempts: u32,
        next_attempt_at_us: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE callback_deliveries SET attempts = $2, next_attempt_at_us = $3, last_error = $4, \
             lease_until_us = NULL, updated_at_us = $5 \
             WHERE delivery_id = $1 AND state = $6 AND lease_until_us = $7",
        )
        .bind(delivery_id)
        .bind(i64::from(attempts))
        .bind(next_attempt_at_us)
        .bind(error)
        .bind(now_micros())
        .bind(DeliveryState::Pending.as_str())
        .bind(lease_until_us)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The delivery is over: [`DeliveryState::Delivered`] or [`DeliveryState::Failed`].
    /// `false` when the lease `lease_until_us` was lost meanwhile, and nothing was written.
    pub async fn delivery_done(
        &self,
        delivery_id: &str,
        lease_until_us: i64,
        state: DeliveryState,
        attempts: u32,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE callback_deliveries SET state = $2, attempts = $3, last_error = $4, \
             lease_until_us = NULL, updated_at_us = $5 \
             WHERE delivery_id = $1 AND lease_until_us = $6",
        )
        .bind(delivery_id)
        .bind(state.as_str())
        .bind(i64::from(attempts))
        .bind(error)
        .bind(now_micros())
        .bind(lease_until_us)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn delivery_backlog(&self) -> Result<Backlog, StoreError> {
        Ok(sqlx::query_as(
            "SELECT COUNT(*) AS pending, MIN(created_at_us) AS oldest_pending_created_at_us \
             FROM callback_deliveries WHERE state = $1",
        )
        .bind(DeliveryState::Pending.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// The account's callback secret, rotated first when asked.
    pub async fn callback_secret(
        &self,
        account_name: &str,
        rotate: bool,
    ) -> Result<Option<String>, StoreError> {
        if rotate {
            sqlx::query("UPDATE accounts SET callback_secret = $2 WHERE name = $1")
                .bind(account_name)
                .bind(super::keys::random_hex(32))
                .execute(&self.pool)
                .await?;
        }
        Ok(
            sqlx::query_scalar("SELECT callback_secret FROM accounts WHERE name = $1")
                .bind(account_name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The secret of an account by id, for signing its callbacks. A test ledger's callbacks
    /// are signed with its account's secret: the receiver is the same customer.
    pub async fn callback_secret_of(&self, account_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT callback_secret FROM accounts WHERE account_id = $1")
                .bind(taskledger_events::account_of_ledger(account_id))
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
