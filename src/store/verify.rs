//! `verify`: recompute every event's hash and check every task's chain and the global
//! positions, streaming. Chains are walked in (task, sequence) order a page at a time, so
//! memory holds one page and the last event seen, never a map of every chain; positions are
//! checked by a separate walk (skipped when a count proves them gapless). Hashing runs on
//! every core while the next page is read.

use std::collections::{BTreeMap, HashMap};

use sqlx::AnyConnection;
use taskledger_events::{write_canonical_json, HashFields, GENESIS_HASH};

use super::read::{EventRow, EVENT_COLUMNS};
use super::{Store, StoreError};

/// Events read per query by `verify`: memory stays bounded by the page, not the ledger.
const VERIFY_PAGE: i64 = 4000;
/// Positions read per query when the positions are walked one by one.
const POSITION_PAGE: i64 = 20_000;
/// Up to this many events after `--from`, the tail is walked in global order (its cost
/// follows the tail, with a map of the tail's chains, at most this many entries); a longer
/// tail is walked chain by chain in constant memory.
const TAIL_WALK_MAX: i64 = 100_000;
/// How many broken events `verify` names; it counts them all.
pub const VERIFY_NAMED_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub global_position: i64,
    pub event_id: String,
    pub task_id: String,
    pub sequence: i64,
    pub reason: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} (task {}, sequence {}, global position {}): {}",
            self.event_id, self.task_id, self.sequence, self.global_position, self.reason
        )
    }
}

/// What `verify` found. It goes on past a broken event, so one finding cannot hide another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub tasks: u64,
    /// How many findings there are: one per event whose content or chain is wrong, one per
    /// event out of place in the global order (an event wrong both ways counts twice), plus
    /// one for events missing at the end.
    pub broken: u64,
    /// The [`VERIFY_NAMED_MAX`] findings lowest in the global order, in global order.
    pub failures: Vec<VerifyFailure>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.broken == 0
    }
}

/// The findings so far: all counted, the lowest [`VERIFY_NAMED_MAX`] positions kept (the
/// walks do not visit events in global order, so the kept set is trimmed as it goes).
#[derive(Default)]
struct Findings {
    broken: u64,
    named: BTreeMap<(i64, String), VerifyFailure>,
}

impl Findings {
    fn record(&mut self, failure: VerifyFailure) {
        self.broken += 1;
        let key = (failure.global_position, failure.event_id.clone());
        if let Some(known) = self.named.get_mut(&key) {
            // The other walk found something too: one line for the event.
            known.reason = format!("{}; {}", known.reason, failure.reason);
            return;
        }
        self.named.insert(key, failure);
        if self.named.len() > VERIFY_NAMED_MAX {
            self.named.pop_last();
        }
    }

    fn into_report(self, events: u64, tasks: u64) -> VerifyReport {
        VerifyReport {
            events,
            tasks,
            broken: self.broken,
            failures: self.named.into_values().collect(),
        }
    }
}

/// Reads events in (task_id, sequence) order within a range of global positions, one page
/// per call, continuing after the last event returned (keyset paging on the
/// `(task_id, sequence)` unique index).
pub(super) struct ChainPager {
    from: i64,
    until: i64,
    page: i64,
    after: (String, i64),
    done: bool,
}

impl ChainPager {
    /// Events with `from <= global_position <= until`.
    pub(super) fn new(from: i64, until: i64, page: i64) -> ChainPager {
        ChainPager {
            from,
            until,
            page,
            after: (String::new(), i64::MIN),
            done: false,
        }
    }

