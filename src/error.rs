//! One error type for every request path. It carries a user-facing message and maps to an
//! HTTP status and a stable `code`; internal causes are logged, never sent to clients.

use warp::http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    /// Login failure: one body for unknown users, wrong passwords and disabled accounts.
    #[error("invalid username or password")]
    BadCredentials,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    Conflict(String),
    /// The request (head and body) did not arrive within its deadline
    /// (`http.request_timeout`, `http.min_body_rate`).
    #[error("the request did not arrive in time")]
    RequestTimeout,
    #[error("request body too large (limit {limit} bytes)")]
    PayloadTooLarge { limit: u64 },
    #[error("too many failed attempts; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("{0}")]
    NotSupported(String),
    /// Temporarily over a limit; retry later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    BackendUnavailable(String),
    #[error("{0}")]
    BackendFailed(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::BadCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BackendFailed(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized | Self::BadCredentials => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::NotSupported(_) => "not_supported",
            Self::Busy(_) => "busy",
            Self::BackendUnavailable(_) => "backend_unavailable",
            Self::BackendFailed(_) => "backend_error",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl From<crate::db::DbError> for Error {
    fn from(e: crate::db::DbError) -> Self {
        use crate::db::DbError;
        match e {
            DbError::NotFound(what) => Self::NotFound(what),
            DbError::Conflict(what) => Self::Conflict(what),
            other => Self::Internal(Box::new(other)),
        }
    }
}

impl From<crate::machines::MachineError> for Error {
    fn from(e: crate::machines::MachineError) -> Self {
        use crate::backends::BackendError as B;
        use crate::machines::MachineError as M;
        match e {
            M::NotFound(u) => Self::NotFound(format!("no machine {u}")),
            M::TitleTaken(_) => Self::Conflict(e.to_string()),
            M::NoBackend(_) => Self::BadRequest(e.to_string()),
            M::Db(db) => db.into(),
            M::Backend(b) => match b {
                B::NotFound(m) => Self::NotFound(m),
                B::InvalidState(m) => Self::Conflict(m),
                B::InvalidArgument(m) => Self::BadRequest(m),
                B::Unsupported(_) => Self::NotSupported(b.to_string()),
                B::Unavailable { .. } => Self::BackendUnavailable(b.to_string()),
                B::Failed { .. } => Self::BackendFailed(b.to_string()),
            },
        }
    }
}
