//! Errors as JSON (SPEC §10): `{"status":"error","error":"…","details":[…]}` with the status
//! that says what the client can do about it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub details: Vec<String>,
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Always "error".
    pub status: &'static str,
    pub error: String,
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            details: Vec::new(),
        }
    }
    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid token is needed: Authorization: Bearer <token>",
        )
    }
    pub fn forbidden(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, error)
    }
    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, error)
    }
    pub fn invalid(error: impl Into<String>, details: Vec<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: error.into(),
            details,
        }
    }
    /// Our side failed: the client may try again; the cause is logged, not shown.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "http: {what}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}; try again later"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status: "error",
            error: self.error,
            details: self.details,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body that failed to parse is a 400 naming the field (or a 413), never axum's
/// plain-text answer; a body without `Content-Type: application/json` is a 400 saying so.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.body_text())
    }
}

/// The error answers any operation may give (SPEC §10), added to each operation of `doc` that
/// does not list them itself: a bad request, a missing or wrong token, a token of the wrong
/// kind or a refusal, something not found, a body too large.
pub fn document_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
    let common = [
        ("400", "bad request"),
        ("401", "no valid token"),
        (
            "403",
            "refused: a token of the wrong kind or tenant, a quota, a banned source",
        ),
        ("404", "not found"),
        ("413", "too large"),
    ];
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            for (code, what) in common {
                op.responses.responses.entry(code.to_owned()).or_insert_with(|| {
                    let body = ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                        .build();
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(what)
                            .content("application/json", body)
                            .build(),
                    )
                });
            }
        }
    }
}