    /// The statement reading the next page: `$1..$5` are from, until, the last task and
    /// sequence returned, and the page size.
    fn sql() -> String {
        format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position >= $1 \
             AND global_position <= $2 AND (task_id, sequence) > ($3, $4) \
             ORDER BY task_id, sequence LIMIT $5"
        )
    }

    /// Moves past the page just read.
    fn advance(&mut self, rows: &[EventRow]) {
        match rows.last() {
            Some(last) if rows.len() as i64 == self.page => {
                self.after = (last.task_id.clone(), last.sequence);
            }
            _ => self.done = true,
        }
    }

    /// The next page; empty once every event was returned.
    pub(super) async fn next<'e>(
        &mut self,
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    ) -> Result<Vec<EventRow>, StoreError> {
        if self.done {
            return Ok(Vec::new());
        }
        // Planned for these values each time (an unnamed statement): a plan made for any
        // range would not know that the range covers nearly every event, and sort them all.
        let rows: Vec<EventRow> = sqlx::query_as(&Self::sql())
            .persistent(false)
            .bind(self.from)
            .bind(self.until)
            .bind(&self.after.0)
            .bind(self.after.1)
            .bind(self.page)
            .fetch_all(executor)
            .await?;
        self.advance(&rows);
        Ok(rows)
    }

    /// [`ChainPager::next`] through the native PostgreSQL driver: the Any driver converts
    /// every value of every row into its own representation first, which costs as much as
    /// checking the event.
    pub(super) async fn next_native<'e>(
        &mut self,
        executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    ) -> Result<Vec<EventRow>, StoreError> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = sqlx::query_as(&Self::sql())
            .persistent(false)
            .bind(self.from)
            .bind(self.until)
            .bind(&self.after.0)
            .bind(self.after.1)
            .bind(self.page)
            .fetch_all(executor)
            .await?;
        self.advance(&rows);
        Ok(rows)
    }

    /// The next page, natively on PostgreSQL when `native` is given, else through `conn`.
    pub(super) async fn next_from(
        &mut self,
        conn: &mut AnyConnection,
        native: Option<&mut sqlx::PgConnection>,
    ) -> Result<Vec<EventRow>, StoreError> {
        match native {
            Some(pg) => self.next_native(pg).await,
            None => self.next(conn).await,
        }
    }
}

/// Where a task's chain stands before the first event the walk sees of it.
struct ChainEnd {
    task_id: String,
    sequence: i64,
    hash: String,
}

impl Store {
    /// Verifies the whole ledger; see [`Store::verify_from`].
    pub async fn verify(&self, progress: impl Fn(u64)) -> Result<VerifyReport, StoreError> {
        self.verify_from(1, progress).await
    }

    /// Recomputes the hash of every event at or after global position `from` and checks each
    /// task's chain and sequence and the global positions from there on. A task's chain
    /// starts from its event just before `from` (one indexed lookup per task), so a nightly
    /// run can start where the last one ended. A broken event is reported and the check goes
    /// on: the chain continues from what is stored, so one altered event is one finding, not
    /// a cascade. Memory is bounded by a page whatever the ledger's size; a short tail (at
    /// most 100,000 events after `from`) is read in global order and keeps a map
    /// of its chains instead, so its cost follows the tail, not the ledger.
    pub async fn verify_from(
        &self,
        from: i64,
        progress: impl Fn(u64),
    ) -> Result<VerifyReport, StoreError> {
        self.verify_from_walking(from, false, progress).await
    }

