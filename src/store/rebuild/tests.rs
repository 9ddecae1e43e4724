use super::fold::{fold_tasks, WholeTasks};
use crate::store::read::EventRow;

fn row(task_id: &str, sequence: i64) -> EventRow {
    EventRow {
        global_position: 0,
        event_id: String::new(),
        task_id: task_id.into(),
        account_id: "acme".into(),
        sequence,
        event_type: "TaskCreated".into(),
        event_version: 1,
        payload: "{}".into(),
        recorded_at_us: 0,
        actor_account_id: "acme".into(),
        actor_key_id: None,
        actor_scope: "customer".into(),
        request_id: None,
        prev_hash: String::new(),
        hash: String::new(),
        hash_version: 2,
    }
}

fn tasks_of(rows: &[EventRow]) -> Vec<(String, i64)> {
    rows.iter()
        .map(|r| (r.task_id.clone(), r.sequence))
        .collect()
}

#[test]
fn a_task_cut_by_a_page_end_is_held_until_it_is_whole() {
    let mut whole = WholeTasks::default();
    let first = whole.take(vec![row("a", 1), row("a", 2), row("b", 1)], false);
    assert_eq!(tasks_of(&first), vec![("a".into(), 1), ("a".into(), 2)]);
    // A page holding nothing but the held task's next events hands out nothing yet.
    assert!(whole.take(vec![row("b", 2), row("b", 3)], false).is_empty());
    let second = whole.take(vec![row("b", 4), row("c", 1)], false);
    assert_eq!(second.len(), 4);
    assert!(second.iter().all(|r| r.task_id == "b"));
    let last = whole.take(Vec::new(), true);
    assert_eq!(tasks_of(&last), vec![("c".into(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_on_every_core_hands_out_each_task_once_with_its_last_sequence() {
    let mut rows = Vec::new();
    for (task, events) in [("a", 3), ("b", 1), ("c", 700), ("d", 2), ("e", 1)] {
        rows.extend((1..=events).map(|s| row(task, s)));
    }
    let folded = fold_tasks(rows).await;
    let got: Vec<(String, i64)> = folded
        .iter()
        .map(|f| (f.task_id.clone(), f.version))
        .collect();
    let want: Vec<(String, i64)> = [("a", 3), ("b", 1), ("c", 700), ("d", 2), ("e", 1)]
        .iter()
        .map(|(t, v)| (t.to_string(), *v))
        .collect();
    assert_eq!(got, want);
}
