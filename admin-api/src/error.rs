//! The one place where the API's failures become responses: a status code and a JSON
//! body `{"ok": false, "reason": "...", "message": "..."}`. `reason` is stable for
//! scripts; `message` is for people.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use health::failover::Refusal;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    ok: bool,
    reason: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason,
            message: message.into(),
        }
    }

    pub fn unknown_node(name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("no node is named {name:?}"),
        )
    }

    pub fn unavailable(what: &str) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is not running in this process"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            ok: false,
            reason: self.reason,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A refusal from the failover controller: an unknown node is 404, a request that the
/// cluster's state does not allow (lagging, busy, not eligible) is 409.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r {
            Refusal::UnknownNode(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, r.reason(), r.to_string())
    }
}

/// A body that is not the JSON an action takes: 400 (415 without the content type).
impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "bad_request", r.body_text())
    }
}

/// Paths that do not exist answer in the same shape as every other error.
pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {}; see docs/admin-api.md", uri.path()),
    )
}

pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
