//! Each value type parses the good values and refuses the bad ones with a message that
//! reads after the field's name.

use serde_json::json;

use super::*;
use crate::domain::TaskType;

fn long(bytes: usize) -> String {
    "x".repeat(bytes)
}

#[test]
fn identifiers_take_any_text_up_to_the_limit_without_nul() {
    assert_eq!(Identifier::parse("kittens").unwrap().as_str(), "kittens");
    assert!(
        Identifier::parse("").is_ok(),
        "an empty project is allowed, as before"
    );
    assert!(Identifier::parse(long(MAX_IDENTIFIER_BYTES)).is_ok());
    let e = Identifier::parse(long(MAX_IDENTIFIER_BYTES + 1)).unwrap_err();
    assert!(e.0.contains(&MAX_IDENTIFIER_BYTES.to_string()), "{e}");
    assert!(Identifier::parse("a\0b").unwrap_err().0.contains("U+0000"));
}

#[test]
fn a_unique_id_is_not_blank_within_the_limit_and_without_nul() {
    assert_eq!(UniqueId::parse("order-42").unwrap().as_str(), "order-42");
    for bad in ["", "   ", "a\0"] {
        assert!(UniqueId::parse(bad).is_err(), "{bad:?}");
    }
    assert!(UniqueId::parse(long(MAX_IDENTIFIER_BYTES)).is_ok());
    assert!(UniqueId::parse(long(8 * 1024)).is_err());
    // The limit counts bytes, not characters.
    let accents = "é".repeat(MAX_IDENTIFIER_BYTES / 2 + 1);
    assert!(UniqueId::parse(accents).is_err());
}

#[test]
fn tags_are_deduplicated_in_order_and_each_is_checked() {
    let tags = Tags::parse(["b", "a", "b", "c", "a"]).unwrap();
    assert_eq!(tags.into_strings(), ["b", "a", "c"]);
    assert!(Tags::parse([""]).unwrap_err().0.contains("non-empty"));
    assert!(Tags::parse(["ok", "\0"]).is_err());
    let e = Tags::parse([long(MAX_IDENTIFIER_BYTES + 1)]).unwrap_err();
    assert!(e.0.contains("bytes"), "{e}");
}

#[test]
fn more_tags_than_the_limit_are_refused_without_reading_them_all() {
    let at_limit: Vec<String> = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
    assert_eq!(Tags::parse(at_limit).unwrap().len(), MAX_TAGS);
    let over: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
    assert!(Tags::parse(over)
        .unwrap_err()
        .0
        .contains(&MAX_TAGS.to_string()));
    // 150 000 tags: the error comes from the first one past the limit.
    let huge = Value::Array((0..150_000).map(|i| json!(format!("t{i}"))).collect());
    let e = serde_json::from_value::<Tags>(huge).unwrap_err();
    assert!(e.to_string().contains(&MAX_TAGS.to_string()), "{e}");
}

