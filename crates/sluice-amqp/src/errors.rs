//! AMQP reply codes and the choice between closing a channel and closing the
//! connection, in one place. Core errors map here; texts follow RabbitMQ's
//! `CODE_NAME - detail` form so clients print what RabbitMQ users expect.

use sluice_core::messaging::MessagingError;

/// Whether an error closes a channel (soft) or the connection (hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Channel,
    Connection,
}

pub(crate) const CONNECTION_FORCED: u16 = 320;
pub(crate) const ACCESS_REFUSED: u16 = 403;
pub(crate) const NOT_FOUND: u16 = 404;
pub(crate) const PRECONDITION_FAILED: u16 = 406;
pub(crate) const RESOURCE_LOCKED: u16 = 405;
pub(crate) const FRAME_ERROR: u16 = 501;
pub(crate) const SYNTAX_ERROR: u16 = 502;
pub(crate) const COMMAND_INVALID: u16 = 503;
pub(crate) const CHANNEL_ERROR: u16 = 504;
pub(crate) const UNEXPECTED_FRAME: u16 = 505;
pub(crate) const NOT_ALLOWED: u16 = 530;
pub(crate) const NOT_IMPLEMENTED: u16 = 540;
pub(crate) const INTERNAL_ERROR: u16 = 541;
pub(crate) const NO_ROUTE: u16 = 312;

fn code_name(code: u16) -> &'static str {
    match code {
        CONNECTION_FORCED => "CONNECTION_FORCED",
        NO_ROUTE => "NO_ROUTE",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// An error to report with `channel.close` or `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AmqpError {
    pub(crate) code: u16,
    pub(crate) text: String,
    pub(crate) scope: Scope,
    /// The method that failed (0, 0 when none).
    pub(crate) class_id: u16,
    pub(crate) method_id: u16,
}

impl AmqpError {
    pub(crate) fn channel(code: u16, detail: impl AsRef<str>) -> AmqpError {
        AmqpError::new(code, detail, Scope::Channel)
    }

    pub(crate) fn connection(code: u16, detail: impl AsRef<str>) -> AmqpError {
        AmqpError::new(code, detail, Scope::Connection)
    }

    fn new(code: u16, detail: impl AsRef<str>, scope: Scope) -> AmqpError {
        AmqpError {
            code,
            text: format!("{} - {}", code_name(code), detail.as_ref()),
            scope,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Names the method that caused the error, when not already named.
    pub(crate) fn during(mut self, class_id: u16, method_id: u16) -> AmqpError {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// The reply text cut to a short string's 255 bytes.
    pub(crate) fn reply_text(&self) -> String {
        let mut end = self.text.len().min(255);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        self.text.get(..end).unwrap_or_default().to_owned()
    }
}

impl From<MessagingError> for AmqpError {
    fn from(error: MessagingError) -> AmqpError {
        let text = error.to_string();
        match error {
            MessagingError::NotFound(_) => AmqpError::channel(NOT_FOUND, text),
            MessagingError::PreconditionFailed(_) => AmqpError::channel(PRECONDITION_FAILED, text),
            MessagingError::ResourceLocked(_) => AmqpError::channel(RESOURCE_LOCKED, text),
            MessagingError::AccessRefused(_) => AmqpError::channel(ACCESS_REFUSED, text),
            MessagingError::NotAllowed(_) => AmqpError::connection(NOT_ALLOWED, text),
            MessagingError::CommandInvalid(_) => AmqpError::connection(COMMAND_INVALID, text),
            MessagingError::NotImplemented(_) => AmqpError::connection(NOT_IMPLEMENTED, text),
            MessagingError::Core(_) => AmqpError::connection(INTERNAL_ERROR, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_pick_scope_and_code() {
        let error = AmqpError::from(MessagingError::NotFound("no queue 'q' in vhost '/'".into()));
        assert_eq!(error.code, 404);
        assert_eq!(error.scope, Scope::Channel);
        assert_eq!(error.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        let error = AmqpError::from(MessagingError::CommandInvalid(
            "unknown exchange type 'x'".into(),
        ));
        assert_eq!((error.code, error.scope), (503, Scope::Connection));
    }

    #[test]
    fn reply_text_fits_a_short_string() {
        let error = AmqpError::channel(NOT_FOUND, "é".repeat(300));
        assert!(error.reply_text().len() <= 255);
    }
}
