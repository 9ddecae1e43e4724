//! A database of its own per test, a ledger on it, and what tests read back from the store.

use chrono::Utc;
use serde_json::{json, Map, Value};
use sqlx::Connection;
use taskledger::domain::{CreateTask, Metadata, TaskAction, TaskCommand, TaskId};
use taskledger::ledger::{CommandContext, Ledger, LedgerSettings};
use taskledger::metrics::Metrics;
use taskledger::store::{CommandWrite, Committed, Store};
use taskledger_events::{Actor, EventEnvelope, Scope, TaskEvent, GENESIS_HASH};
use tempfile::TempDir;

use super::Backend;

/// A database of its own for one test: a fresh PostgreSQL database or a SQLite file in a
/// temporary directory.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<TempDir>,
}

pub fn pg_admin_url() -> String {
    std::env::var("TASKLEDGER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => {
                let admin = pg_admin_url();
                let mut conn = sqlx::PgConnection::connect(&format!("{admin}/postgres"))
                    .await
                    .expect("PostgreSQL must be running for the integration tests");
                let name = format!("tl_test_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                TestDb {
                    url: format!("{admin}/{name}"),
                    backend,
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                }
            }
        }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.url, 8).await.expect("open the store")
    }
}

/// A ledger on `store` with the group-commit size the suites use: the one place tests build
/// a ledger.
pub fn start_ledger(store: Store) -> Ledger {
    Ledger::start(store, LedgerSettings::with_max_batch(64), Metrics::new())
}

/// A store with a ledger (its own committer) and an account with a customer and a
/// contributor identity.
pub struct TestLedger {
    pub db: TestDb,
    pub store: Store,
    pub ledger: Ledger,
    pub account_id: String,
}

impl TestLedger {
    pub async fn new(backend: Backend) -> TestLedger {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let ledger = start_ledger(store.clone());
        let account_id = store.ensure_account("acme").await.unwrap();
        TestLedger {
            db,
            store,
            ledger,
            account_id,
        }
    }

    pub fn customer(&self) -> CommandContext {
        context(&self.account_id, Scope::Customer)
    }

    /// Creates a categorization task and returns its id.
    pub async fn create(&self, unique_id: Option<&str>) -> TaskId {
        let committed = self
            .ledger
            .create(&self.customer(), categorization(unique_id), None)
            .await
            .expect("create a task");
        TaskId::parse(&committed.view.task_id).unwrap()
    }

    /// Another ledger (its own committer) on the same database, like a second server process.
    pub async fn second_ledger(&self) -> Ledger {
        start_ledger(self.db.store().await)
    }

    /// The write the ledger would hand the store for `events` on `task`, decided on the task
    /// as it is now (a task without events is a new one): for tests that drive the store's
    /// append transaction directly.
    pub async fn decided_write(&self, task: &TaskId, events: Vec<TaskEvent>) -> CommandWrite {
        let history = self.events_of(task).await;
        let prior_view = self
            .ledger
            .task_as_of(&self.account_id, task, Utc::now())
            .await
            .expect("fold the task");
        CommandWrite {
            account_id: self.account_id.clone(),
            task_id: task.to_string(),
            actor: self.customer().actor,
            request_id: None,
            expected_sequence: history.last().map_or(0, |e| e.sequence),
            prev_hash: history
                .last()
                .map_or(GENESIS_HASH.to_string(), |e| e.hash.clone()),
            prior_view,
            events,
            idempotency: None,
            placement: Vec::new(),
        }
    }

    /// Sets the task's metadata as its customer; what the command committed (no envelopes
    /// when the metadata was already that).
    pub async fn set_metadata(&self, task: &TaskId, metadata: Value) -> Committed {
        let metadata = Metadata::parse(metadata).expect("valid metadata");
        self.run(task, Scope::Customer, TaskAction::SetMetadata { metadata })
            .await
            .expect("set the metadata")
    }

    /// Adds tags to the task as its customer; what the command committed.
    pub async fn add_tags(&self, task: &TaskId, tags: &[&str]) -> Committed {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let tags = tags.try_into().expect("valid tags");
        self.run(task, Scope::Customer, TaskAction::AddTags { tags })
            .await
            .expect("add the tags")
    }

    /// The task's events as the store holds them, in sequence order.
    pub async fn events_of(&self, task: &TaskId) -> Vec<EventEnvelope> {
        self.store
            .task_events(&self.account_id, task.as_str(), None)
            .await
            .expect("read the task's history")
    }

    /// The task's row in the tasks projection, as JSON.
    pub async fn view_body(&self, task: &TaskId) -> Value {
        let view = self
            .store
            .task_view(&self.account_id, task.as_str())
            .await
            .expect("read the task's view")
            .expect("the task has a view");
        serde_json::from_str(&view.body).expect("a JSON view")
    }

    pub async fn run(
        &self,
        task: &TaskId,
        scope: Scope,
        action: TaskAction,
    ) -> Result<taskledger::store::Committed, taskledger::ledger::LedgerError> {
        let ctx = context(&self.account_id, scope);
        self.ledger
            .execute(&ctx, task, TaskCommand::new(scope, action), None)
            .await
    }
}

