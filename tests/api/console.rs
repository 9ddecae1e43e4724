//! The auditor's console (`/console`) in a real headless Chromium: sign in, the tasks table,
//! a task's history, the checks run in the browser, a tampered event, and the proof and
//! signature code against vectors computed here, independently of it. Every test also checks
//! that the page raised no error and asked for nothing outside the server's origin.

use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use taskledger_events::{canonical_json, Scope};

use crate::helpers::browser::Browser;
use crate::helpers::{
    a_moment_between, eventually, ok_if, spawn_app, tamper_with_event, Backend, TestApp, CREATE,
    PATIENCE,
};

crate::helpers::backends!(
    both: [tasks_whose_events_were_altered_or_removed_in_the_database_show_which_check_failed],
    sqlite: [
        the_console_is_served_from_the_binary_with_its_types_policy_and_revalidation,
        an_auditor_signs_in_lists_tasks_opens_one_reads_its_history_and_sees_it_verified,
        the_browser_checks_agree_with_rfc_6962_and_rfc_8032_vectors_computed_apart,
        a_long_history_opens_one_page_at_a_time_with_one_proof_per_page,
    ],
);

/// Metadata whose exact text JavaScript's own JSON would lose: integers above 2^53, floats
/// with an integer value, exponents, negative zero, escapes, and keys that sort differently
/// by UTF-16 units than by UTF-8 bytes. The browser must rebuild its canonical text exactly.
fn awkward_metadata() -> Value {
    serde_json::from_str(
        r#"{"big": 18446744073709551615, "neg": -9223372036854775808, "one": 1.0,
            "tiny": 5e-324, "huge": 9.3e30, "zero": -0.0, "text": "é \u0001 \n \" \\ /",
            "\ue000": "private use", "😀": "astral", "nested": {"b": [1.5, {"z": null, "a": true}], "a": {}}}"#,
    )
    .unwrap()
}

async fn create_task(app: &TestApp, metadata: Value) -> String {
    let mut body = json!({"attachment_type": "text", "attachment": "car",
                          "categories": ["big", "small"], "project": "kittens"});
    body["metadata"] = metadata;
    app.post(CREATE, body).await.task_id()
}

async fn sign_in(browser: &Browser, app: &TestApp) {
    browser.goto(&app.url("/console")).await;
    browser
        .wait_for(
            "the sign-in field",
            "document.activeElement?.id === 'api-key'",
        )
        .await;
    browser.type_text(&app.key).await;
    browser.press("Enter").await;
    browser
        .wait_for(
            "the tasks table",
            "document.querySelector('#tasks caption')",
        )
        .await;
}

