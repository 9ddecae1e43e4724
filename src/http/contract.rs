//! Promises of the API contract that more than one layer must keep.

/// The routes the contract keeps free of 409 (the reference SDK cannot parse one there): an
/// Idempotency-Key reused for a different request is a 400 on them. `path` may be a template
/// (`/v1/task/{id}/tags`) or a request's path; `method` any case. The idempotency layer and
/// the OpenAPI document both ask this one function.
pub fn never_answers_409(method: &str, path: &str) -> bool {
    path.ends_with("/tags")
        || path.ends_with("/cancel")
        || (method.eq_ignore_ascii_case("delete") && path.ends_with("/unique_id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_cancel_and_clearing_the_unique_id_never_answer_409_and_the_rest_may() {
        for (method, path) in [
            ("put", "/v1/task/{id}/tags"),
            ("POST", "/v1/task/0123456789abcdef01234567/tags"),
            ("DELETE", "/v1/task/{id}/tags"),
            ("post", "/v1/task/{id}/cancel"),
            ("DELETE", "/v1/task/0123456789abcdef01234567/unique_id"),
        ] {
            assert!(never_answers_409(method, path), "{method} {path}");
        }
        for (method, path) in [
            ("post", "/v1/task/{id}"),
            ("POST", "/v1/task/0123456789abcdef01234567/unique_id"),
            ("post", "/v1/task/{id}/complete"),
        ] {
            assert!(!never_answers_409(method, path), "{method} {path}");
        }
    }
}
