use serde_json::json;

use super::*;
use crate::domain::Tags;

#[test]
fn every_documented_time_format_parses_to_utc() {
    let cases = [
        ("2021-04-25", "2021-04-25T00:00:00+00:00"),
        ("2021-04-25T03:14:15-07:00", "2021-04-25T10:14:15+00:00"),
        ("2021-04-25T03:14:15Z", "2021-04-25T03:14:15+00:00"),
        ("2021-04-25 03:14:15", "2021-04-25T03:14:15+00:00"),
        (
            "2021-04-25 03:14:15.123456",
            "2021-04-25T03:14:15.123456+00:00",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(parse_time(input).unwrap().to_rfc3339(), expected, "{input}");
    }
}

#[test]
fn malformed_times_booleans_and_limits_are_400s_naming_the_parameter() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Q {
        start_time: Option<Time>,
        limited_response: Option<Flag>,
        limit: Option<Limit<100>>,
    }
    for (name, bad) in [
        ("start_time", "yesterday"),
        ("start_time", "2021-13-01"),
        ("start_time", "2021-04-25 25:00:00"),
        ("start_time", ""),
        ("limited_response", "yes"),
        ("limit", "0"),
        ("limit", "101"),
    ] {
        let e = from_value::<Q>("query", json!({ name: bad })).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with(name), "{}", e.message);
    }
    let q: Q = from_value("query", json!({"limited_response": "TRUE", "limit": "7"})).unwrap();
    assert_eq!(q.limited_response, Some(Flag(true)));
    assert_eq!(q.limit, Some(Limit(7)));
}

#[test]
fn a_form_body_becomes_an_object_with_repeated_keys_as_arrays() {
    let v = form_object(b"callback_url=http%3A%2F%2Fx&categories=a&categories=b");
    assert_eq!(
        v,
        json!({"callback_url": "http://x", "categories": ["a", "b"]})
    );
}

fn deep_object(key: &str, depth: usize) -> String {
    format!(
        "{{\"a\": \"[[[[ not counted\", \"{key}\": {}1{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn nesting_past_the_limit_is_found_before_parsing_and_names_the_top_level_key() {
    assert_eq!(check_depth(deep_object("meta", 10).as_bytes(), 11), Ok(()));
    assert_eq!(
        check_depth(deep_object("meta", 11).as_bytes(), 11),
        Err(Some("meta".to_string()))
    );
    assert_eq!(
        check_depth(deep_object("we\\\"ird", 200).as_bytes(), 11),
        Err(Some("we\"ird".to_string()))
    );
    let array = format!("{}{}", "[".repeat(50), "]".repeat(50));
    assert_eq!(check_depth(array.as_bytes(), 11), Err(None));
}

#[derive(Debug, Default, serde::Deserialize)]
struct Probe {
    project: Option<crate::domain::Identifier>,
    tags: Option<Tags>,
}

impl LenientBody for Probe {
    const ROOT: &'static str = "body";
}

#[test]
fn the_lenient_body_reads_json_forms_and_nothing_and_names_the_field_it_refuses() {
    for empty in [&b""[..], b" null "] {
        let probe = parse_body::<Probe>(empty, false).unwrap();
        assert!(probe.project.is_none() && probe.tags.is_none());
    }
    let form = parse_body::<Probe>(b"project=p&tags=a&tags=b", true).unwrap();
    assert_eq!(form.project.unwrap().as_str(), "p");
    assert_eq!(form.tags.unwrap().into_strings(), ["a", "b"]);
    let e = parse_body::<Probe>(br#"{"project": "a\u0000"}"#, false).unwrap_err();
    assert!(e.message.starts_with("project "), "{}", e.message);
    let e = parse_body::<Probe>(br#"{"tags": ["ok", 3]}"#, false).unwrap_err();
    assert!(e.message.starts_with("tags"), "{}", e.message);
    let e = parse_body::<Probe>(deep_object("project", 200).as_bytes(), false).unwrap_err();
    assert!(e.message.starts_with("project is nested"), "{}", e.message);
    let e = parse_body::<Probe>(b"{\"project\": ", false).unwrap_err();
    assert!(e.message.contains("not valid JSON"), "{}", e.message);
    let e = parse_body::<Tags>(b"[\"ok\", \"\"]", false).unwrap_err();
    assert!(e.message.starts_with("tags"), "{}", e.message);
}

#[test]
fn an_error_never_echoes_a_huge_value_whole() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Q {
        n: Option<u64>,
    }
    let e = from_value::<Q>("body", json!({ "n": "x".repeat(100_000) })).unwrap_err();
    assert!(e.message.starts_with("n: "), "{}", e.message);
    assert!(e.message.len() < 1024, "{} bytes", e.message.len());
}