async fn the_console_is_served_from_the_binary_with_its_types_policy_and_revalidation(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/verify.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let reply = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{path}");
        let headers = reply.headers().clone();
        assert_eq!(headers[CONTENT_TYPE], content_type, "{path}");
        assert_eq!(headers[CACHE_CONTROL], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        let body = reply.bytes().await.unwrap();
        assert!(!body.is_empty());
        // Nothing refers to another origin: no CDN, font or analytics.
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            !text.contains("//cdn") && !text.contains("fonts.g"),
            "{path}"
        );
        for scheme in ["http://", "https://"] {
            assert!(
                !text.contains(scheme) || path.ends_with(".svg"),
                "{path} names another origin"
            );
        }

        let again = app
            .client
            .get(app.url(path))
            .header(IF_NONE_MATCH, headers[ETAG].clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidates by its ETag");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let missing = app
        .client
        .get(app.url("/console/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The console needs no key; the API behind it still does.
    let api = app.client.get(app.url("/v1/tasks")).send().await.unwrap();
    assert_eq!(api.status(), 401);
}

async fn an_auditor_signs_in_lists_tasks_opens_one_reads_its_history_and_sees_it_verified(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let task = create_task(&app, awkward_metadata()).await;
    let before_change = a_moment_between().await;
    // The console's "as of" control has millisecond steps: keep the next change a whole
    // millisecond after the moment it will ask for.
    let asked = before_change
        + chrono::Duration::microseconds(
            1000 - i64::from(before_change.timestamp_subsec_micros() % 1000),
        );
    eventually(PATIENCE, "the clock to pass the asked moment", async || {
        ok_if(chrono::Utc::now() > asked, chrono::Utc::now())
    })
    .await;
    let changed = app
        .post(
            &format!("/v1/task/{task}/setMetadata"),
            json!({"reviewed": true, "score": 0.1}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let tagged = app
        .as_key(&app.key)
        .put(
            &format!("/v1/task/{task}/tags"),
            json!(["audit:q4", "ünïcode"]),
        )
        .await;
    assert_eq!(tagged.status, 200, "{}", tagged.body);
    // The labeler completes it with a key that has a name: the History shows the name.
    let (labeler_key, labeler) = app
        .store
        .create_named_key("acme", Scope::Contributor, Some("Sam Ortiz (labeler)"))
        .await
        .unwrap();
    let done = app
        .as_key(&labeler)
        .post(
            &format!("/v1/task/{task}/complete"),
            json!({"response": {"category": "big"}}),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let other = create_task(&app, json!({})).await;
    let third = create_task(&app, json!({"n": 3})).await;
    let history = app.history(&task).await;
    assert!(history.len() >= 4);

    let browser = Browser::start(1280, 800).await;
    browser
        .send(
            "Emulation.setTimezoneOverride",
            json!({"timezoneId": "UTC"}),
        )
        .await;
    browser.goto(&app.url("/console")).await;
    browser
        .wait_for(
            "the sign-in field",
            "document.activeElement?.id === 'api-key'",
        )
        .await;
    let label = browser
        .eval("document.querySelector('label[for=api-key]').textContent")
        .await;
    assert_eq!(label, "API key");
    assert_eq!(
        browser
            .eval("document.getElementById(document.querySelector('#api-key').getAttribute('aria-describedby')).textContent")
            .await,
        "Kept in this tab only (sessionStorage) and sent as Basic auth."
    );

    // A wrong key: the API's own message, and no way in.
    browser.type_text("not-a-key").await;
    browser.press("Enter").await;
    browser
        .wait_for(
            "the sign-in error",
            "document.querySelector('#sign-in-error').textContent",
        )
        .await;
    let refused = app.as_key("not-a-key").get("/v1/tasks?limit=1").await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        browser
            .eval("document.querySelector('#sign-in-error').textContent")
            .await,
        refused.body["error"]
    );
    browser.screenshot("sign-in-refused").await;

    // The right key, typed and sent with the keyboard alone.
    browser
        .eval(
            "(() => { const f = document.querySelector('#api-key'); f.value = ''; f.focus(); })()",
        )
        .await;
    browser.type_text(&app.key).await;
    browser.press("Enter").await;
    browser
        .wait_for(
            "three tasks in the table",
            "document.querySelectorAll('#tasks tbody tr').length === 3",
        )
        .await;
    let headers = browser
        .eval("[...document.querySelectorAll('#tasks thead th')].map(th => th.textContent)")
        .await;
    assert_eq!(
        headers,
        json!(["Task id", "Type", "Status", "Project", "Batch", "Created", "Updated"])
    );
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('taskledger.api-key')")
            .await,
        json!(app.key)
    );
    assert_eq!(browser.eval("localStorage.length").await, json!(0));
    browser.screenshot("tasks").await;

    // Two rows a page: "Next page" follows `next_token` to the third task.
    browser
        .eval("document.querySelector('#f-limit').value = '2'; document.querySelector('.filters button').click()")
        .await;
    let ids = "[...document.querySelectorAll('#tasks tbody a')].map(a => a.textContent)";
    browser
        .wait_for(
            "a page of two",
            "document.querySelector('#tasks-result').dataset.loaded === 'limit=2' && \
             document.querySelectorAll('#tasks tbody tr').length === 2",
        )
        .await;
    let mut seen = browser.eval(ids).await.as_array().unwrap().clone();
    browser
        .eval("document.querySelector('#next-page').click()")
        .await;
    browser
        .wait_for(
            "the second page",
            "document.querySelector('#tasks-result').dataset.loaded.includes('next_token=')",
        )
        .await;
    seen.extend(browser.eval(ids).await.as_array().unwrap().clone());
    assert!(
        browser.eval("!document.querySelector('#next-page')").await == json!(true),
        "no page after the last"
    );
    seen.sort_by_key(|v| v.to_string());
    let mut all = vec![json!(task), json!(other), json!(third)];
    all.sort_by_key(|v| v.to_string());
    assert_eq!(seen, all);

    // Tags: all of them.
    browser
        .eval("document.querySelector('#f-limit').value = '25'; document.querySelector('#f-tags').value = 'audit:q4, ünïcode'; document.querySelector('.filters button').click()")
        .await;
    browser
        .wait_for(
            "the tagged task",
            "document.querySelector('#tasks-result').dataset.loaded.includes('tags=audit')",
        )
        .await;
    assert_eq!(browser.eval(ids).await, json!([task]));
    browser
        .eval("document.querySelector('#f-tags').value = ''")
        .await;

    // A filter narrows the table to the completed task.
    browser
        .eval("document.querySelector('#f-status').value = 'completed'; document.querySelector('.filters button').click()")
        .await;
    browser
        .wait_for(
            "the completed task alone",
            "document.querySelector('#tasks-result').dataset.loaded === 'status=completed&limit=25'",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#tasks tbody tr').length")
            .await,
        json!(1)
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#tasks tbody a').textContent")
            .await,
        json!(task)
    );

    // The task: its current object, one History item per event, verified in the browser.
    browser
        .eval("document.querySelector('#tasks tbody a').click()")
        .await;
    browser
        .wait_for(
            "the history",
            &format!(
                "document.querySelectorAll('#history li').length === {}",
                history.len()
            ),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#history').getAttribute('aria-labelledby')")
            .await,
        "history-title"
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#history-title').textContent")
            .await,
        "History"
    );
    let first_item = browser
        .eval("document.querySelector('#history li').innerText")
        .await;
    let first_item = first_item.as_str().unwrap();
    // The actor is the key's name where the server keeps names (`GET /v1/keys`), else its id.
    let key_id = history[0]["actor"]["key_id"].as_str().unwrap();
    let keys = app.get("/v1/keys").await;
    let actor = match keys.status {
        404 => key_id.to_string(),
        200 => keys.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == key_id)
            .and_then(|k| k["name"].as_str())
            .filter(|name| !name.is_empty())
            .unwrap_or(key_id)
            .to_string(),
        other => panic!("GET /v1/keys answered {other}: {}", keys.body),
    };
    for part in [
        history[0]["type"].as_str().unwrap(),
        history[0]["recorded_at"].as_str().unwrap(),
        &actor,
        "customer",
        history[0]["request_id"].as_str().unwrap(),
        &history[0]["global_position"].to_string(),
    ] {
        assert!(first_item.contains(part), "{part:?} not in {first_item:?}");
    }
    let completed_item = browser
        .eval("[...document.querySelectorAll('#history li')].find(li => li.innerText.startsWith('TaskCompleted')).innerText")
        .await;
    assert!(
        completed_item
            .as_str()
            .unwrap()
            .contains("Sam Ortiz (labeler) (contributor)"),
        "{completed_item}"
    );
    browser
        .wait_for(
            "the integrity check to finish",
            "document.querySelector('#integrity').dataset.result !== 'checking'",
        )
        .await;
    let result = browser
        .eval("document.querySelector('#integrity-result').textContent")
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#integrity').dataset.result")
            .await,
        "verified",
        "{result}"
    );
    let result = result.as_str().unwrap();
    assert!(result.starts_with("Verified"), "{result}");
    // Until the digest endpoints exist the page says it checked the chain alone; once they
    // answer, it checks the proofs and the signature too.
    let digest = app.get("/v1/ledger/digest").await;
    if digest.status == 404 {
        assert!(result.contains("chain check only"), "{result}");
        assert_eq!(
            browser
                .eval("document.querySelector('#integrity').dataset.scope")
                .await,
            "chain"
        );
    } else {
        assert_eq!(digest.status, 200, "{}", digest.body);
        assert_eq!(
            browser
                .eval("document.querySelector('#integrity').dataset.scope")
                .await,
            "digest"
        );
        assert!(result.contains("signature"), "{result}");
    }
    let checks = browser
        .eval("[...document.querySelectorAll('#integrity li')].map(li => li.dataset.check)")
        .await;
    assert!(
        checks
            .as_array()
            .unwrap()
            .contains(&json!("Content hashes")),
        "{checks}"
    );
    assert!(
        checks.as_array().unwrap().contains(&json!("Chain links")),
        "{checks}"
    );

    // The current object is the task the API serves.
    let shown: Value = serde_json::from_str(
        browser
            .eval("document.querySelector('[aria-labelledby=current-title] pre').textContent")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let current = app.get(&format!("/v1/task/{task}")).await.body;
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["task_id"], current["task_id"]);

    // Selecting the metadata change with the keyboard shows the field-level diff.
    let metadata_event = history
        .iter()
        .position(|e| e["type"] == "TaskMetadataSet")
        .expect("a metadata event");
    browser
        .eval(&format!(
            "document.querySelectorAll('#history button')[{metadata_event}].focus()"
        ))
        .await;
    browser.press("Enter").await;
    browser
        .wait_for("the diff", "document.querySelector('#diff')")
        .await;
    let fields = browser
        .eval("[...document.querySelectorAll('#diff tbody th')].map(th => th.textContent)")
        .await;
    let fields = fields.as_array().unwrap();
    assert!(fields.contains(&json!("metadata.reviewed")), "{fields:?}");
    assert!(fields.contains(&json!("metadata.big")), "{fields:?}");
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#history button')[0].getAttribute('aria-pressed')")
            .await,
        "false"
    );
    assert_eq!(
        browser
            .eval(&format!("document.querySelectorAll('#history button')[{metadata_event}].getAttribute('aria-pressed')"))
            .await,
        "true"
    );
    browser.screenshot("task").await;

    // "As of" the moment before the change: the task as the API gives it for that time.
    let local = asked.format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
    browser
        .eval(&format!(
            "(() => {{ const f = document.querySelector('#as-of'); f.value = '{local}'; \
             document.querySelector('#as-of').form.requestSubmit(); }})()"
        ))
        .await;
    browser
        .wait_for(
            "the task as of then",
            "document.querySelector('#as-of-result pre')",
        )
        .await;
    let then: Value = serde_json::from_str(
        browser
            .eval("document.querySelector('#as-of-result pre').textContent")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let expected = app
        .get(&format!(
            "/v1/task/{task}?as_of={}",
            asked.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        ))
        .await
        .body;
    assert_eq!(then, expected);
    assert!(then["metadata"].get("reviewed").is_none(), "{then}");
    assert_eq!(then["status"], "pending");

    // Phone width: nothing wider than the screen.
    browser.resize(390, 844).await;
    browser
        .wait_for(
            "the one-column layout",
            "getComputedStyle(document.querySelector('.columns')).gridTemplateColumns.split(' ').length === 1",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true)
    );
    browser.screenshot("task-phone").await;
    browser.resize(1280, 800).await;

    // Event search: the account's feed, each event linked to its task.
    let feed = app.get("/v1/events?limit=1000").await.body;
    let feed = feed["events"].as_array().unwrap().clone();
    browser.eval("location.hash = '#/events'").await;
    browser
        .wait_for(
            "the events table",
            &format!(
                "document.querySelectorAll('#events tbody tr').length === {}",
                feed.len()
            ),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#events-result').firstElementChild.tagName")
            .await,
        "DIV",
        "the table comes first: no warning, no stray text"
    );
    assert!(!browser
        .eval("document.querySelector('#events-result').innerText")
        .await
        .as_str()
        .unwrap()
        .starts_with("null"));
    browser.screenshot("events").await;
    // Search: one task's events by the labeler's key, answered by the server's filters.
    browser
        .eval(&format!(
            "document.querySelector('#e-task').value = '{task}'; \
             document.querySelector('#e-key').value = '{}'; \
             document.querySelector('.filters button').click()",
            labeler_key.key_id
        ))
        .await;
    browser
        .wait_for(
            "the filtered events",
            "document.querySelector('#events-result').dataset.loaded.includes('actor_key_id=')",
        )
        .await;
    let found = browser
        .eval(
            "[...document.querySelectorAll('#events tbody tr')].map(tr => tr.cells[2].textContent)",
        )
        .await;
    let filtered = app
        .get(&format!(
            "/v1/events?task_id={task}&actor_key_id={}",
            labeler_key.key_id
        ))
        .await;
    if filtered.status == 200 && filtered.body["events"].as_array().unwrap().len() == 1 {
        // A server with event search: the page is its answer, with no warning.
        assert_eq!(found, json!(["TaskCompleted"]));
        assert_eq!(
            browser
                .eval("document.querySelector('#events-result [role=alert]') === null")
                .await,
            json!(true)
        );
    } else {
        // One without: the page says its list is unfiltered.
        assert_eq!(
            browser
                .eval("!!document.querySelector('#events-result [role=alert]')")
                .await,
            json!(true)
        );
    }
    browser.screenshot("events-search").await;
    browser.eval("location.hash = '#/events'").await;
    browser
        .wait_for(
            "the whole feed again",
            "document.querySelector('#events-result').dataset.loaded === 'limit=50'",
        )
        .await;
    browser
        .eval(&format!(
            "[...document.querySelectorAll('#events tbody a')].find(a => a.textContent === '{other}').click()"
        ))
        .await;
    browser
        .wait_for(
            "the other task's page",
            &format!("document.querySelector('h1')?.textContent === 'Task {other}'"),
        )
        .await;

    browser.assert_stayed_within(&app.address);
    for url in browser.requested_urls() {
        assert!(!url.contains(&app.key), "the key went into a URL: {url}");
    }
    // The API was asked with Basic auth; the console's own files without credentials.
    let api_requests: Vec<_> = browser
        .events_named("Network.requestWillBeSent")
        .into_iter()
        .filter(|e| {
            e["params"]["request"]["url"]
                .as_str()
                .unwrap()
                .contains("/v1/")
        })
        .collect();
    assert!(!api_requests.is_empty());
    for request in api_requests {
        let auth = request["params"]["request"]["headers"]["Authorization"]
            .as_str()
            .unwrap_or_default();
        assert!(auth.starts_with("Basic "), "{request}");
    }
}

/// A task's page costs the same whatever the length of its history: the console reads one
/// page of events and asks for one inclusion proof (the newest event's hash commits the chain
/// before it), and reads more only when asked.
async fn a_long_history_opens_one_page_at_a_time_with_one_proof_per_page(backend: Backend) {
    let app = spawn_app(backend).await;
    let task = create_task(&app, json!({})).await;
    for n in 0..129 {
        let changed = app
            .post(&format!("/v1/task/{task}/setMetadata"), json!({"n": n}))
            .await;
        assert_eq!(changed.status, 200, "{}", changed.body);
    }
    let history = app.history(&task).await;
    assert_eq!(history.len(), 130);

    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    browser
        .eval(&format!("location.hash = '#/task/{task}'"))
        .await;
    let finished = "document.querySelector('#integrity')?.dataset.result && \
                    document.querySelector('#integrity').dataset.result !== 'checking'";
    browser.wait_for("the first page's check", finished).await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#history li').length")
            .await,
        100
    );
    let result = browser
        .eval("document.querySelector('#integrity-result').textContent")
        .await;
    let result = result.as_str().unwrap().to_string();
    assert!(result.starts_with("Verified"), "{result}");
    assert!(result.contains("Events 1 to 100 are checked"), "{result}");
    assert_eq!(
        browser
            .eval("document.querySelector('#history-more').hidden")
            .await,
        false
    );
    let proofs = |browser: &Browser| {
        browser
            .requested_urls()
            .into_iter()
            .filter(|u| u.contains("/v1/ledger/proof/inclusion"))
            .collect::<Vec<_>>()
    };
    let first = proofs(&browser);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].contains(history[99]["event_id"].as_str().unwrap()),
        "the newest event of the page is the one proven: {first:?}"
    );

    browser
        .eval("document.querySelector('#history-more').click()")
        .await;
    browser
        .wait_for(
            "the whole history, checked",
            &format!(
                "document.querySelectorAll('#history li').length === 130 && \
                 document.querySelector('#integrity').dataset.checked === '130' && ({finished})"
            ),
        )
        .await;
    let result = browser
        .eval("document.querySelector('#integrity-result').textContent")
        .await;
    let result = result.as_str().unwrap().to_string();
    assert!(result.starts_with("Verified"), "{result}");
    assert!(!result.contains("load more"), "{result}");
    assert_eq!(
        browser
            .eval("document.querySelector('#history-more').hidden")
            .await,
        true
    );
    assert_eq!(proofs(&browser).len(), 2);
    browser.assert_stayed_within(&app.address);
}

