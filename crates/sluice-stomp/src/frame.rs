//! STOMP frames (1.0, 1.1 and 1.2): reading them from a byte buffer and
//! writing them. No maintained Rust crate parses STOMP as a streaming
//! server-side decoder with limits, so this file does, after the
//! specification's grammar:
//!
//! ```text
//! frame   = command EOL *( header EOL ) EOL *OCTET NULL *( EOL )
//! EOL     = [CR] LF
//! header  = name ":" value      (1.1+: \r \n \c \\ escaped, but in CONNECT/CONNECTED)
//! ```
//!
//! A `content-length` header gives the body's length (it may then hold
//! NULs); otherwise the body ends at the first NUL. EOLs between frames are
//! heart-beats.

use bytes::{Buf, Bytes, BytesMut};

/// A STOMP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    V10,
    V11,
    V12,
}

impl Version {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::V10 => "1.0",
            Version::V11 => "1.1",
            Version::V12 => "1.2",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Version> {
        match text.trim() {
            "1.0" => Some(Version::V10),
            "1.1" => Some(Version::V11),
            "1.2" => Some(Version::V12),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) command: String,
    /// In the order sent; the first of a repeated header counts.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

impl Frame {
    pub(crate) fn new(command: &str) -> Frame {
        Frame {
            command: command.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Frame {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The first value of header `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Appends the frame to `out` as `version` writes it. `content-length`
    /// goes first (the first of a repeated header counts); a header holding
    /// NUL, or in 1.0 (which has no escapes) a line break or a `:` in its
    /// name, is left out, so no value can forge another header.
    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) {
        out.extend_from_slice(self.command.as_bytes());
        out.extend_from_slice(b"\n");
        if !self.body.is_empty() {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        let escape = version >= Version::V11 && self.command != "CONNECTED";
        for (name, value) in &self.headers {
            if name == "content-length" || name.contains('\0') || value.contains('\0') {
                continue;
            }
            if !escape && (name.contains([':', '\n', '\r']) || value.contains(['\n', '\r'])) {
                continue;
            }
            put_escaped(out, name, escape, version);
            out.extend_from_slice(b":");
            put_escaped(out, value, escape, version);
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(b"\n");
        out.extend_from_slice(&self.body);
        out.extend_from_slice(b"\0");
    }
}

fn put_escaped(out: &mut BytesMut, text: &str, escape: bool, version: Version) {
    if !escape {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            ':' => out.extend_from_slice(b"\\c"),
            '\r' if version == Version::V12 => out.extend_from_slice(b"\\r"),
            other => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(other.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("the frame's headers pass {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the frame's body passes {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("a header line without ':'")]
    NoColon,
    #[error("an undefined escape sequence in a header")]
    BadEscape,
    #[error("the command or a header is not UTF-8")]
    NotUtf8,
    #[error("a content-length that is not a number")]
    BadContentLength,
    #[error("the body is not followed by NUL")]
    NoNull,
    #[error("an empty command")]
    EmptyCommand,
}

/// Limits of what a client may send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) headers: usize,
    pub(crate) body: usize,
}

/// How far the bytes of an incomplete frame were searched, so that each
/// byte is scanned once however the frame arrives (a trickled 16 MiB body
/// must not be rescanned at every read).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scan {
    /// Bytes searched for the blank line that ends the headers.
    headers: usize,
    /// Bytes searched for the NUL that ends a body without content-length.
    body: usize,
}

/// Reads the next frame from `buffer`, consuming it; `None` until a whole
/// frame is there. EOLs before it (heart-beats) are consumed too and
/// counted in `heartbeats`.
///
/// # Errors
/// A frame the grammar or `limits` refuse.
pub(crate) fn decode(
    buffer: &mut BytesMut,
    version: Version,
    limits: Limits,
    heartbeats: &mut u64,
) -> Result<Option<Frame>, FrameError> {
    decode_from(buffer, version, limits, heartbeats, &mut Scan::default())
}

/// As [`decode`], remembering in `scan` what was searched already.
///
/// # Errors
/// As [`decode`].
pub(crate) fn decode_from(
    buffer: &mut BytesMut,
    version: Version,
    limits: Limits,
    heartbeats: &mut u64,
    scan: &mut Scan,
) -> Result<Option<Frame>, FrameError> {
    let decoded = decode_scanning(buffer, version, limits, heartbeats, scan);
    if !matches!(decoded, Ok(None)) {
        *scan = Scan::default();
    }
    decoded
}

fn decode_scanning(
    buffer: &mut BytesMut,
    version: Version,
    limits: Limits,
    heartbeats: &mut u64,
    scan: &mut Scan,
) -> Result<Option<Frame>, FrameError> {
    while let Some(&first) = buffer.first() {
        match first {
            b'\n' => {
                buffer.advance(1);
                *heartbeats += 1;
            }
            b'\r' if buffer.get(1) == Some(&b'\n') => {
                buffer.advance(2);
                *heartbeats += 1;
            }
            b'\r' if buffer.len() < 2 => return Ok(None),
            _ => break,
        }
    }
    if buffer.is_empty() {
        return Ok(None);
    }
    // Nothing is parsed until the blank line that ends the headers is
    // there; the search goes on from where the last one stopped.
    let from = scan.headers.saturating_sub(3);
    let found_blank = buffer.get(from..).is_some_and(|rest| {
        rest.windows(2).any(|w| w == b"\n\n") || rest.windows(3).any(|w| w == b"\n\r\n")
    });
    if !found_blank {
        scan.headers = buffer.len();
        if buffer.len() > limits.headers {
            return Err(FrameError::HeadersTooLarge {
                limit: limits.headers,
            });
        }
        return Ok(None);
    }
    // The end of the headers: the first empty line.
    let mut lines = Vec::new();
    let mut start = 0;
    let header_end = loop {
        let Some(offset) = buffer
            .get(start..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
        else {
            if buffer.len() > limits.headers {
                return Err(FrameError::HeadersTooLarge {
                    limit: limits.headers,
                });
            }
            return Ok(None);
        };
        let end = start + offset;
        let line_end = if end > start && buffer.get(end - 1) == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        if end + 1 > limits.headers {
            return Err(FrameError::HeadersTooLarge {
                limit: limits.headers,
            });
        }
        if line_end == start {
            break end + 1;
        }
        lines.push((start, line_end));
        start = end + 1;
    };
    let mut lines = lines.into_iter();
    let Some((command_start, command_end)) = lines.next() else {
        return Err(FrameError::EmptyCommand);
    };
    let command = text(buffer.get(command_start..command_end))?;
    if command.is_empty() {
        return Err(FrameError::EmptyCommand);
    }
    let unescape = version >= Version::V11 && command != "CONNECT" && command != "STOMP";
    let mut headers = Vec::new();
    for (line_start, line_end) in lines {
        let line = buffer.get(line_start..line_end).unwrap_or_default();
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or(FrameError::NoColon)?;
        let name = text(line.get(..colon))?;
        let value = text(line.get(colon + 1..))?;
        let (name, value) = if unescape {
            (unescaped(&name, version)?, unescaped(&value, version)?)
        } else {
            (name, value)
        };
        headers.push((name, value));
    }
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .map_err(|_| FrameError::BadContentLength)?;
    let body_end = match length {
        Some(length) => {
            if length > limits.body {
                return Err(FrameError::BodyTooLarge { limit: limits.body });
            }
            let end = header_end + length;
            match buffer.get(end) {
                None => return Ok(None),
                Some(0) => end,
                Some(_) => return Err(FrameError::NoNull),
            }
        }
        None => {
            let from = scan.body.max(header_end);
            match buffer
                .get(from..)
                .and_then(|rest| rest.iter().position(|b| *b == 0))
            {
                Some(offset) => from + offset,
                None => {
                    scan.body = buffer.len();
                    if buffer.len() - header_end > limits.body {
                        return Err(FrameError::BodyTooLarge { limit: limits.body });
                    }
                    return Ok(None);
                }
            }
        }
    };
    if body_end - header_end > limits.body {
        return Err(FrameError::BodyTooLarge { limit: limits.body });
    }
    let mut frame_bytes = buffer.split_to(body_end + 1);
    frame_bytes.truncate(body_end);
    let body = frame_bytes.split_off(header_end);
    // A small body is copied: a slice would keep the whole read buffer
    // alive for as long as the message is queued.
    let body = if body.len() < 64 * 1024 {
        Bytes::copy_from_slice(&body)
    } else {
        body.freeze()
    };
    Ok(Some(Frame {
        command,
        headers,
        body,
    }))
}

fn text(bytes: Option<&[u8]>) -> Result<String, FrameError> {
    std::str::from_utf8(bytes.unwrap_or_default())
        .map(str::to_owned)
        .map_err(|_| FrameError::NotUtf8)
}

fn unescaped(text: &str, version: Version) -> Result<String, FrameError> {
    if !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if version == Version::V12 => out.push('\r'),
            _ => return Err(FrameError::BadEscape),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        headers: 1024,
        body: 4096,
    };

    fn one(bytes: &[u8], version: Version) -> Result<Option<Frame>, FrameError> {
        let mut buffer = BytesMut::from(bytes);
        decode(&mut buffer, version, LIMITS, &mut 0)
    }

    #[test]
    fn frames_decode_with_escapes_lengths_and_heartbeats() {
        let mut buffer = BytesMut::from(
            &b"\n\r\nSEND\r\ndestination:/queue/a\\cb\nreceipt:7\nreceipt:8\n\nhello\0\nSEND\ncontent-length:3\n\na\0b\0"[..],
        );
        let mut beats = 0;
        let first = decode(&mut buffer, Version::V12, LIMITS, &mut beats)
            .expect("valid")
            .expect("complete");
        assert_eq!(beats, 2);
        assert_eq!(first.command, "SEND");
        assert_eq!(first.get("destination"), Some("/queue/a:b"));
        assert_eq!(
            first.get("receipt"),
            Some("7"),
            "the first repeated header counts"
        );
        assert_eq!(&first.body[..], b"hello");
        let second = decode(&mut buffer, Version::V12, LIMITS, &mut beats)
            .expect("valid")
            .expect("complete");
        assert_eq!(&second.body[..], b"a\0b", "content-length allows NULs");
        assert!(buffer.is_empty() || buffer == b"\n"[..]);
    }

    #[test]
    fn a_trickled_frame_is_scanned_once_and_decodes() {
        let whole = b"SEND\r\ndestination:/queue/x\r\n\r\nbody bytes\0";
        let mut buffer = BytesMut::new();
        let mut scan = Scan::default();
        let mut got = None;
        for byte in whole {
            buffer.extend_from_slice(&[*byte]);
            if let Some(frame) =
                decode_from(&mut buffer, Version::V12, LIMITS, &mut 0, &mut scan).expect("valid")
            {
                got = Some(frame);
            }
        }
        let frame = got.expect("decoded once whole");
        assert_eq!(frame.get("destination"), Some("/queue/x"));
        assert_eq!(&frame.body[..], b"body bytes");
    }

    #[test]
    fn a_frame_cut_at_every_byte_waits_and_bad_ones_are_errors() {
        let whole = b"SEND\ndestination:/topic/x\ncontent-length:2\n\nhi\0";
        for cut in 0..whole.len() {
            assert_eq!(one(&whole[..cut], Version::V12), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            one(b"SEND\nnocolon\n\n\0", Version::V12),
            Err(FrameError::NoColon)
        );
        assert_eq!(
            one(b"SEND\na:\\x\n\n\0", Version::V12),
            Err(FrameError::BadEscape)
        );
        assert_eq!(
            one(b"SEND\na:\\r\n\n\0", Version::V11),
            Err(FrameError::BadEscape)
        );
        assert_eq!(
            one(b"SEND\ncontent-length:2\n\nabc\0", Version::V12),
            Err(FrameError::NoNull)
        );
        assert_eq!(
            one(b"SEND\ncontent-length:x\n\n\0", Version::V12),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            one(b"SEND\ncontent-length:99999\n\n", Version::V12),
            Err(FrameError::BodyTooLarge { limit: 4096 })
        );
        let long = [b"SEND\na:".as_slice(), &[b'x'; 2000]].concat();
        assert_eq!(
            one(&long, Version::V12),
            Err(FrameError::HeadersTooLarge { limit: 1024 })
        );
        assert_eq!(
            one(b"CONNECT\nlogin:a\\b\n\n\0", Version::V12)
                .expect("CONNECT headers are not unescaped")
                .and_then(|f| f.get("login").map(str::to_owned)),
            Some("a\\b".to_owned())
        );
    }

    #[test]
    fn encoding_escapes_and_adds_content_length() {
        let mut out = BytesMut::new();
        let mut frame = Frame::new("MESSAGE").header("destination", "/queue/a:b\nc");
        frame.body = Bytes::from_static(b"x\0y");
        frame.encode(Version::V12, &mut out);
        assert_eq!(
            &out[..],
            b"MESSAGE\ncontent-length:3\ndestination:/queue/a\\cb\\nc\n\nx\0y\0"
        );
        let mut old = BytesMut::new();
        Frame::new("MESSAGE")
            .header("destination", "/queue/a")
            .header("x", "a\ncontent-length:0")
            .header("y", "nul\0")
            .encode(Version::V10, &mut old);
        assert_eq!(
            &old[..],
            b"MESSAGE\ndestination:/queue/a\n\n\0",
            "1.0 cannot escape: such headers are left out"
        );
        let back = one(&out, Version::V12).expect("valid").expect("complete");
        assert_eq!(back.get("destination"), Some("/queue/a:b\nc"));
        assert_eq!(&back.body[..], b"x\0y");
    }
}