    /// [`Store::verify_from`], walking the chains in (task, sequence) order even for a
    /// short tail (which is otherwise walked in global order). For tests: both walks must
    /// find the same.
    #[doc(hidden)]
    pub async fn verify_from_walking(
        &self,
        from: i64,
        walk_chains: bool,
        progress: impl Fn(u64),
    ) -> Result<VerifyReport, StoreError> {
        let from = from.max(1);
        // Appends move the head and insert their events in one transaction, so in one
        // snapshot no event lies beyond the head; one that does was not appended by taskledger.
        // Every position up to the head read now is committed, so the walks below see all of
        // them; no lock is needed and writers are not held up.
        // One connection throughout: on SQLite another pooled connection may still read an
        // older snapshot, without the events up to the head read here.
        let mut conn = self.pool.acquire().await?;
        let (head, last_stored): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT last_position FROM ledger_head WHERE id = 1), \
             (SELECT MAX(global_position) FROM events)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let until = last_stored.unwrap_or(0).max(head);
        let mut findings = Findings::default();
        let tail = until - from + 1;
        let walk = Walk {
            from,
            until,
            findings: &mut findings,
            progress: &progress,
        };
        let (events, tasks) = if from > 1 && tail <= TAIL_WALK_MAX && !walk_chains {
            verify_tail(&mut conn, walk).await?
        } else {
            self.verify_chains(&mut conn, walk).await?
        };
        self.verify_positions(&mut conn, from, head, until, &mut findings)
            .await?;
        progress(events);
        Ok(findings.into_report(events, tasks))
    }

    /// The chain walk; returns how many events and tasks it saw.
    async fn verify_chains(
        &self,
        conn: &mut AnyConnection,
        walk: Walk<'_, impl Fn(u64)>,
    ) -> Result<(u64, u64), StoreError> {
        let mut pager = ChainPager::new(walk.from, walk.until, VERIFY_PAGE);
        // On PostgreSQL the pages come through the native driver: every committed position
        // up to `until` is visible to any connection, so the walk need not share `conn`.
        let mut native = match &self.native {
            Some(pool) => Some(pool.acquire().await?),
            None => None,
        };
        let mut last: Option<ChainEnd> = None;
        let (mut events, mut tasks) = (0u64, 0u64);
        let mut page = pager.next_from(conn, native.as_deref_mut()).await?;
        while !page.is_empty() {
            // Hash this page on every core while the next one is read.
            let ((rows, problems), next) = tokio::join!(
                hash_page(page),
                pager.next_from(conn, native.as_deref_mut())
            );
            let continuing = last.as_ref().map(|l| l.task_id.as_str());
            let starts = chain_starts(&mut *conn, walk.from, &rows, continuing).await?;
            // Where the chain stands, borrowed from the page: only the page's last event is
            // copied out, for the next page.
            let mut previous = last
                .as_ref()
                .map(|l| (l.task_id.as_str(), l.sequence, l.hash.as_str()));
            for (row, problem) in rows.iter().zip(problems) {
                events += 1;
                let (last_sequence, last_hash) = match previous {
                    Some((task, sequence, hash)) if task == row.task_id => (sequence, hash),
                    _ => {
                        tasks += 1;
                        starts
                            .get(&row.task_id)
                            .map_or((0, GENESIS_HASH), |(s, h)| (*s, h.as_str()))
                    }
                };
                if let Some(failure) = check_link(row, problem, last_sequence, last_hash) {
                    walk.findings.record(failure);
                }
                previous = Some((row.task_id.as_str(), row.sequence, row.hash.as_str()));
            }
            if let Some(row) = rows.last() {
                last = Some(ChainEnd {
                    task_id: row.task_id.clone(),
                    sequence: row.sequence,
                    hash: row.hash.clone(),
                });
            }
            (walk.progress)(events);
            page = next?;
        }
        Ok((events, tasks))
    }

    /// Checks that positions `from..=head` are all there and none lies beyond the head. A
    /// count proves it in one statement; only when it does not are the positions walked to
    /// name each event out of place.
    async fn verify_positions(
        &self,
        conn: &mut AnyConnection,
        from: i64,
        head: i64,
        until: i64,
        findings: &mut Findings,
    ) -> Result<(), StoreError> {
        let (count, max): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MAX(global_position) FROM events \
             WHERE global_position >= $1 AND global_position <= $2",
        )
        .bind(from)
        .bind(until)
        .fetch_one(&mut *conn)
        .await?;
        let wanted = (head - from + 1).max(0);
        if count == wanted && max.unwrap_or(0) <= head {
            return Ok(());
        }
        let mut expected = from;
        loop {
            let page: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "SELECT global_position, event_id, task_id, sequence FROM events \
                 WHERE global_position >= $1 AND global_position <= $2 \
                 ORDER BY global_position LIMIT $3",
            )
            .bind(expected)
            .bind(until)
            .bind(POSITION_PAGE)
            .fetch_all(&mut *conn)
            .await?;
            let Some(last) = page.last() else { break };
            let next = last.0 + 1;
            for (position, event_id, task_id, sequence) in page {
                let mut reasons = Vec::new();
                if position != expected {
                    reasons.push(format!(
                        "global position {position} follows {}: events are missing",
                        expected - 1
                    ));
                }
                if position > head {
                    reasons.push(format!(
                        "it lies beyond the ledger head ({head}): it was not appended by taskledger"
                    ));
                }
                if !reasons.is_empty() {
                    findings.record(VerifyFailure {
                        global_position: position,
                        event_id,
                        task_id,
                        sequence,
                        reason: reasons.join("; "),
                    });
                }
                expected = position + 1;
            }
            expected = expected.max(next);
        }
        if expected - 1 < head {
            findings.record(VerifyFailure {
                global_position: expected,
                event_id: String::new(),
                task_id: String::new(),
                sequence: 0,
                reason: format!(
                    "the ledger head is at position {head} but events end at {}: events are missing",
                    expected - 1
                ),
            });
        }
        Ok(())
    }
}

/// For each task whose first event in the walk is on this page and is not its first
/// event, the sequence and stored hash of its previous event (before `from`). Nothing
/// to look up when the walk starts at the beginning.
async fn chain_starts(
    conn: &mut AnyConnection,
    from: i64,
    rows: &[EventRow],
    continuing: Option<&str>,
) -> Result<HashMap<String, (i64, String)>, StoreError> {
    if from <= 1 {
        return Ok(HashMap::new());
    }
    let mut wanted: Vec<(&str, i64)> = Vec::new();
    let mut previous = continuing;
    for row in rows {
        if previous != Some(row.task_id.as_str()) && row.sequence > 1 {
            wanted.push((&row.task_id, row.sequence - 1));
        }
        previous = Some(&row.task_id);
    }
    events_before(conn, &wanted).await
}

