//! The callback delivery queue in the store: which delivery a dispatcher is offered, and whose
//! outcome is recorded. Run against PostgreSQL and SQLite alike.

use taskledger::store::{Delivery, DeliveryState, Store};

use crate::helpers::{a_moment_between, on_both_backends, Backend, TestLedger};

/// A pending delivery of `account`, due now.
async fn schedule(store: &Store, account: &str, id: &str) {
    let delivery = Delivery {
        delivery_id: id.to_string(),
        account_id: account.to_string(),
        task_id: format!("task-{id}"),
        for_sequence: 1,
        url: "http://192.0.2.1/hook".to_string(),
        body: "{}".to_string(),
        attempts: 0,
        created_at_us: 0,
        lease_until_us: None,
    };
    store.schedule_delivery(&delivery).await.unwrap();
}

fn ids(due: &[taskledger::store::DueDelivery]) -> Vec<(&str, &str)> {
    let mut ids: Vec<_> = due
        .iter()
        .map(|d| (d.account_id.as_str(), d.delivery_id.as_str()))
        .collect();
    ids.sort();
    ids
}

async fn each_account_with_due_work_is_offered_its_oldest_delivery_once(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let busy = t.store.ensure_account("busy").await.unwrap();
    let quiet = t.store.ensure_account("quiet").await.unwrap();
    schedule(&t.store, &busy, "busy-000").await;
    a_moment_between().await;
    for i in 1..300 {
        schedule(&t.store, &busy, &format!("busy-{i:03}")).await;
    }
    schedule(&t.store, &quiet, "quiet-000").await;

    let due = t.store.due_deliveries(&[], 64).await.unwrap();
    assert_eq!(
        ids(&due),
        vec![(busy.as_str(), "busy-000"), (quiet.as_str(), "quiet-000")],
        "one delivery per account, however deep its backlog"
    );

    let due = t
        .store
        .due_deliveries(std::slice::from_ref(&busy), 64)
        .await
        .unwrap();
    assert_eq!(
        ids(&due),
        vec![(quiet.as_str(), "quiet-000")],
        "an account at its cap is left out"
    );
}

async fn a_claimed_delivery_is_not_offered_again_and_the_next_one_of_its_account_is(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    let acct = t.store.ensure_account("one").await.unwrap();
    schedule(&t.store, &acct, "a-1").await;
    schedule(&t.store, &acct, "a-2").await;
    let first = t.store.due_deliveries(&[], 64).await.unwrap();
    let claimed = t
        .store
        .claim_delivery(&first[0].delivery_id, 60_000_000)
        .await
        .unwrap()
        .expect("a due delivery can be claimed");
    assert!(
        claimed.lease_until_us.is_some(),
        "a claim carries its lease"
    );
    let next = t.store.due_deliveries(&[], 64).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].delivery_id, claimed.delivery_id);
}

async fn an_outcome_is_recorded_only_by_the_holder_of_the_current_lease(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let acct = t.store.ensure_account("fenced").await.unwrap();
    schedule(&t.store, &acct, "f-1").await;
    // A lease of 0 µs runs out at once, so a second dispatcher can take the delivery over.
    let stale = t.store.claim_delivery("f-1", 0).await.unwrap().unwrap();
    a_moment_between().await;
    let current = t
        .store
        .claim_delivery("f-1", 60_000_000)
        .await
        .unwrap()
        .expect("a delivery whose lease ran out can be taken over");
    assert_ne!(stale.lease_until_us, current.lease_until_us);

    let recorded = t
        .store
        .delivery_done(
            "f-1",
            stale.lease_until_us.unwrap(),
            DeliveryState::Failed,
            1,
            Some("timed out"),
        )
        .await
        .unwrap();
    assert!(!recorded, "the lapsed holder's outcome is refused");
    let recorded = t
        .store
        .delivery_retry("f-1", stale.lease_until_us.unwrap(), 1, 0, "timed out")
        .await
        .unwrap();
    assert!(!recorded, "so is its retry");

    let recorded = t
        .store
        .delivery_done(
            "f-1",
            current.lease_until_us.unwrap(),
            DeliveryState::Delivered,
            1,
            None,
        )
        .await
        .unwrap();
    assert!(recorded, "the current holder's outcome is recorded");
    assert!(
        t.store.due_deliveries(&[], 64).await.unwrap().is_empty(),
        "a delivered callback is never offered again"
    );
}

on_both_backends!(
    each_account_with_due_work_is_offered_its_oldest_delivery_once,
    a_claimed_delivery_is_not_offered_again_and_the_next_one_of_its_account_is,
    an_outcome_is_recorded_only_by_the_holder_of_the_current_lease,
);