async fn tasks_whose_events_were_altered_or_removed_in_the_database_show_which_check_failed(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let task = create_task(&app, json!({"amount": 100})).await;
    let changed = app
        .post(
            &format!("/v1/task/{task}/setMetadata"),
            json!({"amount": 250}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let history = app.history(&task).await;
    let altered = &history[1];
    // The payload rewritten behind the API's back, in canonical form, hashes left as they were.
    let mut payload = altered["payload"].clone();
    let text = canonical_json(&payload);
    assert!(text.contains("250"), "{text}");
    payload = serde_json::from_str(&text.replace("250", "25")).unwrap();
    tamper_with_event(
        &app._db,
        &app.store,
        altered["global_position"].as_i64().unwrap(),
        &canonical_json(&payload),
    )
    .await;

    // Another task loses its middle event: every hash still matches its content, the chain
    // does not.
    let gapped = create_task(&app, json!({})).await;
    for n in [1, 2] {
        let changed = app
            .post(&format!("/v1/task/{gapped}/setMetadata"), json!({"n": n}))
            .await;
        assert_eq!(changed.status, 200, "{}", changed.body);
    }
    let gapped_history = app.history(&gapped).await;
    let removed = gapped_history[1]["global_position"].as_i64().unwrap();
    if backend == Backend::Sqlite {
        sqlx::raw_sql("DROP TRIGGER events_no_delete")
            .execute(app.store.pool())
            .await
            .unwrap();
    }
    let deleted = sqlx::query("DELETE FROM events WHERE global_position = $1")
        .bind(removed)
        .execute(app.store.pool())
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);

    let browser = Browser::start(1280, 800).await;
    sign_in(&browser, &app).await;
    browser
        .eval(&format!("location.hash = '#/task/{task}'"))
        .await;
    browser
        .wait_for(
            "the integrity check to finish",
            "document.querySelector('#integrity')?.dataset.result && document.querySelector('#integrity').dataset.result !== 'checking'",
        )
        .await;
    let result = browser
        .eval("document.querySelector('#integrity-result').textContent")
        .await;
    let result = result.as_str().unwrap();
    assert_eq!(
        browser
            .eval("document.querySelector('#integrity').dataset.result")
            .await,
        "failed",
        "{result}"
    );
    assert!(
        result.starts_with("Not verified: Content hashes check failed: "),
        "{result}"
    );
    let names_event = format!(
        "event 2 ({}, global position {}",
        altered["type"].as_str().unwrap(),
        altered["global_position"]
    );
    assert!(
        result.contains(&names_event),
        "{result} should name {names_event}"
    );
    assert!(
        result.contains("the stored hash does not match the event's content"),
        "{result}"
    );
    // The links still hold: only the altered event's content is wrong.
    assert_eq!(
        browser
            .eval("document.querySelector('[data-check=\"Chain links\"]').className")
            .await,
        "ok"
    );
    assert!(!result.contains("Verified"));
    browser
        .screenshot(&format!("task-tampered-{backend:?}"))
        .await;

    browser
        .eval(&format!("location.hash = '#/task/{gapped}'"))
        .await;
    browser
        .wait_for(
            "the gapped task's check to finish",
            &format!(
                "document.querySelector('h1')?.textContent === 'Task {gapped}' && \
                      document.querySelector('#integrity').dataset.result !== 'checking'"
            ),
        )
        .await;
    let third = &gapped_history[2];
    let expected = format!(
        "Not verified: Chain links check failed: event 3 ({}, global position {}, id {}): \
         expected sequence 2 (an event is missing)",
        third["type"].as_str().unwrap(),
        third["global_position"],
        third["event_id"].as_str().unwrap()
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#integrity-result').textContent")
            .await,
        expected
    );
    assert_eq!(
        browser
            .eval("document.querySelector('[data-check=\"Content hashes\"]').className")
            .await,
        "ok"
    );
    browser
        .screenshot(&format!("task-gapped-{backend:?}"))
        .await;
    browser.assert_stayed_within(&app.address);
}

// ---------------------------------------------------------------------------------------
// An RFC 6962 tree built here from its definition (section 2.1), apart from the console's
// JavaScript, to check the browser's verifier against.

fn leaf(data: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0])
        .chain_update(data)
        .finalize()
        .into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn mth(leaves: &[Vec<u8>]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaf(&leaves[0]),
        n => {
            let k = split(n);
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]) of RFC 6962 section 2.1.1.
fn path(m: usize, leaves: &[Vec<u8>]) -> Vec<[u8; 32]> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

