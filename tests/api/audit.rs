//! The auditor's ledger (issue 10): event search, named keys recorded in the ledger, signed
//! digests and RFC 6962 proofs checked by verifiers that share no code with the tree builder,
//! and `verify --digest` catching what plain `verify` cannot.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};
use taskledger::domain::TaskId;
use taskledger::store::{CommandWrite, EventFilter};
use taskledger_events::merkle::{
    event_leaf_hash, parse_hash, parse_hashes, verify_consistency, verify_inclusion,
};
use taskledger_events::{
    canonical_json, parse_public_key, EventEnvelope, Scope, SignedDigest, TaskCreated, TaskEvent,
    GENESIS_HASH,
};

use taskledger::audit::tree::Plan;
use taskledger::audit::watch::{DigestWatcher, Verdict};

use crate::helpers::process::taskledger;
use crate::helpers::{
    a_moment_between, assert_ledger_intact, context, eventually, on_both_backends, on_sqlite,
    spawn_app, task_body, within, Backend, TestApp, TestDb, TestLedger, CREATE, PATIENCE,
};

/// Every event of acme's feed with these query parameters, page by page (`limit` a page).
async fn search(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let reply = app
            .get(&format!("/v1/events?{query}&limit={limit}&after={after}"))
            .await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        let events = reply.body["events"].as_array().unwrap().clone();
        assert!(events.len() <= limit);
        all.extend(events);
        if reply.body["has_more"] != true {
            return all;
        }
        after = reply.body["next_after"].as_i64().unwrap();
    }
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

fn in_global_order(events: &[Value]) -> bool {
    events
        .windows(2)
        .all(|w| w[0]["global_position"].as_i64() < w[1]["global_position"].as_i64())
}

async fn each_event_filter_narrows_the_account_feed_in_global_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app
        .as_key(&app.key)
        .header("x-request-id", "req-first")
        .post(CREATE, task_body())
        .await
        .task_id();
    let done = app.create(json!({})).await.task_id();
    app.complete(&done).await;
    let moment = a_moment_between().await;
    let last = app.create(json!({})).await.task_id();
    app.as_key(&app.other_key)
        .post(CREATE, task_body())
        .await
        .task_id();

    let all = search(&app, "", 1000).await;
    assert!(in_global_order(&all));
    let acme = all[0]["account_id"].clone();
    assert!(
        all.iter().all(|e| e["account_id"] == acme),
        "only acme's events"
    );
    // The two keys spawn_app made for acme are events of the account too.
    assert_eq!(
        types(&all),
        [
            "ApiKeyCreated",
            "ApiKeyCreated",
            "TaskCreated",
            "TaskCreated",
            "TaskCompleted",
            "TaskCreated"
        ]
    );
    let completed = &all[4];
    let contributor = completed["actor"]["key_id"].as_str().unwrap();

    let by_task = search(&app, &format!("task_id={done}"), 1).await;
    assert_eq!(types(&by_task), ["TaskCreated", "TaskCompleted"]);
    assert!(by_task.iter().all(|e| e["task_id"] == done.as_str()));

    let created = search(&app, "event_type=TaskCreated", 1).await;
    let ids: Vec<&str> = created
        .iter()
        .map(|e| e["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), done.as_str(), last.as_str()]);
    assert!(in_global_order(&created));
    let two = search(
        &app,
        "event_type=TaskCompleted,%20TaskCreated,TaskCreated",
        2,
    )
    .await;
    assert_eq!(two.len(), 4);

    let by_key = search(&app, &format!("actor_key_id={contributor}"), 10).await;
    assert_eq!(types(&by_key), ["TaskCompleted"]);
    let by_scope = search(&app, "actor_scope=system", 10).await;
    assert_eq!(types(&by_scope), ["ApiKeyCreated", "ApiKeyCreated"]);
    let by_request = search(&app, "request_id=req-first", 10).await;
    assert_eq!(by_request.len(), 1);
    assert_eq!(by_request[0]["task_id"], first.as_str());

    let at = moment
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        .replace('+', "%2B");
    let after = search(&app, &format!("recorded_after={at}"), 10).await;
    assert_eq!(types(&after), ["TaskCreated"]);
    assert_eq!(after[0]["task_id"], last.as_str());
    let before = search(&app, &format!("recorded_before={at}"), 2).await;
    assert_eq!(before.len(), 5);
    let combined = search(
        &app,
        &format!("recorded_before={at}&event_type=TaskCreated&actor_scope=customer"),
        1,
    )
    .await;
    assert_eq!(combined.len(), 2);
    let nothing = search(
        &app,
        &format!("task_id={done}&event_type=ApiKeyCreated"),
        10,
    )
    .await;
    assert!(nothing.is_empty());

    for (query, field) in [
        ("event_type=TaskExploded", "event_type"),
        ("event_type=", "event_type"),
        ("actor_scope=admin", "actor_scope"),
        ("recorded_after=yesterday", "recorded_after"),
        ("recorded_before=2021-13-45", "recorded_before"),
        ("task_id=", "task_id"),
    ] {
        app.get(&format!("/v1/events?{query}"))
            .await
            .assert_error(400, field);
    }
}

async fn named_keys_are_listed_per_account_and_recorded_as_its_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let (dana, secret) = app
        .store
        .create_named_key("acme", Scope::Contributor, Some("Dana Reyes (QA lead)"))
        .await
        .unwrap();
    assert!(app.store.revoke_key(&dana.key_id).await.unwrap());

    let listed = app.get("/v1/keys").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let keys = listed.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "acme's two keys and Dana's: {}", listed.body);
    let entry = keys
        .iter()
        .find(|k| k["key_id"] == dana.key_id.as_str())
        .unwrap();
    assert_eq!(entry["name"], "Dana Reyes (QA lead)");
    assert_eq!(entry["scope"], "contributor");
    assert!(entry["created_at"].is_string() && entry["revoked_at"].is_string());
    let fields: HashSet<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        HashSet::from([
            "key_id",
            "name",
            "scope",
            "created_at",
            "revoked_at",
            "is_test"
        ])
    );
    let text = listed.body.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&app.key),
        "never a secret"
    );
    assert!(keys
        .iter()
        .filter(|k| k["key_id"] != dana.key_id.as_str())
        .all(|k| k["revoked_at"].is_null()));

    let other = app.as_key(&app.other_key).get("/v1/keys").await;
    assert_eq!(other.body["keys"].as_array().unwrap().len(), 1);
    assert!(!other.body.to_string().contains(&dana.key_id));
    app.as_key(&app.contributor_key)
        .get("/v1/keys")
        .await
        .assert_error(403, "customer");

    let stream = search(&app, &format!("task_id={}", dana.key_id), 10).await;
    assert_eq!(types(&stream), ["ApiKeyCreated", "ApiKeyRevoked"]);
    let envelopes: Vec<EventEnvelope> = stream
        .iter()
        .map(|e| serde_json::from_value(e.clone()).unwrap())
        .collect();
    assert!(envelopes.iter().all(|e| e.hash_matches()));
    assert_eq!(envelopes[1].prev_hash, envelopes[0].hash);
    assert_eq!(
        (envelopes[0].sequence, envelopes[1].sequence),
        (1, 2),
        "a key's events are a stream of their own"
    );
    assert_eq!(envelopes[0].actor.scope, Scope::System);
    assert_eq!(envelopes[0].actor.key_id, None);
    assert_eq!(
        stream[0]["payload"],
        json!({"key_id": dana.key_id, "name": "Dana Reyes (QA lead)", "scope": "contributor"})
    );
    assert!(!stream.iter().any(|e| e.to_string().contains(&secret)));
    let globex = app
        .as_key(&app.other_key)
        .get("/v1/events?limit=1000")
        .await;
    assert!(!globex.body.to_string().contains(&dana.key_id));
    assert_ledger_intact(&app.store).await;
}

