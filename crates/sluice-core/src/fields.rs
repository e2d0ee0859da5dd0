//! Length-prefixed strings in the keys and values of internal records
//! (committed offsets, AMQP definitions).
//! Layout: `[len:2][utf-8 bytes]`, big-endian; longer strings are cut at
//! 65,535 bytes (names are far shorter: topics 249, AMQP names 255).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    let len = s.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(s.as_bytes().get(..len).unwrap_or_default());
}

/// `None` when the bytes are short or not UTF-8.
pub(crate) fn get_str(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len {
        return None;
    }
    String::from_utf8(buf.split_to(len).to_vec()).ok()
}