/// The sequence and stored hash of each (task, sequence) asked for that exists: a batch of
/// primary-key lookups per query.
async fn events_before(
    conn: &mut AnyConnection,
    wanted: &[(&str, i64)],
) -> Result<HashMap<String, (i64, String)>, StoreError> {
    let mut starts = HashMap::new();
    for chunk in wanted.chunks(500) {
        let mut sql = String::from("SELECT task_id, sequence, hash FROM events WHERE ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(task_id = ${} AND sequence = ${})",
                2 * i + 1,
                2 * i + 2
            ));
        }
        let query = chunk
            .iter()
            .fold(sqlx::query_as(&sql), |q, (task, sequence)| {
                q.bind(*task).bind(*sequence)
            });
        let found: Vec<(String, i64, String)> = query.fetch_all(&mut *conn).await?;
        starts.extend(found.into_iter().map(|(t, s, h)| (t, (s, h))));
    }
    Ok(starts)
}

/// The walk of a short tail, in global order (a range of the primary key): each task's
/// chain is picked up from its event before `from` the first time the task appears.
async fn verify_tail(
    conn: &mut AnyConnection,
    walk: Walk<'_, impl Fn(u64)>,
) -> Result<(u64, u64), StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE global_position >= $1 \
         AND global_position <= $2 ORDER BY global_position LIMIT $3"
    );
    let mut chains: HashMap<String, (i64, String)> = HashMap::new();
    let mut events = 0u64;
    let mut after = walk.from;
    loop {
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(after)
            .bind(walk.until)
            .bind(VERIFY_PAGE)
            .fetch_all(&mut *conn)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.global_position + 1;
        let (rows, problems) = hash_page(rows).await;
        let mut wanted: Vec<(String, i64)> = Vec::new();
        let mut first_seen = std::collections::HashSet::new();
        for row in &rows {
            // Only a task's first event in the walk is picked up from before `from`.
            if !chains.contains_key(&row.task_id)
                && first_seen.insert(row.task_id.as_str())
                && row.sequence > 1
            {
                wanted.push((row.task_id.clone(), row.sequence - 1));
            }
        }
        let wanted: Vec<(&str, i64)> = wanted.iter().map(|(t, s)| (t.as_str(), *s)).collect();
        let starts = events_before(&mut *conn, &wanted).await?;
        for (row, problem) in rows.iter().zip(problems) {
            events += 1;
            let (last_sequence, last_hash) = match chains.get(&row.task_id) {
                Some((s, h)) => (*s, h.as_str()),
                None => starts
                    .get(&row.task_id)
                    .map_or((0, GENESIS_HASH), |(s, h)| (*s, h.as_str())),
            };
            if let Some(failure) = check_link(row, problem, last_sequence, last_hash) {
                walk.findings.record(failure);
            }
            chains.insert(row.task_id.clone(), (row.sequence, row.hash.clone()));
        }
        (walk.progress)(events);
    }
    Ok((events, chains.len() as u64))
}

/// A walk over the events `from..=until`: where its findings go, and whom it tells how
/// many events it has seen.
struct Walk<'w, P> {
    from: i64,
    until: i64,
    findings: &'w mut Findings,
    progress: &'w P,
}

