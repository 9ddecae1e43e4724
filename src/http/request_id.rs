//! `x-request-id`: the client's id when it is usable, a fresh UUID v7 otherwise.
//!
//! The id ends up in the envelope of every event a request records and in the logs, so a
//! client-chosen value is only kept when it is short printable ASCII; anything else (too long,
//! spaces, control or non-ASCII bytes) is dropped here and then replaced by
//! `SetRequestIdLayer`, which only generates an id when the header is absent.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestId, RequestId};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const MAX_LEN: usize = 128;

/// Whether a client-sent id may be kept as it is.
pub fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// Leaves at most one `x-request-id` on the request, and only an acceptable one; runs before
/// `SetRequestIdLayer` so a refused id gets replaced rather than propagated.
pub async fn sanitize(mut request: Request) -> Request {
    let headers = request.headers_mut();
    if let Some(first) = headers.get(&X_REQUEST_ID).cloned() {
        headers.remove(&X_REQUEST_ID);
        if is_acceptable(&first) {
            headers.insert(X_REQUEST_ID, first);
        }
    }
    request
}

/// Time-ordered ids, so request ids sort like the events they caused.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7().to_string();
        Some(RequestId::new(
            HeaderValue::from_str(&id).expect("a UUID is a valid header value"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        let ok = |s: &str| is_acceptable(&HeaderValue::from_str(s).unwrap());
        assert!(ok("req-1"));
        assert!(ok(&"a".repeat(128)));
        assert!(!ok(&"a".repeat(129)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("tab\there"));
        assert!(!is_acceptable(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }

    #[tokio::test]
    async fn a_refused_id_is_removed_and_an_acceptable_one_stays_alone() {
        let request = |values: &[&str]| {
            let mut builder = Request::builder();
            for v in values {
                builder = builder.header(&X_REQUEST_ID, *v);
            }
            builder.body(axum::body::Body::empty()).unwrap()
        };
        let kept = sanitize(request(&["abc", "def"])).await;
        let all: Vec<_> = kept.headers().get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(all, vec!["abc"]);
        let dropped = sanitize(request(&["not ok"])).await;
        assert!(dropped.headers().get(&X_REQUEST_ID).is_none());
    }

    #[test]
    fn generated_ids_are_uuid_v7() {
        let id = MakeRequestUuidV7
            .make_request_id(&axum::http::Request::new(()))
            .unwrap();
        let id = uuid::Uuid::parse_str(id.header_value().to_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }
}