pub fn context(account_id: &str, scope: Scope) -> CommandContext {
    CommandContext {
        actor: Actor {
            account_id: account_id.to_string(),
            key_id: Some(format!("key_test_{}", scope.as_str())),
            scope,
        },
        request_id: Some(format!("req-{}", uuid::Uuid::now_v7())),
    }
}

pub fn categorization(unique_id: Option<&str>) -> CreateTask {
    let params: Map<String, Value> = json!({
        "attachment_type": "text",
        "attachment": "car",
        "categories": ["big", "small"],
    })
    .as_object()
    .cloned()
    .unwrap();
    CreateTask {
        task_type: "categorization".try_into().unwrap(),
        instruction: Some(
            "Would you say this item is big or small?"
                .try_into()
                .unwrap(),
        ),
        callback_url: Some("http://www.example.com/callback".try_into().unwrap()),
        project: Some("kittens".try_into().unwrap()),
        unique_id: unique_id.map(|u| u.try_into().unwrap()),
        tags: vec!["experiment_1".to_string()].try_into().unwrap(),
        params: params.try_into().unwrap(),
        ..CreateTask::default()
    }
}

/// Every projection row, in a stable order, to compare two states of a database.
pub async fn projection_snapshot(store: &Store) -> Vec<String> {
    use sqlx::Row;
    let mut out = Vec::new();
    let rows = sqlx::query(
        "SELECT task_id, account_id, version, body, task_type, status, project, batch, \
         customer_review_status, unique_id, created_at_us, updated_at_us, completed_at_us \
         FROM tasks ORDER BY task_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for r in rows {
        out.push(format!(
            "task {} {} {} {} {} {} {:?} {:?} {:?} {:?} {} {} {:?}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<i64, _>(2),
            r.get::<String, _>(3),
            r.get::<String, _>(4),
            r.get::<String, _>(5),
            r.get::<Option<String>, _>(6),
            r.get::<Option<String>, _>(7),
            r.get::<Option<String>, _>(8),
            r.get::<Option<String>, _>(9),
            r.get::<i64, _>(10),
            r.get::<i64, _>(11),
            r.get::<Option<i64>, _>(12),
        ));
    }
    let tags = sqlx::query("SELECT task_id, account_id, tag FROM task_tags ORDER BY task_id, tag")
        .fetch_all(store.pool())
        .await
        .unwrap();
    for r in tags {
        out.push(format!(
            "tag {} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2)
        ));
    }
    let ids = sqlx::query(
        "SELECT account_id, unique_id, task_id FROM unique_ids ORDER BY account_id, unique_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for r in ids {
        out.push(format!(
            "unique_id {} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2)
        ));
    }
    out
}

/// Alters an event behind the database's back: the append-only trigger is switched off the
/// way an attacker with table-owner rights could.
pub async fn tamper_with_event(db: &TestDb, store: &Store, position: i64, payload: &str) {
    let sql: &[&str] = match db.backend {
        Backend::Postgres => &[
            "ALTER TABLE events DISABLE TRIGGER events_no_update",
            "UPDATE events SET payload = $1 WHERE global_position = $2",
        ],
        Backend::Sqlite => &[
            "DROP TRIGGER events_no_update",
            "UPDATE events SET payload = $1 WHERE global_position = $2",
        ],
    };
    sqlx::raw_sql(sql[0]).execute(store.pool()).await.unwrap();
    let done = sqlx::query(sql[1])
        .bind(payload)
        .bind(position)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

/// Asserts the ledger is whole: every hash chain and position verifies, and every projection
/// equals what replaying the events gives.
pub async fn assert_ledger_intact(store: &Store) {
    let verified = store.verify(|_| {}).await.unwrap();
    assert!(verified.is_intact(), "{:?}", verified.failures.first());
    let replayed = store.replay(true, |_| {}).await.unwrap();
    assert!(replayed.mismatches.is_empty(), "{:?}", replayed.mismatches);
}

/// Appends an event of acme, for a task of its own, at the head of the ledger behind the
/// API's back, the way the append path does (moving the head first), so the readers of the
/// global order meet it before anything committed after it.
pub async fn append_raw_event(store: &Store, event_type: &str, payload: &str) {
    let account: String = sqlx::query_scalar("SELECT account_id FROM accounts WHERE name = 'acme'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    let position: i64 = sqlx::query_scalar(
        "UPDATE ledger_head SET last_position = last_position + 1 WHERE id = 1 \
         RETURNING last_position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (global_position, event_id, task_id, account_id, sequence, event_type, \
         event_version, payload, recorded_at_us, actor_account_id, actor_key_id, actor_scope, \
         request_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, 1, $5, 1, $6, $7, $4, NULL, 'customer', NULL, $8, $8)",
    )
    .bind(position)
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(format!("task_raw_{position}"))
    .bind(&account)
    .bind(event_type)
    .bind(payload)
    .bind(chrono::Utc::now().timestamp_micros())
    .bind("0".repeat(64))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}