async fn digest(app: &TestApp) -> SignedDigest {
    let reply = app.get("/v1/ledger/digest").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_value(reply.body).unwrap()
}

/// Checks a digest with the published key of its `key_id`, by the events crate alone.
async fn check_signature(app: &TestApp, digest: &SignedDigest) {
    let keys = app.get("/v1/ledger/public-keys").await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    let key = keys.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == digest.key_id.as_str())
        .expect("the signing key is published")
        .clone();
    assert_eq!(key["algorithm"], "ed25519");
    let public = parse_public_key(key["public_key"].as_str().unwrap()).unwrap();
    digest.verify(&public).unwrap();
    let mut forged = digest.clone();
    forged.root_hash = "00".repeat(32);
    assert!(forged.verify(&public).is_err(), "a changed field fails");
}

async fn digests_and_proofs_verify_with_the_independent_verifier(backend: Backend) {
    let app = spawn_app(backend).await;
    for _ in 0..3 {
        app.create(json!({})).await.task_id();
    }
    let first = digest(&app).await;
    check_signature(&app, &first).await;
    let feed = search(&app, "", 1000).await;
    assert_eq!(first.tree_size, feed.len() as u64, "the tree is the feed");
    assert_eq!(
        first.last_global_position,
        feed.last().unwrap()["global_position"].as_i64().unwrap()
    );
    for i in 0..6 {
        let id = app.completed(json!({})).await;
        if i % 2 == 0 {
            app.as_key(&app.other_key)
                .post(CREATE, task_body())
                .await
                .task_id();
            app.as_key(&app.key)
                .post(&format!("/v1/task/{id}/tags"), json!({"tags": ["x"]}))
                .await;
        }
    }
    let second = digest(&app).await;
    check_signature(&app, &second).await;
    let feed = search(&app, "", 1000).await;
    assert_eq!(second.tree_size, feed.len() as u64);
    let (root1, root2) = (
        parse_hash(&first.root_hash).unwrap(),
        parse_hash(&second.root_hash).unwrap(),
    );
    for (i, event) in feed.iter().enumerate() {
        let leaf = event_leaf_hash(event["hash"].as_str().unwrap()).unwrap();
        let id = event["event_id"].as_str().unwrap();
        for (size, root) in [(second.tree_size, root2), (first.tree_size, root1)] {
            if i as u64 >= size {
                continue;
            }
            let reply = app
                .get(&format!(
                    "/v1/ledger/proof/inclusion?event_id={id}&tree_size={size}"
                ))
                .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.body["leaf_index"], i);
            assert_eq!(reply.body["tree_size"], size);
            let path: Vec<String> =
                serde_json::from_value(reply.body["audit_path"].clone()).unwrap();
            verify_inclusion(i as u64, size, &leaf, &parse_hashes(&path).unwrap(), &root)
                .unwrap_or_else(|e| panic!("event {i} in {size}: {e}"));
        }
    }
    let current = app
        .get(&format!(
            "/v1/ledger/proof/inclusion?event_id={}",
            feed[0]["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(current.body["tree_size"], second.tree_size);
    for from in [0, 1, first.tree_size, second.tree_size] {
        let reply = app
            .get(&format!(
                "/v1/ledger/proof/consistency?from={from}&to={}",
                second.tree_size
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["from"], from);
        let proof: Vec<String> = serde_json::from_value(reply.body["proof"].clone()).unwrap();
        let old_root = if from == first.tree_size {
            root1
        } else {
            // The root of any older size, from the independent side: an inclusion proof of
            // its last leaf yields it.
            root_of(&app, &feed, from).await
        };
        verify_consistency(
            from,
            second.tree_size,
            &parse_hashes(&proof).unwrap(),
            &old_root,
            &root2,
        )
        .unwrap_or_else(|e| panic!("{from} to {}: {e}", second.tree_size));
    }

    let globex_event = app.as_key(&app.other_key).get("/v1/events").await.body["events"][0]
        ["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let missing = app
        .get(&format!(
            "/v1/ledger/proof/inclusion?event_id={globex_event}"
        ))
        .await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let last_id = feed.last().unwrap()["event_id"].as_str().unwrap();
    let too_big = second.tree_size + 1;
    app.get(&format!(
        "/v1/ledger/proof/inclusion?event_id={last_id}&tree_size={too_big}"
    ))
    .await
    .assert_error(400, "tree_size");
    app.get(&format!(
        "/v1/ledger/proof/inclusion?event_id={last_id}&tree_size=1"
    ))
    .await
    .assert_error(400, "tree_size");
    app.get("/v1/ledger/proof/inclusion?event_id=nope")
        .await
        .assert_error(400, "event_id");
    app.get("/v1/ledger/proof/consistency?from=3&to=2")
        .await
        .assert_error(400, "from");
    app.get(&format!("/v1/ledger/proof/consistency?from=1&to={too_big}"))
        .await
        .assert_error(400, "to");
    app.get("/v1/ledger/proof/consistency?from=-1&to=2")
        .await
        .assert_error(400, "from");

    let doc = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: Value = doc.json().await.unwrap();
    for path in [
        "/v1/ledger/digest",
        "/v1/ledger/public-keys",
        "/v1/ledger/proof/inclusion",
        "/v1/ledger/proof/consistency",
        "/v1/keys",
    ] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} is documented"
        );
    }
    let params = doc["paths"]["/v1/events"]["get"]["parameters"].to_string();
    for name in [
        "task_id",
        "event_type",
        "actor_key_id",
        "actor_scope",
        "request_id",
        "recorded_after",
        "recorded_before",
    ] {
        assert!(
            params.contains(&format!("\"{name}\"")),
            "{name} is documented"
        );
    }
}

/// The root of acme's tree of `size` leaves, computed by the verifier from an inclusion proof
/// of its last leaf (the empty tree's for 0).
async fn root_of(app: &TestApp, feed: &[Value], size: u64) -> [u8; 32] {
    if size == 0 {
        return taskledger_events::merkle::empty_root();
    }
    let event = &feed[size as usize - 1];
    let reply = app
        .get(&format!(
            "/v1/ledger/proof/inclusion?event_id={}&tree_size={size}",
            event["event_id"].as_str().unwrap()
        ))
        .await;
    let path: Vec<String> = serde_json::from_value(reply.body["audit_path"].clone()).unwrap();
    taskledger_events::merkle::root_from_inclusion_proof(
        size - 1,
        size,
        &event_leaf_hash(event["hash"].as_str().unwrap()).unwrap(),
        &parse_hashes(&path).unwrap(),
    )
    .unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Runs the binary with the test's signing key file.
/// `taskledger verify --digest FILE`.
fn verify_digest(db: &TestDb, key_file: &Path, digest: &Path) -> std::process::Output {
    run(
        db,
        key_file,
        &["verify", "--digest", digest.to_str().unwrap()],
    )
}

fn run(db: &TestDb, key_file: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--signing-key-file", key_file.to_str().unwrap()]);
    taskledger(&db.url, &all)
}

/// A ledger with a few of acme's tasks, a signing key file and a digest of acme saved to a
/// file, which `verify --digest` accepts.
async fn digested_ledger(backend: Backend) -> (TestLedger, tempfile::TempDir, std::path::PathBuf) {
    digested_ledger_of(backend, 3).await
}

/// [`digested_ledger`] with `tasks` tasks, each created then given metadata.
async fn digested_ledger_of(
    backend: Backend,
    tasks: usize,
) -> (TestLedger, tempfile::TempDir, std::path::PathBuf) {
    let t = TestLedger::new(backend).await;
    for i in 0..tasks {
        let task = t.create(None).await;
        t.set_metadata(&task, json!({"x": i})).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("signing-key.json");
    let rotated = run(&t.db, &key_file, &["signing-key", "rotate"]);
    assert!(rotated.status.success(), "{rotated:?}");
    let digest = run(&t.db, &key_file, &["digest", "--account", "acme"]);
    assert!(digest.status.success(), "{digest:?}");
    let saved = dir.path().join("digest.json");
    std::fs::write(&saved, stdout(&digest)).unwrap();
    // A rotation after the digest: the retired key still verifies it.
    let rotated = run(&t.db, &key_file, &["signing-key", "rotate"]);
    assert!(rotated.status.success(), "{rotated:?}");
    let shown: Value =
        serde_json::from_str(&stdout(&run(&t.db, &key_file, &["signing-key", "show"]))).unwrap();
    assert_eq!(shown["keys"].as_array().unwrap().len(), 3);
    assert!(!shown.to_string().contains("secret"));
    t.create(None).await;
    let holds = verify_digest(&t.db, &key_file, &saved);
    assert!(holds.status.success(), "{}", stdout(&holds));
    assert!(stdout(&holds).starts_with("ok:"), "{}", stdout(&holds));
    (t, dir, saved)
}

/// SQL run with the append-only triggers out of the way, as someone with write access to the
/// tables could.
async fn behind_the_ledgers_back(t: &TestLedger, statements: &[(&str, Vec<Value>)]) {
    let lift = match t.db.backend {
        Backend::Postgres => "ALTER TABLE events DISABLE TRIGGER USER",
        Backend::Sqlite => "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete",
    };
    sqlx::raw_sql(lift).execute(t.store.pool()).await.unwrap();
    for (sql, binds) in statements {
        let query = binds.iter().fold(sqlx::query(sql), |q, b| match b {
            Value::Number(n) => q.bind(n.as_i64().unwrap()),
            other => q.bind(other.as_str().unwrap().to_string()),
        });
        query.execute(t.store.pool()).await.unwrap();
    }
}

/// Rewrites a task's last event (its metadata forged) and recomputes its hash, so that its
/// task's chain still holds and plain `verify` passes, as someone with write access could.
async fn forge_and_rehash(t: &TestLedger, target: &mut EventEnvelope) {
    target.payload = json!({"metadata": {"x": "forged"}});
    let payload = canonical_json(&target.payload);
    let hash = target.expected_hash_of(&payload).unwrap();
    behind_the_ledgers_back(
        t,
        &[(
            "UPDATE events SET payload = $1, hash = $2 WHERE global_position = $3",
            vec![json!(payload), json!(hash), json!(target.global_position)],
        )],
    )
    .await;
    let plain = taskledger(&t.db.url, &["verify"]);
    assert!(
        plain.status.success(),
        "plain verify passes: {}",
        stdout(&plain)
    );
}

async fn verify_digest_catches_a_truncated_log_that_plain_verify_passes(backend: Backend) {
    let (t, dir, saved) = digested_ledger(backend).await;
    let key_file = dir.path().join("signing-key.json");
    // The last three events go, and the head is lowered to hide it.
    behind_the_ledgers_back(
        &t,
        &[
            (
                "DELETE FROM events WHERE global_position > \
                 (SELECT last_position FROM ledger_head WHERE id = 1) - 3",
                vec![],
            ),
            (
                "UPDATE ledger_head SET last_position = last_position - 3 WHERE id = 1",
                vec![],
            ),
        ],
    )
    .await;
    let plain = taskledger(&t.db.url, &["verify"]);
    assert!(
        plain.status.success(),
        "plain verify passes: {}",
        stdout(&plain)
    );
    let caught = verify_digest(&t.db, &key_file, &saved);
    assert_eq!(caught.status.code(), Some(1), "{}", stdout(&caught));
    assert!(stdout(&caught).contains("TRUNCATED"), "{}", stdout(&caught));
}

async fn verify_digest_catches_a_rewritten_and_rehashed_tail(backend: Backend) {
    let (t, dir, saved) = digested_ledger(backend).await;
    let key_file = dir.path().join("signing-key.json");
    // The last metadata change the digest covers is rewritten, and its hash recomputed so
    // that its task's chain still holds (it is the last event of its task).
    let events = t.store.events_after(0, 100, None).await.unwrap();
    let mut target = events
        .iter()
        .rev()
        .find(|e| e.event_type == "TaskMetadataSet")
        .unwrap()
        .clone();
    forge_and_rehash(&t, &mut target).await;
    let caught = verify_digest(&t.db, &key_file, &saved);
    assert_eq!(caught.status.code(), Some(1), "{}", stdout(&caught));
    let said = stdout(&caught);
    assert!(said.contains("REWRITTEN"), "{said}");
    assert!(
        said.contains(&target.event_id.to_string()),
        "names the event: {said}"
    );
    // A forged digest file fails on its signature.
    let mut forged: SignedDigest =
        serde_json::from_str(std::fs::read_to_string(&saved).unwrap().trim()).unwrap();
    forged.tree_size -= 1;
    std::fs::write(&saved, serde_json::to_string(&forged).unwrap()).unwrap();
    let refused = verify_digest(&t.db, &key_file, &saved);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&refused).contains("signature") || stdout(&refused).contains("tree_size"));
}

/// Below the lowest stored level the tree is recomputed from the events, so a rewritten event
/// in a complete block is placed within its block: the events it may be are all named.
async fn verify_digest_names_the_block_of_an_event_rewritten_deep_in_the_log(backend: Backend) {
    let (t, dir, saved) = digested_ledger_of(backend, 20).await;
    let key_file = dir.path().join("signing-key.json");
    let events = t
        .store
        .events_after(0, 1000, Some(&t.account_id))
        .await
        .unwrap();
    assert!(events.len() > 40, "{} events: several blocks", events.len());
    // The first metadata change is the last event of its task, so its chain still holds once
    // it is rehashed; it is in the first block of 16 leaves.
    let (leaf, target) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e.event_type == "TaskMetadataSet")
        .map(|(i, e)| (i, e.clone()))
        .unwrap();
    assert!(leaf < 16, "leaf {leaf}");
    forge_and_rehash(&t, &mut target.clone()).await;
    let recomputed = t.store.recompute_tree(&t.account_id, 0).await.unwrap();
    let changed = recomputed
        .first_changed_leaves
        .expect("the change is placed");
    assert_eq!(changed.first_leaf, 0);
    assert_eq!(changed.event_ids.len(), 16);
    assert!(changed.event_ids.contains(&target.event_id.to_string()));
    let caught = verify_digest(&t.db, &key_file, &saved);
    assert_eq!(caught.status.code(), Some(1), "{}", stdout(&caught));
    let said = stdout(&caught);
    assert!(said.contains("REWRITTEN"), "{said}");
    assert!(said.contains("leaves 0 to 15"), "{said}");
    assert!(
        said.contains(&target.event_id.to_string()),
        "names the event among its block's: {said}"
    );
}

