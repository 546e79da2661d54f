//! API errors and request extraction: every failure is the JSON of SPEC section 5
//! (`{"code", "error"}`) with its status; bodies are parsed by hand so that malformed JSON
//! names the field (`INVALID_REQUEST`), never a 500, never a panic.
//!
//! Owns: the code -> status table, [`ApiError`], [`JsonBody`], [`PoolPath`].
//! Never: decides anything about pools.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pool_core::{ErrorCode, PoolId, Rejection};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::node::NodeError;

/// The largest request body accepted (SPEC section 11).
pub const BODY_MAX_BYTES: usize = 1024 * 1024;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// SPEC code.
    pub code: ErrorCode,
    /// For people: names the thing and what to do.
    pub message: String,
    /// Fields beside `code` and `error` (`rolled_back` of a failed reload).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// `Retry-After` in whole seconds: when the core said how long until asking again may
    /// succeed (`CIRCUIT_OPEN`, `POOL_UNREADY` in backoff).
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    error: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The status of a SPEC code: one arm per code, no fallback (a new code does not build
/// until it has its status).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::BinaryNotAllowed | ErrorCode::OriginNotAllowed => StatusCode::FORBIDDEN,
        ErrorCode::PoolNotFound | ErrorCode::LeaseNotFound => StatusCode::NOT_FOUND,
        ErrorCode::PoolBusy | ErrorCode::PoolDraining => StatusCode::CONFLICT,
        ErrorCode::ModelNotFound | ErrorCode::InvalidDeviceMask => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::SlotsExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::PoolUnready
        | ErrorCode::GpuRequired
        | ErrorCode::InsufficientVram
        | ErrorCode::CircuitOpen
        | ErrorCode::GpuQuarantined => StatusCode::SERVICE_UNAVAILABLE,
        // The journal cannot take writes (a full, read-only or failing disk): nothing was
        // recorded; the daemon retries by itself.
        ErrorCode::JournalUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        // Every API connection is busy (`api.max_connections`); answered by the HTTP layer.
        ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        // A seq before the earliest one retention keeps.
        ErrorCode::HistoryExpired => StatusCode::GONE,
        // `CPU_SPILLOVER`: the engine answered healthy but is not running on the GPUs of its
        // mask (OC-POOL-3012); it was stopped. `PORT_IN_USE`: the engine's port is held by
        // another process (the answer names its pid and command line).
        ErrorCode::SpawnFailed
        | ErrorCode::HealthTimeout
        | ErrorCode::EngineExited
        | ErrorCode::ReloadFailed
        | ErrorCode::CpuSpillover
        | ErrorCode::PortInUse => StatusCode::INTERNAL_SERVER_ERROR,
        // The journal failed; a shutdown (503) and a wait that gave up (504) set their own.
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// An error with the status of its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status_of(code),
            code,
            message: message.into(),
            extra: None,
            retry_after_s: None,
        }
    }

    /// `INVALID_REQUEST` (400).
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// With another status (413 for an oversized body, 404/405 for unknown routes).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> ApiError {
        let code = error.code();
        let status = match &error {
            NodeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NodeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => status_of(code),
        };
        let extra = match &error {
            NodeError::ReloadFailed { rolled_back, .. } => {
                let mut map = serde_json::Map::new();
                map.insert("rolled_back".into(), serde_json::Value::Bool(*rolled_back));
                Some(map)
            }
            _ => None,
        };
        let retry_after_s = match &error {
            NodeError::Rejected(rejection) => rejection.retry_after_ms().map(retry_after_seconds),
            _ => None,
        };
        ApiError {
            status,
            code,
            message: error.to_string(),
            extra,
            retry_after_s,
        }
    }
}

