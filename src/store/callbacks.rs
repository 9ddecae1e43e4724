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
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Backlog {
    pub pending: i64,
    pub oldest_pending_created_at_us: Option<i64>,
}

const DELIVERY_COLUMNS: &str =
    "delivery_id, account_id, task_id, for_sequence, url, body, attempts, created_at_us";

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

    /// Up to `limit` deliveries due now and not leased, the longest due first, leaving out
    /// the accounts in `skip` (those already at their in-flight cap in this process).
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
            format!("AND account_id NOT IN ({}) ", marks.join(", "))
        };
        let sql = format!(
            "SELECT delivery_id, account_id FROM callback_deliveries \
             WHERE state = $1 AND next_attempt_at_us <= $2 \
             AND (lease_until_us IS NULL OR lease_until_us < $2) {skipped}\
             ORDER BY next_attempt_at_us LIMIT {limit}"
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

    /// The attempt failed; try again at `next_attempt_at_us`.
    pub async fn delivery_retry(
        &self,
        delivery_id: &str,
        attempts: u32,
        next_attempt_at_us: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE callback_deliveries SET attempts = $2, next_attempt_at_us = $3, last_error = $4, \
             lease_until_us = NULL, updated_at_us = $5 WHERE delivery_id = $1 AND state = $6",
        )
        .bind(delivery_id)
        .bind(i64::from(attempts))
        .bind(next_attempt_at_us)
        .bind(error)
        .bind(now_micros())
        .bind(DeliveryState::Pending.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The delivery is over: [`DeliveryState::Delivered`] or [`DeliveryState::Failed`].
    pub async fn delivery_done(
        &self,
        delivery_id: &str,
        state: DeliveryState,
        attempts: u32,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE callback_deliveries SET state = $2, attempts = $3, last_error = $4, \
             lease_until_us = NULL, updated_at_us = $5 WHERE delivery_id = $1",
        )
        .bind(delivery_id)
        .bind(state.as_str())
        .bind(i64::from(attempts))
        .bind(error)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// The secret of an account by id, for signing its callbacks.
    pub async fn callback_secret_of(&self, account_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT callback_secret FROM accounts WHERE account_id = $1")
                .bind(account_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