/// Proofs over a tree of several blocks, at every size: the stored nodes (level 4 and up)
/// and the blocks recomputed from the events give what the independent verifier accepts.
async fn proofs_of_a_tree_of_several_blocks_verify_at_every_size(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let writes: Vec<CommandWrite> = (0..70).map(|_| new_task_write(&t.account_id)).collect();
    for chunk in writes.chunks(9) {
        let results = t.store.commit_batch(chunk.to_vec()).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    let events = t
        .store
        .events_after(0, 1000, Some(&t.account_id))
        .await
        .unwrap();
    assert_eq!(events.len(), 70);
    let leaves: Vec<[u8; 32]> = events
        .iter()
        .map(|e| event_leaf_hash(&e.hash).unwrap())
        .collect();
    let answer = |plan| {
        let store = t.store.clone();
        let account = t.account_id.clone();
        async move { store.tree_answer(&account, &plan).await.unwrap() }
    };
    let mut roots = vec![taskledger_events::merkle::empty_root()];
    for size in 1..=70u64 {
        let root = answer(Plan::root(size)).await[0];
        let recomputed = t.store.recompute_tree(&t.account_id, size).await.unwrap();
        assert_eq!(recomputed.root_at, Some(root), "root at {size}");
        roots.push(root);
    }
    for size in [1u64, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 70] {
        for leaf in [0, size / 3, size / 2, size.saturating_sub(2), size - 1] {
            if leaf >= size {
                continue;
            }
            let path = answer(Plan::inclusion(leaf, size).unwrap()).await;
            verify_inclusion(
                leaf,
                size,
                &leaves[leaf as usize],
                &path,
                &roots[size as usize],
            )
            .unwrap_or_else(|e| panic!("leaf {leaf} of {size}: {e}"));
            let id = events[leaf as usize].event_id.to_string();
            let found = t.store.leaf_of_event(&t.account_id, &id).await.unwrap();
            assert_eq!(found.map(|f| f.0), Some(leaf));
        }
        for from in [0, 1, 5, 16, 17, 32, 40, size] {
            if from > size {
                continue;
            }
            let proof = answer(Plan::consistency(from, size).unwrap()).await;
            verify_consistency(
                from,
                size,
                &proof,
                &roots[from as usize],
                &roots[size as usize],
            )
            .unwrap_or_else(|e| panic!("{from} to {size}: {e}"));
        }
    }
    // Nothing below level 4 is stored: about an eighth of a row per event.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM merkle_nodes WHERE account_id = $1")
        .bind(&t.account_id)
        .fetch_one(t.store.pool())
        .await
        .unwrap();
    assert_eq!(
        rows,
        4 + 2 + 1,
        "blocks 0-3, two pairs of them, one of four"
    );
}

/// A tree's head is its stored blocks and the events after them, with no head row: events
/// appended without the trees (as `bench --merkle` does) leave the tree behind, and the
/// account's next append stores the blocks it missed.
async fn a_tree_behind_its_events_catches_up_on_the_accounts_next_append(backend: Backend) {
    let t = TestLedger::new(backend).await;
    t.store
        .commit_batch(vec![new_task_write(&t.account_id)])
        .await
        .unwrap();
    let without = t.store.clone().without_merkle_trees();
    for _ in 0..5 {
        let writes: Vec<CommandWrite> = (0..7).map(|_| new_task_write(&t.account_id)).collect();
        let results = without.commit_batch(writes).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    let nodes = |store: taskledger::store::Store| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM merkle_nodes")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(
        nodes(t.store.clone()).await,
        0,
        "36 events, no block stored"
    );
    let results = t
        .store
        .commit_batch(vec![new_task_write(&t.account_id)])
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        nodes(t.store.clone()).await,
        2 + 1,
        "37 events: two blocks of 16 and their pair"
    );
    assert_tree_exact(&t.store, &t.account_id, "caught up").await;
}