/// Hashes a page off the async workers, on every core; the rows come back with their
/// content problems.
async fn hash_page(rows: Vec<EventRow>) -> (Vec<EventRow>, Vec<Option<String>>) {
    tokio::task::spawn_blocking(move || {
        let problems = content_problems(&rows);
        (rows, problems)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The finding for one event of a chain, if any, given where its task's chain stood.
fn check_link(
    row: &EventRow,
    problem: Option<String>,
    last_sequence: i64,
    last_hash: &str,
) -> Option<VerifyFailure> {
    let mut reasons = Vec::new();
    if row.sequence != last_sequence + 1 {
        reasons.push(format!(
            "sequence {} follows {last_sequence} in its task",
            row.sequence
        ));
    }
    if row.prev_hash != last_hash {
        reasons.push("prev_hash does not match the hash of the task's previous event".into());
    }
    reasons.extend(problem);
    (!reasons.is_empty()).then(|| failure_of(row, reasons.join("; ")))
}

fn failure_of(row: &EventRow, reason: String) -> VerifyFailure {
    VerifyFailure {
        global_position: row.global_position,
        event_id: row.event_id.clone(),
        task_id: row.task_id.clone(),
        sequence: row.sequence,
        reason,
    }
}

/// [`content_problem`] of every row, on every core.
fn content_problems(rows: &[EventRow]) -> Vec<Option<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut scratch = Scratch::default();
                    part.iter()
                        .map(|row| content_problem(row, &mut scratch))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Buffers a hashing worker reuses from one event to the next: the hash input and the
/// payload written again in canonical form.
#[derive(Default)]
struct Scratch {
    input: Vec<u8>,
    canonical: Vec<u8>,
}

/// What is wrong with an event's own content, if anything: it does not decode, its hash is
/// not the hash of what is stored, or its payload is not in the canonical form every reader
/// recomputes the hash from.
///
/// The row is checked where it lies, not copied into an envelope: the fields are decoded
/// exactly as [`EventRow::envelope`] decodes them (and fail with its words), and the hash
/// input is written from them into `scratch`.
fn content_problem(row: &EventRow, scratch: &mut Scratch) -> Option<String> {
    let corrupt = |message: String| {
        let e = StoreError::Corrupt {
            event_id: row.event_id.clone(),
            message,
        };
        Some(format!("does not decode: {e}"))
    };
    let event_id = match uuid::Uuid::parse_str(&row.event_id) {
        Ok(id) => id,
        Err(e) => return corrupt(e.to_string()),
    };
    let event_version = match u32::try_from(row.event_version) {
        Ok(v) => v,
        Err(e) => return corrupt(format!("event_version: {e}")),
    };
    if chrono::DateTime::from_timestamp_micros(row.recorded_at_us).is_none() {
        return corrupt(format!("recorded_at {} out of range", row.recorded_at_us));
    }
    let scope = match taskledger_events::Scope::parse(&row.actor_scope) {
        Ok(scope) => scope,
        Err(e) => return corrupt(e.to_string()),
    };
    // Nearly every payload is canonical: that is shown in one pass over the text, and then
    // no tree is built unless the event fails to decode straight from the text. Anything
    // else takes the full path below, which names what is wrong in the same words.
    let canonical = taskledger_events::is_canonical_json(&row.payload);
    let parse = || serde_json::from_str::<serde_json::Value>(&row.payload);
    let mut parsed = None;
    if !canonical {
        match parse() {
            Ok(payload) => parsed = Some(payload),
            Err(e) => return corrupt(e.to_string()),
        }
    }
    let hash_version = match u32::try_from(row.hash_version) {
        Ok(v) => v,
        Err(e) => return corrupt(format!("hash_version: {e}")),
    };
    // The hash covers the payload exactly as stored.
    let fields = HashFields {
        hash_version,
        prev_hash: &row.prev_hash,
        event_id,
        event_type: &row.event_type,
        event_version,
        task_id: &row.task_id,
        account_id: &row.account_id,
        sequence: row.sequence,
        global_position: row.global_position,
        recorded_at_us: row.recorded_at_us,
        actor_account_id: &row.actor_account_id,
        actor_key_id: row.actor_key_id.as_deref(),
        actor_scope: scope.as_str(),
        request_id: row.request_id.as_deref(),
        payload_json: &row.payload,
    };
    match fields.hash_is(&row.hash, &mut scratch.input) {
        Err(e) => return Some(e.to_string()),
        Ok(false) => return Some("the stored hash does not match the event's content".into()),
        Ok(true) => {}
    }
    if canonical
        && taskledger_events::LedgerEvent::decode_text(&row.event_type, event_version, &row.payload)
            .is_ok()
    {
        return None;
    }
    let payload = match parsed.map_or_else(parse, Ok) {
        Ok(payload) => payload,
        Err(e) => return corrupt(e.to_string()),
    };
    if !canonical {
        scratch.canonical.clear();
        write_canonical_json(&payload, &mut scratch.canonical);
        if scratch.canonical != row.payload.as_bytes() {
            return Some(
                "the stored payload is not canonical JSON: readers would hash it differently"
                    .into(),
            );
        }
    }
    // The payload is moved, not cloned, into the decoder: it is not needed afterwards.
    taskledger_events::LedgerEvent::decode(&row.event_type, event_version, payload)
        .err()
        .map(|e| format!("payload does not decode: {e}"))
}