#[test]
fn tags_deserialize_from_an_array_or_a_single_string_and_refuse_other_shapes() {
    let one: Tags = serde_json::from_value(json!("solo")).unwrap();
    assert_eq!(one.into_strings(), ["solo"]);
    let many: Tags = serde_json::from_value(json!(["a", "b", "a"])).unwrap();
    assert_eq!(many.into_strings(), ["a", "b"]);
    for bad in [json!({"tags": ["x"]}), json!(["ok", 3]), json!(7)] {
        assert!(
            serde_json::from_value::<Tags>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    let e = serde_json::from_value::<Tags>(json!({"a": 1})).unwrap_err();
    assert!(e.to_string().contains("array"), "{e}");
}

#[test]
fn text_is_bounded_and_free_of_nul() {
    assert!(Text::parse(long(MAX_TEXT_BYTES)).is_ok());
    assert!(Text::parse(long(MAX_TEXT_BYTES + 1)).is_err());
    assert!(Text::parse("line\0").is_err());
}

#[test]
fn a_callback_url_is_http_or_https_with_a_host_and_no_nul_and_keeps_its_text() {
    let url = CallbackUrl::parse("https://example.com").unwrap();
    assert_eq!(url.as_str(), "https://example.com", "kept as given");
    assert!(CallbackUrl::parse("http://example.com:8080/cb?x=1").is_ok());
    for bad in [
        "ftp://example.com/cb",
        "not a url",
        "http://",
        "http://example.com/%00",
        "http://example.com/a%00b",
        "http://exa\0mple.com/",
        "mailto:someone@example.com",
    ] {
        assert!(CallbackUrl::parse(bad).is_err(), "{bad:?}");
    }
    let over = format!("https://example.com/{}", long(MAX_URL_BYTES));
    let e = CallbackUrl::parse(over).unwrap_err();
    assert!(
        e.0.len() < 300,
        "the message does not echo the whole value: {e}"
    );
}

/// `depth` nested arrays around a scalar.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

#[test]
fn json_values_are_bounded_in_depth_and_size_and_free_of_nul() {
    assert!(Json::parse(nested(MAX_JSON_DEPTH)).is_ok());
    let e = Json::parse(nested(MAX_JSON_DEPTH + 1)).unwrap_err();
    assert!(e.0.contains(&MAX_JSON_DEPTH.to_string()), "{e}");
    assert!(Json::parse(nested(127)).is_err());
    assert!(Json::parse(json!({"k": "a\u{0}"})).is_err());
    assert!(Json::parse(json!({"a\u{0}": 1})).is_err());
    assert!(Json::parse(json!(long(MAX_JSON_BYTES))).is_err());
    assert!(Json::parse(json!(long(MAX_JSON_BYTES - 2))).is_ok());
    assert!(Json::parse(json!("plain")).is_ok());
}

#[test]
fn metadata_is_an_object_of_at_most_ten_kib() {
    assert_eq!(Metadata::default().value(), &json!({}));
    assert!(Metadata::parse(json!({"a": 1})).is_ok());
    for bad in [json!([1, 2]), json!("text"), json!(null)] {
        assert!(
            Metadata::parse(bad.clone())
                .unwrap_err()
                .0
                .contains("object"),
            "{bad}"
        );
    }
    let big = json!({ "k": long(MAX_METADATA_BYTES) });
    let e = Metadata::parse(big).unwrap_err();
    assert!(e.0.contains(&MAX_METADATA_BYTES.to_string()), "{e}");
    let mut deep = json!({});
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    assert!(Metadata::parse(deep).unwrap_err().0.contains("nested"));
}

#[test]
fn params_name_the_field_over_a_limit() {
    let ok = json!({"attachment": "a", "geometries": {"box": {}}});
    assert!(Params::parse(ok.as_object().unwrap().clone()).is_ok());
    let deep = json!({"attachment": "a", "extra": nested(127)});
    let (field, e) = Params::parse(deep.as_object().unwrap().clone()).unwrap_err();
    assert_eq!(field, "extra");
    assert!(e.0.contains("nested"), "{e}");
    let big = json!({"a": long(MAX_JSON_BYTES / 2), "b": long(MAX_JSON_BYTES / 2)});
    let (field, _) = Params::parse(big.as_object().unwrap().clone()).unwrap_err();
    assert_eq!(field, "params");
}

#[test]
fn task_types_parse_from_their_names_only() {
    for t in TaskType::ALL {
        assert_eq!(TaskType::parse(t.as_str()).unwrap(), t);
        assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
    }
    for bad in ["painting", "Categorization", "", "categorization\0"] {
        let e = TaskType::parse(bad).unwrap_err();
        assert!(e.0.contains("task type"), "{e}");
    }
}

#[test]
fn audit_results_are_accepted_fixed_or_rejected() {
    for (name, result) in [
        ("accepted", AuditResult::Accepted),
        ("fixed", AuditResult::Fixed),
        ("rejected", AuditResult::Rejected),
    ] {
        assert_eq!(
            serde_json::from_value::<AuditResult>(json!(name)).unwrap(),
            result
        );
        assert_eq!(result.as_str(), name);
    }
    assert!(serde_json::from_value::<AuditResult>(json!("great")).is_err());
}