async fn replay_rebuilds_the_trees_and_an_upgraded_ledger_gets_them_once(backend: Backend) {
    let t = TestLedger::new(backend).await;
    for _ in 0..5 {
        let task = t.create(None).await;
        t.set_metadata(&task, json!({"y": 1})).await;
    }
    let before = t.store.tree_head(&t.account_id).await.unwrap();
    assert_eq!(before.tree_size, 10);
    sqlx::raw_sql("DELETE FROM merkle_nodes")
        .execute(t.store.pool())
        .await
        .unwrap();
    let replayed = taskledger(&t.db.url, &["replay"]);
    assert!(replayed.status.success(), "{replayed:?}");
    assert_eq!(t.store.tree_head(&t.account_id).await.unwrap(), before);
    // As a ledger whose events predate the trees: built once at start.
    sqlx::raw_sql("DELETE FROM merkle_nodes; UPDATE merkle_state SET complete = 0")
        .execute(t.store.pool())
        .await
        .unwrap();
    t.store.ensure_trees().await.unwrap();
    assert_eq!(t.store.tree_head(&t.account_id).await.unwrap(), before);
    let task = t.create(None).await;
    t.set_metadata(&task, json!({"y": 2})).await;
    let grown = t.store.tree_head(&t.account_id).await.unwrap();
    assert_eq!(grown.tree_size, 12);
    let recomputed = t.store.recompute_tree(&t.account_id, 10).await.unwrap();
    assert_eq!(recomputed.root_at, Some(before.root));
    assert_eq!(recomputed.root, grown.root);
    assert_eq!(recomputed.first_changed_leaves, None);
}