/// `Retry-After` of a wait of `ms`: whole seconds, rounded up, at least 1 (0 would invite an
/// immediate retry that the daemon is about to answer the same way).
pub fn retry_after_seconds(ms: u64) -> u64 {
    ms.div_ceil(1_000).max(1)
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError::from(NodeError::Rejected(rejection))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            error: &self.message,
            extra: self.extra.as_ref(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON body of type `T`, parsed with the failing field's path in the error.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::invalid(format!(
                        "request body larger than {BODY_MAX_BYTES} bytes; send a smaller body"
                    ))
                    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
                } else if let Some(timeout) = body_timeout(&rejection) {
                    ApiError::invalid(timeout.to_string()).with_status(StatusCode::REQUEST_TIMEOUT)
                } else {
                    ApiError::invalid(format!("cannot read the request body: {rejection}"))
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The [`super::BodyTimeout`] behind a body that could not be read, if that was why.
fn body_timeout<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e super::BodyTimeout> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(timeout) = error.downcast_ref::<super::BodyTimeout>() {
            return Some(timeout);
        }
        cause = error.source();
    }
    None
}

/// Parses `bytes` as `T`, naming the field that failed (`prepared.port: invalid type ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty; a JSON object is expected",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        if syntax || path == "." || path.is_empty() {
            ApiError::invalid(format!("malformed JSON body: {inner}"))
        } else {
            ApiError::invalid(format!("field '{path}': {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))?;
    Ok(value)
}

/// A validated pool id from the path's `{id}`.
pub struct PoolPath(pub PoolId);

impl<S: Send + Sync> FromRequestParts<S> for PoolPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
        let raw = params
            .iter()
            .find(|(name, _)| name == "id")
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| ApiError::invalid("the path has no pool id"))?;
        PoolId::new(raw)
            .map(PoolPath)
            .map_err(|e| ApiError::invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // fields are read by serde only
    struct Body {
        prepared: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    fn message(body: &str) -> String {
        parse_json::<Body>(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn start_failures_are_500() {
        for code in [
            ErrorCode::SpawnFailed,
            ErrorCode::HealthTimeout,
            ErrorCode::EngineExited,
            ErrorCode::ReloadFailed,
            ErrorCode::CpuSpillover,
            ErrorCode::PortInUse,
        ] {
            assert_eq!(status_of(code), StatusCode::INTERNAL_SERVER_ERROR, "{code}");
        }
        for failure in [
            pool_core::StartFailure::CpuSpillover,
            pool_core::StartFailure::PortInUse,
        ] {
            assert_eq!(status_of(failure.code()), StatusCode::INTERNAL_SERVER_ERROR);
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let cases = [
            (0, 1),
            (1, 1),
            (999, 1),
            (1_000, 1),
            (1_001, 2),
            (59_999, 60),
            (60_000, 60),
        ];
        for (ms, seconds) in cases {
            assert_eq!(retry_after_seconds(ms), seconds, "{ms} ms");
        }
        let open = ApiError::from(Rejection::CircuitOpen {
            pool_id: "p1".into(),
            retry_after_ms: 1_500,
        });
        let response = open.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let unready = |retry_after_ms| {
            ApiError::from(Rejection::PoolUnready {
                pool_id: "p1".into(),
                phase: "backoff".into(),
                retry_after_ms,
            })
            .into_response()
        };
        assert_eq!(unready(Some(0)).headers()[header::RETRY_AFTER], "1");
        assert!(unready(None).headers().get(header::RETRY_AFTER).is_none());
        let busy = ApiError::from(Rejection::PoolBusy {
            pool_id: "p1".into(),
            operation: "x".into(),
        });
        assert!(busy
            .into_response()
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
    }

    #[test]
    fn journal_codes_have_their_statuses() {
        assert_eq!(
            status_of(ErrorCode::JournalUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_of(ErrorCode::HistoryExpired), StatusCode::GONE);
        let expired = ApiError::from(NodeError::HistoryExpired {
            requested: 3,
            earliest: 100,
        });
        assert_eq!(expired.status, StatusCode::GONE);
        assert!(expired.message.contains("seq 100"), "{}", expired.message);
    }

    #[test]
    fn errors_name_the_field_or_say_malformed() {
        assert!(message(r#"{"prepared": {"port": "x"}}"#).starts_with("field 'prepared.port'"));
        assert!(message(r#"{"prepared": {}}"#).contains("missing field `port`"));
        assert!(message(r#"{"prepared": {"port": 1"#).starts_with("malformed JSON body"));
        assert!(message("{nope").starts_with("malformed JSON body"));
        assert!(message("  ").contains("empty"));
        assert!(message(r#"{"prepared": {"port": 1}} x"#).starts_with("malformed JSON body"));
    }
}
