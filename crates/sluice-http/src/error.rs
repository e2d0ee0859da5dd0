//! The API's errors: one registry of stable codes (a retired code is never
//! reused), each with its HTTP status, and the JSON body clients get.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_core::CoreError;
use sluice_core::messaging::MessagingError;

/// The codes that leave the process. Never renumber; retire instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest = 1,
    InvalidField = 2,
    NotFound = 3,
    AlreadyExists = 4,
    Unauthorized = 5,
    Forbidden = 6,
    PreconditionFailed = 7,
    Storage = 8,
    MethodNotAllowed = 9,
    Blocked = 10,
}

impl ErrorCode {
    /// The code's name in error bodies.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::Storage => "storage",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Blocked => "blocked",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidField => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists | ErrorCode::PreconditionFailed => StatusCode::CONFLICT,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Storage => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Blocked => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error answer: a code, a message, and for validation the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<&'static str>,
}

/// What handlers return.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A field's value is invalid.
    pub fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: ErrorCode::InvalidField,
            message: message.into(),
            field: Some(field),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::PreconditionFailed, message)
    }

    /// Refuses a write the broker's admission check holds back while a
    /// resource alarm is raised; `Ok` when it may go ahead.
    pub(crate) fn admit(broker: &sluice_core::Broker) -> ApiResult<()> {
        match broker.admission().check(sluice_core::Writer::Admin) {
            sluice_core::Verdict::Refuse(alarm) | sluice_core::Verdict::Wait(alarm) => {
                Err(ApiError::new(
                    ErrorCode::Blocked,
                    format!(
                        "the broker is {}: writes are refused until the alarm clears",
                        alarm.reason()
                    ),
                ))
            }
            sluice_core::Verdict::Admit => Ok(()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({
            "code": self.code as u16,
            "name": self.code.name(),
            "message": self.message,
        });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        (self.code.status(), axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> ApiError {
        let message = error.to_string();
        match error {
            CoreError::UnknownTopic { .. } | CoreError::UnknownPartition { .. } => {
                ApiError::not_found(message)
            }
            CoreError::TopicExists { .. } | CoreError::UserExists { .. } => {
                ApiError::new(ErrorCode::AlreadyExists, message)
            }
            CoreError::UnknownUser { .. } => ApiError::not_found(message),
            CoreError::InvalidTopicName { .. } => ApiError::field("name", message),
            CoreError::InvalidPartitions { .. } => ApiError::field("partitions", message),
            CoreError::InvalidConfig { .. } => ApiError::field("configs", message),
            CoreError::InvalidReplicaAssignment { .. } => ApiError::field("replicas", message),
            CoreError::NoReassignmentInProgress { .. } => ApiError::precondition(message),
            CoreError::TopicLimit { .. }
            | CoreError::NotLeader { .. }
            | CoreError::FencedFollower { .. }
            | CoreError::NotEnoughReplicas { .. }
            | CoreError::NotCoordinator { .. }
            | CoreError::Quorum { .. } => ApiError::precondition(message),
            CoreError::Log(sluice_core::storage::LogError::InvalidBatch { .. })
            | CoreError::InvalidTimestamp { .. }
            | CoreError::UndecodableBatch { .. }
            | CoreError::InvalidRecord { .. } => ApiError::bad_request(message),
            other => {
                tracing::warn!(error = %other, "admin API request failed in storage");
                ApiError::new(ErrorCode::Storage, other.to_string())
            }
        }
    }
}

impl From<MessagingError> for ApiError {
    fn from(error: MessagingError) -> ApiError {
        match error {
            MessagingError::NotFound(text) => ApiError::not_found(text),
            MessagingError::PreconditionFailed(text) => ApiError::precondition(text),
            MessagingError::ResourceLocked(text) | MessagingError::AccessRefused(text) => {
                ApiError::new(ErrorCode::Forbidden, text)
            }
            MessagingError::NotAllowed(text)
            | MessagingError::CommandInvalid(text)
            | MessagingError::NotImplemented(text) => ApiError::bad_request(text),
            MessagingError::Core(core) => core.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let codes = [
            (ErrorCode::BadRequest, 1, "bad_request", 400),
            (ErrorCode::InvalidField, 2, "invalid_field", 400),
            (ErrorCode::NotFound, 3, "not_found", 404),
            (ErrorCode::AlreadyExists, 4, "already_exists", 409),
            (ErrorCode::Unauthorized, 5, "unauthorized", 401),
            (ErrorCode::Forbidden, 6, "forbidden", 403),
            (ErrorCode::PreconditionFailed, 7, "precondition_failed", 409),
            (ErrorCode::Storage, 8, "storage", 500),
            (ErrorCode::MethodNotAllowed, 9, "method_not_allowed", 405),
            (ErrorCode::Blocked, 10, "blocked", 503),
        ];
        for (code, number, name, status) in codes {
            assert_eq!(code as u16, number);
            assert_eq!(code.name(), name);
            assert_eq!(code.status().as_u16(), status);
        }
    }

    #[test]
    fn core_errors_name_the_field_they_concern() {
        let error: ApiError = CoreError::InvalidPartitions {
            topic: "t".into(),
            reason: "0".into(),
        }
        .into();
        assert_eq!(error.field, Some("partitions"));
        assert_eq!(error.code, ErrorCode::InvalidField);
    }
}