async fn a_python_auditor_verifies_a_digest_and_a_proof_with_a_common_ed25519_library(
    backend: Backend,
) {
    let python = tokio::task::spawn_blocking(crate::sdk::sdk_python)
        .await
        .unwrap();
    let app = spawn_app(backend).await;
    let id = app.completed(json!({})).await;
    let events = search(&app, &format!("task_id={id}"), 10).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/audit/verify_digest.py");
    for event in &events {
        let out = tokio::process::Command::new(&python)
            .arg(&script)
            .arg(event["event_id"].as_str().unwrap())
            .env("TASKLEDGER_URL", &app.address)
            .env("TASKLEDGER_KEY", &app.key)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "verified");
    }
}

async fn every_event_filter_is_read_through_an_index(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let filter = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filter
    };
    let task_id = task.to_string();
    let cases: Vec<(&str, EventFilter, Option<&str>)> = vec![
        (
            "task_id",
            EventFilter {
                task_id: Some(task_id),
                ..EventFilter::default()
            },
            None,
        ),
        (
            "event_type",
            filter(|f| f.event_types = vec!["TaskCreated".into(), "TaskCompleted".into()]),
            Some("events_by_account_type"),
        ),
        (
            "actor_key_id",
            filter(|f| f.actor_key_id = Some("key_x".into())),
            Some("events_by_account_key"),
        ),
        (
            "actor_scope",
            filter(|f| f.actor_scope = Some("system".into())),
            Some("events_by_account_scope"),
        ),
        (
            "request_id",
            filter(|f| f.request_id = Some("r".into())),
            Some("events_by_account_request"),
        ),
        (
            "recorded_after",
            filter(|f| f.recorded_after_us = Some(0)),
            None,
        ),
        (
            "recorded_before",
            filter(|f| f.recorded_before_us = Some(i64::MAX)),
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, filter, index) in cases {
        let plan = t
            .store
            .search_plan(&t.account_id, &filter)
            .await
            .unwrap()
            .join("\n");
        assert!(!plan.is_empty(), "{name}: a plan");
        let indexed = match backend {
            Backend::Postgres => plan.contains("Index") && !plan.contains("Seq Scan"),
            Backend::Sqlite => {
                plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX")
            }
        };
        if !indexed || index.is_some_and(|i| !plan.contains(i)) {
            wrong.push(format!("{name} should read {index:?}:\n{plan}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// The next digest of `account_id` on the topic with more than `above` leaves.
async fn next_digest(
    consumer: &rdkafka::consumer::StreamConsumer,
    account_id: &str,
    above: u64,
    others: &mut Vec<SignedDigest>,
) -> SignedDigest {
    use rdkafka::Message;
    within(PATIENCE, "a digest on the topic", async {
        loop {
            let message = consumer.recv().await.expect("consume the digest topic");
            let digest: SignedDigest =
                serde_json::from_slice(message.payload().expect("a value")).unwrap();
            assert_eq!(message.key(), Some(digest.account_id.as_bytes()));
            if digest.account_id != account_id {
                others.push(digest);
            } else if digest.tree_size > above {
                return digest;
            }
        }
    })
    .await
}

async fn digests_are_published_and_a_watcher_checks_each_against_the_last(backend: Backend) {
    let digest_topic = crate::helpers::kafka::topic();
    let (broker, _events_topic, app) = crate::helpers::kafka::relayed(backend, |s| {
        s.audit.kafka_digest_topic = digest_topic.clone();
        s.audit.digest_interval_secs = 1;
    })
    .await;
    let acme = app.get("/v1/ledger/digest").await.body["account_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.create(json!({})).await.task_id();
    app.as_key(&app.other_key)
        .post(CREATE, task_body())
        .await
        .task_id();
    let consumer = eventually(PATIENCE, "the digest topic", async || {
        taskledger::relay::stream_consumer(&broker.addr, &digest_topic, true)
    })
    .await;
    let mut others = Vec::new();
    let first = next_digest(&consumer, &acme, 2, &mut others).await;
    assert_eq!(first.tree_size, 3, "acme's two keys and its task");
    for _ in 0..3 {
        app.completed(json!({})).await;
    }
    let second = next_digest(&consumer, &acme, first.tree_size, &mut others).await;
    assert!(second.tree_size > first.tree_size);

    let mut watcher = DigestWatcher::new(&app.address, &app.key);
    assert_eq!(
        watcher.check(first.clone()).await.unwrap(),
        Verdict::First {
            tree_size: first.tree_size
        }
    );
    let mut forged = second.clone();
    forged.tree_size += 1;
    assert!(matches!(
        watcher.check(forged).await.unwrap(),
        Verdict::Broken(_)
    ));
    assert_eq!(
        watcher.check(second.clone()).await.unwrap(),
        Verdict::Extends {
            from: first.tree_size,
            to: second.tree_size
        }
    );
    // A digest that does not extend the last one (a rewritten log signed anew) is caught.
    let older = first.clone();
    assert!(matches!(
        watcher.check(older).await.unwrap(),
        Verdict::Broken(_)
    ));
    // globex's digests are on the topic too; the watcher, holding acme's key, leaves them.
    let globex = app
        .as_key(&app.other_key)
        .get("/v1/ledger/digest")
        .await
        .body["account_id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = match others.iter().find(|d| d.account_id == globex) {
        Some(d) => d.clone(),
        None => next_digest(&consumer, &globex, 0, &mut Vec::new()).await,
    };
    assert_eq!(watcher.check(other).await.unwrap(), Verdict::OtherAccount);
}

/// `bench --merkle` measures appends with and without the trees, and leaves the trees whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_measures_the_trees_cost_and_leaves_them_whole() {
    let db = TestDb::new(Backend::Sqlite).await;
    let out = taskledger(
        &db.url,
        &[
            "bench",
            "--commands",
            "60",
            "--concurrency",
            "4",
            "--merkle",
            "--merkle-rounds",
            "3",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("ledger with the Merkle trees (3 rounds)"),
        "{text}"
    );
    assert!(
        text.contains("ledger without the Merkle trees (3 rounds)"),
        "{text}"
    );
    let per_round = text
        .lines()
        .find_map(|l| l.strip_prefix("with trees / without, per round: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(per_round.split(' ').count(), 3, "{text}");
    assert!(text.contains("with trees / without: "), "{text}");
    assert!(text.contains("(median of the rounds "), "{text}");
    let store = db.store().await;
    let bench = store.find_account("bench").await.unwrap().unwrap();
    let head = store.tree_head(&bench).await.unwrap();
    assert_eq!(
        head.tree_size,
        60 + 2 * 3 * 60,
        "every bench event is in the tree"
    );
    let recomputed = store.recompute_tree(&bench, 0).await.unwrap();
    assert_eq!(recomputed.root, head.root);
    assert_eq!(recomputed.first_changed_leaves, None);
    // An event's leaf is found by searching the leaves, a few rounds for 300 of them.
    let events = store.events_after(0, 1000, Some(&bench)).await.unwrap();
    for i in [0, 1, 31, 32, 33, 150, 298, 299] {
        let id = events[i].event_id.to_string();
        let found = store.leaf_of_event(&bench, &id).await.unwrap();
        assert_eq!(
            found,
            Some((i as u64, events[i].global_position)),
            "leaf {i}"
        );
    }
}

/// A new categorization task of `account_id`, decided, as the ledger hands it to the store.
fn new_task_write(account_id: &str) -> CommandWrite {
    CommandWrite {
        account_id: account_id.to_string(),
        task_id: TaskId::generate().to_string(),
        actor: context(account_id, Scope::Customer).actor,
        request_id: None,
        expected_sequence: 0,
        prev_hash: GENESIS_HASH.to_string(),
        prior_view: None,
        events: vec![TaskEvent::TaskCreated(TaskCreated {
            task_type: "categorization".into(),
            instruction: None,
            callback_url: None,
            project: None,
            batch: None,
            params: json!({"attachment_type": "text", "attachment": "car", "categories": ["a", "b"]}),
            metadata: json!({}),
            tags: Vec::new(),
            unique_id: None,
            clear_unique_id_on_error: false,
            project_param_version: None,
            is_test: false,
        })],
        idempotency: None,
        placement: Vec::new(),
    }
}

async fn one_group_commit_of_many_accounts_grows_each_accounts_tree(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let mut accounts = Vec::new();
    for i in 0..8 {
        accounts.push(
            t.store
                .ensure_account(&format!("tenant-{i}"))
                .await
                .unwrap(),
        );
    }
    for _ in 0..3 {
        // Each transaction carries two commands of every account, interleaved.
        let writes: Vec<CommandWrite> = (0..2)
            .flat_map(|_| accounts.iter().map(|a| new_task_write(a)))
            .collect();
        let results = t.store.commit_batch(writes).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
    }
    for account in &accounts {
        let head = t.store.tree_head(account).await.unwrap();
        assert_eq!(head.tree_size, 6);
        let recomputed = t.store.recompute_tree(account, 6).await.unwrap();
        assert_eq!(recomputed.root_at, Some(head.root), "{account}");
        assert_eq!(recomputed.first_changed_leaves, None);
    }
    // A leaf is found only in its own account's tree.
    let first = t
        .store
        .events_after(0, 1, Some(&accounts[0]))
        .await
        .unwrap();
    let id = first[0].event_id.to_string();
    assert_eq!(
        t.store
            .leaf_of_event(&accounts[0], &id)
            .await
            .unwrap()
            .map(|l| l.0),
        Some(0)
    );
    assert_eq!(
        t.store.leaf_of_event(&accounts[1], &id).await.unwrap(),
        None
    );
}

/// Keys made before keys were recorded (rows with no event) get their facts recorded when
/// this release opens the database: created, and revoked if they were, once only, in the
/// account's chain order and tree.
async fn keys_from_before_keys_were_recorded_get_their_events_once(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let account = t.store.ensure_account("acme").await.unwrap();
    for (key_id, hash, revoked) in [
        ("key_old_live", "aa", None),
        ("key_old_gone", "bb", Some(2_000_000i64)),
    ] {
        sqlx::query(
            "INSERT INTO api_keys (key_id, account_id, scope, key_hash, created_at_us, revoked_at_us) \
             VALUES ($1, $2, 'contributor', $3, 1000000, $4)",
        )
        .bind(key_id)
        .bind(&account)
        .bind(hash)
        .bind(revoked)
        .execute(t.store.pool())
        .await
        .unwrap();
    }
    t.store.migrate().await.unwrap();
    t.store.migrate().await.unwrap();

    let facts: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT task_id, sequence, event_type FROM events WHERE task_id LIKE 'key_old_%' \
         ORDER BY task_id, sequence",
    )
    .fetch_all(t.store.pool())
    .await
    .unwrap();
    let facts: Vec<(&str, i64, &str)> = facts
        .iter()
        .map(|(k, s, e)| (k.as_str(), *s, e.as_str()))
        .collect();
    assert_eq!(
        facts,
        vec![
            ("key_old_gone", 1, "ApiKeyCreated"),
            ("key_old_gone", 2, "ApiKeyRevoked"),
            ("key_old_live", 1, "ApiKeyCreated"),
        ]
    );
    let head = t.store.tree_head(&account).await.unwrap();
    let recomputed = t
        .store
        .recompute_tree(&account, head.tree_size)
        .await
        .unwrap();
    assert_eq!(recomputed.events, head.tree_size);
    assert_eq!(recomputed.root, head.root, "the tree holds the new facts");
    assert_ledger_intact(&t.store).await;
}

/// The account's tree, as stored, is exactly the tree of its events: its head, every leaf,
/// and the root the stored interior nodes give.
async fn assert_tree_exact(store: &taskledger::store::Store, account_id: &str, what: &str) {
    let head = store.tree_head(account_id).await.unwrap();
    let events = store
        .events_after(0, 10_000, Some(account_id))
        .await
        .unwrap();
    assert_eq!(
        head.tree_size,
        events.len() as u64,
        "{what}: every event is a leaf"
    );
    let recomputed = store.recompute_tree(account_id, 0).await.unwrap();
    assert_eq!(recomputed.root, head.root, "{what}: the head's root");
    assert_eq!(recomputed.first_changed_leaves, None, "{what}: the leaves");
    let stored_root = store
        .tree_answer(
            account_id,
            &taskledger::audit::tree::Plan::root(head.tree_size),
        )
        .await
        .unwrap();
    assert_eq!(
        stored_root,
        vec![head.root],
        "{what}: the stored nodes' root"
    );
}

/// Each process remembers the tree heads it wrote, to spare the append their read: two
/// processes appending to one account in turns, one command at a time and in group commits
/// of several accounts, with refused commands and rolled-back transactions between, must
/// never grow a tree from a head the other one moved.
async fn two_processes_appending_to_one_account_in_turns_keep_its_tree_exact(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let other_store = t.db.store().await;
    let other = taskledger::ledger::Ledger::start(
        other_store.clone(),
        taskledger::ledger::LedgerSettings::with_max_batch(64),
        taskledger::metrics::Metrics::new(),
    );
    let globex = t.store.ensure_account("globex").await.unwrap();
    let customer = t.customer();
    let create = || crate::helpers::categorization(None);
    for round in 0..4 {
        // This process, alone: it remembers the head it wrote, and on PostgreSQL grows the
        // tree from it without reading it back.
        let mine = t.create(None).await;
        let reads = t.store.tree_heads_read();
        t.set_metadata(&mine, json!({ "round": round })).await;
        if backend == Backend::Postgres {
            assert_eq!(t.store.tree_heads_read(), reads, "the head was known");
        }
        assert_tree_exact(&t.store, &t.account_id, "after this process").await;
        // The other process, alone, then several of its commands at once (a group commit).
        other.create(&customer, create(), None).await.unwrap();
        let many: Vec<_> = (0..5)
            .map(|_| other.create(&customer, create(), None))
            .collect();
        for created in futures::future::join_all(many).await {
            created.unwrap();
        }
        assert_tree_exact(&other_store, &t.account_id, "after the other process").await;
        // Back to this process, whose remembered head is now stale: it finds out, and
        // reads the head.
        let reads = t.store.tree_heads_read();
        t.set_metadata(&mine, json!({ "round": round, "again": true }))
            .await;
        assert_eq!(
            t.store.tree_heads_read(),
            reads + 1,
            "the stale head was read"
        );
        assert_tree_exact(&t.store, &t.account_id, "this process again").await;
        // A group commit of two accounts through the other store, straight.
        let writes = vec![
            new_task_write(&t.account_id),
            new_task_write(&globex),
            new_task_write(&t.account_id),
        ];
        let results = other_store.commit_batch(writes).await.unwrap();
        assert!(results.iter().all(Result::is_ok));
        // A command decided on a stale version is refused and its transaction rolled
        // back: nothing of it may be remembered as written.
        let mut stale = t.decided_write(&mine, Vec::new()).await;
        stale.expected_sequence -= 1;
        stale.events = vec![TaskEvent::TaskMetadataSet(
            taskledger_events::TaskMetadataSet {
                metadata: json!({ "stale": round }),
            },
        )];
        let refused = t.store.commit_batch(vec![stale]).await.unwrap();
        assert!(refused[0].is_err(), "a stale command is refused");
        let results = t
            .store
            .commit_batch(vec![new_task_write(&globex), new_task_write(&t.account_id)])
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok));
        assert_tree_exact(&t.store, &t.account_id, "after both group commits").await;
        assert_tree_exact(&t.store, &globex, "the other account").await;
    }
}

on_both_backends!(
    two_processes_appending_to_one_account_in_turns_keep_its_tree_exact,
    one_group_commit_of_many_accounts_grows_each_accounts_tree,
    keys_from_before_keys_were_recorded_get_their_events_once,
    every_event_filter_is_read_through_an_index,
    each_event_filter_narrows_the_account_feed_in_global_order,
    named_keys_are_listed_per_account_and_recorded_as_its_events,
    digests_and_proofs_verify_with_the_independent_verifier,
    verify_digest_catches_a_truncated_log_that_plain_verify_passes,
    verify_digest_catches_a_rewritten_and_rehashed_tail,
    verify_digest_names_the_block_of_an_event_rewritten_deep_in_the_log,
    proofs_of_a_tree_of_several_blocks_verify_at_every_size,
    a_tree_behind_its_events_catches_up_on_the_accounts_next_append,
    replay_rebuilds_the_trees_and_an_upgraded_ledger_gets_them_once,
);

mod kafka {
    use super::*;
    on_sqlite!(digests_are_published_and_a_watcher_checks_each_against_the_last);
}

mod python {
    use super::*;
    on_sqlite!(a_python_auditor_verifies_a_digest_and_a_proof_with_a_common_ed25519_library);
}
