//! Small helpers for reporting errors the same way in every front-end.

use std::error::Error;
use std::fmt;
use std::io;

/// An error and its causes on one line (`socket error: connection reset`),
/// for the one log line that ends a connection or a task.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(inner) = cause {
            write!(f, ": {inner}")?;
            cause = inner.source();
        }
        Ok(())
    }
}

/// Whether an I/O error only says that the peer went away (end of stream,
/// reset, abort, broken pipe): a client that disconnected, nothing for an
/// operator to act on.
pub fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("socket error")]
    struct Outer(#[source] io::Error);

    #[test]
    fn chain_prints_every_cause_and_disconnects_are_told_apart() {
        let reset = Outer(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset by peer",
        ));
        assert_eq!(
            ErrorChain(&reset).to_string(),
            "socket error: reset by peer"
        );
        assert!(is_disconnect(&reset.0));
        assert!(!is_disconnect(&io::Error::other("disk on fire")));
    }
}