async fn the_browser_checks_agree_with_rfc_6962_and_rfc_8032_vectors_computed_apart(
    backend: Backend,
) {
    // The Certificate Transparency test leaves and their published roots, sizes 1 to 8.
    let data: Vec<Vec<u8>> = [
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
    .map(|h| hex::decode(h).unwrap())
    .collect();
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    for n in 1..=8 {
        assert_eq!(hex::encode(mth(&data[..n])), roots[n - 1], "size {n}");
    }
    // RFC 6962's published proof for leaf 0 of 8.
    assert_eq!(
        path(0, &data).iter().map(hex::encode).collect::<Vec<_>>(),
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
        ]
    );
    // Every leaf of every size up to 8 (the CT leaves), and of a ragged tree of 13 event-like
    // leaves: each proof must verify, and must not once a byte, the index or the size is off.
    let events: Vec<Vec<u8>> = (0u8..13).map(|i| Sha256::digest([i]).to_vec()).collect();
    let mut cases = Vec::new();
    for leaves in (1..=8).map(|n| &data[..n]).chain([&events[..]]) {
        let n = leaves.len();
        let root = hex::encode(mth(leaves));
        for m in 0..n {
            let proof: Vec<String> = path(m, leaves).iter().map(hex::encode).collect();
            let leaf_hash = hex::encode(leaf(&leaves[m]));
            cases.push(json!({"index": m, "size": n, "leaf": leaf_hash, "path": proof, "root": root, "valid": true}));
            if n > 1 {
                cases.push(json!({"index": (m + 1) % n, "size": n, "leaf": leaf_hash, "path": proof, "root": root, "valid": false}));
                let mut bent = proof.clone();
                let last = bent.len() - 1;
                let flipped = if bent[last].starts_with("00") {
                    "01"
                } else {
                    "00"
                };
                bent[last].replace_range(0..2, flipped);
                cases.push(json!({"index": m, "size": n, "leaf": leaf_hash, "path": bent, "root": root, "valid": false}));
            }
            // A proof does not name its tree's size (the signed digest does): only the root
            // it leads to can be wrong.
            if n > 1 {
                let smaller = hex::encode(mth(&leaves[..n - 1]));
                cases.push(json!({"index": m, "size": n, "leaf": leaf_hash, "path": proof, "root": smaller, "valid": false}));
            }
        }
    }

    let app = spawn_app(backend).await;
    let browser = Browser::start(800, 600).await;
    browser.goto(&app.url("/console")).await;
    browser
        .wait_for("the console", "document.querySelector('#api-key')")
        .await;
    let verdicts = browser
        .eval(&format!(
            "import('/console/verify.js').then(async v => {{
               const out = [];
               for (const c of {cases}) {{
                 out.push(await v.verifyInclusion(c.index, c.size, v.hexToBytes(c.leaf),
                   c.path.map(v.hexToBytes), v.hexToBytes(c.root)));
               }}
               return out;
             }})",
            cases = Value::from(cases.clone())
        ))
        .await;
    let expected: Vec<Value> = cases.iter().map(|c| c["valid"].clone()).collect();
    assert_eq!(verdicts, Value::from(expected));
    // The browser's leaf and node hashes are RFC 6962's.
    let root8 = browser
        .eval(&format!(
            "import('/console/verify.js').then(async v => {{
               const leaves = await Promise.all({data}.map(h => v.leafHash(v.hexToBytes(h))));
               let level = leaves;
               while (level.length > 1) {{
                 const next = [];
                 for (let i = 0; i < level.length; i += 2) next.push(await v.nodeHash(level[i], level[i + 1]));
                 level = next;
               }}
               return v.bytesToHex(level[0]);
             }})",
            data = json!(data.iter().map(hex::encode).collect::<Vec<_>>())
        ))
        .await;
    assert_eq!(root8, roots[7]);

    // RFC 8032 section 7.1, tests 1 and 2, with WebCrypto's Ed25519; then altered.
    let signatures = browser
        .eval(
            "import('/console/verify.js').then(async v => [
               await v.verifyEd25519('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a', '',
                 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b'),
               await v.verifyEd25519('3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c', 'r',
                 '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00'),
               await v.verifyEd25519('3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c', 's',
                 '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00'),
               await v.verifyEd25519('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a', '',
                 'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100c'),
             ])",
        )
        .await;
    assert_eq!(signatures, json!([true, true, false, false]));

    // The whole digest check over a tree built here: a digest signed (by a key the test makes
    // with WebCrypto, standing in for the server's), proofs from `path`, and what each kind of
    // forgery or gap makes of it.
    let hashes: Vec<Vec<u8>> = (0u8..5).map(|i| Sha256::digest([i, 42]).to_vec()).collect();
    let proofs: Vec<Value> = (0..5)
        .map(|m| json!({"leaf_index": m, "tree_size": 5, "audit_path": path(m, &hashes).iter().map(hex::encode).collect::<Vec<_>>()}))
        .collect();
    let events: Vec<Value> = (0..5)
        .map(|m| {
            json!({"sequence": m + 1, "type": "TaskCreated", "global_position": m + 1,
                        "event_id": format!("e{m}"), "hash": hex::encode(&hashes[m]),
                        "actor": {"account_id": "acct_1"}})
        })
        .collect();
    let tree = json!({"root": hex::encode(mth(&hashes)), "proofs": proofs, "events": events});
    let outcomes = browser
        .eval(&format!(
            "import('/console/verify.js').then(async v => {{
               const t = {tree};
               const pair = await crypto.subtle.generateKey({{name: 'Ed25519'}}, true, ['sign', 'verify']);
               const pub = v.bytesToHex(new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey)));
               const sign = async (m) => v.bytesToHex(new Uint8Array(await crypto.subtle.sign({{name: 'Ed25519'}}, pair.privateKey, new TextEncoder().encode(m))));
               const digestOf = async (fields) => {{
                 const d = {{account_id: 'acct_1', tree_size: 5, root_hash: t.root, last_global_position: 5,
                            signed_at: '2026-11-28T00:00:00Z', key_id: 'sk_1', algorithm: 'ed25519', ...fields}};
                 d.signed_message = JSON.stringify({{account_id: d.account_id, tree_size: d.tree_size, root_hash: d.root_hash, signed_at: d.signed_at}});
                 d.signature = await sign(d.signed_message);
                 return d;
               }};
               const keys = {{keys: [{{key_id: 'sk_1', algorithm: 'ed25519', public_key: pub}}]}};
               const run = async (d, ks, events, proofs) =>
                 (await v.checkDigest(d, ks, events, proofs)).map(c => [c.name, c.ok, !!c.partial, c.detail]);
               const good = await digestOf({{}});
               const out = {{}};
               out.good = await run(good, keys, t.events, t.proofs);
               out.forged = await run({{...good, signature: (await digestOf({{signed_at: 'x'}})).signature}}, keys, t.events, t.proofs);
               out.unknown_key = await run({{...good, key_id: 'sk_2'}}, keys, t.events, t.proofs);
               out.other_root = await run({{...good, root_hash: '00'.repeat(32)}}, keys, t.events, t.proofs);
               const bent = t.proofs.map(p => ({{...p, audit_path: [...p.audit_path]}}));
               bent[3].audit_path[0] = '11'.repeat(32);
               out.bent_proof = await run(good, keys, t.events, bent);
               out.newer = await run(good, keys, t.events, [...t.proofs.slice(0, 4), null]);
               out.other_account = await run(await digestOf({{account_id: 'acct_2'}}), keys, t.events, t.proofs);
               return out;
             }})"
        ))
        .await;
    let verdict = |case: &str| -> Vec<(bool, bool)> {
        outcomes[case]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[1].as_bool().unwrap(), c[2].as_bool().unwrap()))
            .collect()
    };
    let detail = |case: &str, i: usize| outcomes[case][i][3].as_str().unwrap().to_string();
    // [inclusion, signature] as (ok, partial).
    assert_eq!(
        verdict("good"),
        [(true, false), (true, false)],
        "{outcomes}"
    );
    assert_eq!(
        verdict("forged"),
        [(true, false), (false, false)],
        "{outcomes}"
    );
    assert!(
        detail("forged", 1).contains("does not verify"),
        "{outcomes}"
    );
    assert_eq!(
        verdict("unknown_key"),
        [(true, false), (false, false)],
        "{outcomes}"
    );
    assert!(detail("unknown_key", 1).contains("sk_2"), "{outcomes}");
    // A root that is not the one signed fails the signature, and no proof leads to it.
    assert_eq!(
        verdict("other_root"),
        [(false, false), (false, false)],
        "{outcomes}"
    );
    assert_eq!(
        verdict("bent_proof"),
        [(false, false), (true, false)],
        "{outcomes}"
    );
    assert!(
        detail("bent_proof", 0).starts_with("event 4 "),
        "{outcomes}"
    );
    assert_eq!(
        verdict("newer"),
        [(false, true), (true, false)],
        "{outcomes}"
    );
    assert!(
        detail("newer", 0).contains("1 newer than the digest"),
        "{outcomes}"
    );
    assert_eq!(
        verdict("other_account"),
        [(true, false), (false, false)],
        "{outcomes}"
    );

    // The canonical payload text, rebuilt from JSON text by the browser, is the Rust one.
    let metadata = awkward_metadata();
    // As a JavaScript string literal: the JSON text of the JSON text.
    let served = Value::String(serde_json::to_string(&json!({"payload": metadata})).unwrap());
    let rebuilt = browser
        .eval(&format!(
            "import('/console/verify.js').then(v => v.canonical(v.member(v.parseRaw({served}), 'payload')))"
        ))
        .await;
    assert_eq!(rebuilt, json!(canonical_json(&metadata)));
    browser.assert_stayed_within(&app.address);
}
