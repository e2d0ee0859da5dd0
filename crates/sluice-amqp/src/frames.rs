//! Framing: splitting the byte stream into frames and writing frames out.
//! Methods and content headers are decoded and encoded by `amq-protocol`;
//! body frames are passed through as byte slices, without a copy.
//!
//! Frame layout (AMQP 0-9-1 §4.2.3): `[type:1][channel:2][size:4][payload:size][0xCE]`.

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, parse_class};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::errors::{AmqpError, FRAME_ERROR, UNEXPECTED_FRAME};

pub(crate) const FRAME_METHOD: u8 = 1;
pub(crate) const FRAME_HEADER: u8 = 2;
pub(crate) const FRAME_BODY: u8 = 3;
pub(crate) const FRAME_HEARTBEAT: u8 = 8;
pub(crate) const FRAME_END: u8 = 0xCE;
/// Header and end octet around every payload.
pub(crate) const FRAME_OVERHEAD: usize = 8;

/// One decoded inbound frame.
#[derive(Debug)]
pub(crate) enum Frame {
    Method(u16, Box<AMQPClass>),
    Header(u16, Box<AMQPContentHeader>),
    Body(u16, Bytes),
    Heartbeat,
}

/// Takes the next whole frame off the front of `buf`, if one is there.
///
/// # Errors
/// FRAME_ERROR for an unknown type, a frame over `frame_max`, a missing
/// frame-end octet or an undecodable method or header.
pub(crate) fn parse(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, AmqpError> {
    let Some(header) = buf.get(..7) else {
        return Ok(None);
    };
    let kind = header[0];
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if size.saturating_add(FRAME_OVERHEAD) > frame_max {
        return Err(AmqpError::connection(
            FRAME_ERROR,
            format!(
                "frame size {} exceeds frame_max {frame_max}",
                size + FRAME_OVERHEAD
            ),
        ));
    }
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::connection(
            FRAME_ERROR,
            format!("unknown frame type {kind}"),
        ));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    if buf.get(7 + size) != Some(&FRAME_END) {
        return Err(AmqpError::connection(
            FRAME_ERROR,
            "frame end octet missing",
        ));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let frame = match kind {
        FRAME_METHOD => {
            let (rest, class) = parse_class(&payload[..])
                .map_err(|_| AmqpError::connection(FRAME_ERROR, "cannot decode method frame"))?;
            if !rest.is_empty() {
                return Err(AmqpError::connection(
                    FRAME_ERROR,
                    "trailing bytes in method frame",
                ));
            }
            Frame::Method(channel, Box::new(class))
        }
        FRAME_HEADER => {
            let (rest, header) = parse_content_header(&payload[..]).map_err(|_| {
                AmqpError::connection(FRAME_ERROR, "cannot decode content header frame")
            })?;
            if !rest.is_empty() {
                return Err(AmqpError::connection(
                    FRAME_ERROR,
                    "trailing bytes in content header",
                ));
            }
            Frame::Header(channel, Box::new(header))
        }
        FRAME_BODY => Frame::Body(channel, payload),
        _ => {
            if channel != 0 {
                return Err(AmqpError::connection(
                    UNEXPECTED_FRAME,
                    format!("heartbeat frame on channel {channel}"),
                ));
            }
            Frame::Heartbeat
        }
    };
    Ok(Some(frame))
}

/// Whether the buffer starts with a `basic.publish` method frame (class
/// 60, method 40), judged from its first eleven bytes.
pub(crate) fn starts_with_publish(buf: &[u8]) -> bool {
    buf.first() == Some(&FRAME_METHOD) && buf.get(7..11) == Some(&[0, 60, 0, 40][..])
}

/// Appends a method frame.
pub(crate) fn put_method(out: &mut BytesMut, channel: u16, method: AMQPClass) {
    put_frame(out, &AMQPFrame::Method(channel, method));
}

fn put_frame(out: &mut BytesMut, frame: &AMQPFrame) {
    match gen_frame(frame)(WriteContext::from(Vec::with_capacity(64))) {
        Ok(context) => out.extend_from_slice(&context.write),
        // Generation fails only on values the codec cannot hold, which
        // outbound frames never contain (they come from parsed input).
        Err(error) => tracing::error!(%error, "cannot encode an outbound frame"),
    }
}

/// Appends a content header and the body frames of a message. The header
/// is framed here around the codec's property encoding, so that a delivery
/// costs no copy of the properties (and their headers table).
/// Header payload layout: `[class:2=60][weight:2=0][body_size:8][properties]`.
pub(crate) fn put_content(
    out: &mut BytesMut,
    channel: u16,
    properties: &BasicProperties,
    body: &Bytes,
    frame_max: usize,
) {
    let encoded = match sluice_core::messaging::encode_properties(properties) {
        Ok(encoded) => encoded,
        // Properties come from a parsed frame or a decoded record, which
        // the codec can always encode again.
        Err(error) => {
            tracing::error!(%error, "cannot encode message properties; sending none");
            Vec::new()
        }
    };
    let header_size = 12 + if encoded.is_empty() { 2 } else { encoded.len() };
    out.reserve(header_size + FRAME_OVERHEAD);
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32(header_size as u32);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    if encoded.is_empty() {
        out.put_u16(0); // property flags: none present
    } else {
        out.put_slice(&encoded);
    }
    out.put_u8(FRAME_END);
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    for part in body.chunks(chunk) {
        out.reserve(part.len() + FRAME_OVERHEAD);
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Appends a heartbeat frame.
pub(crate) fn put_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    fn encoded_publish() -> BytesMut {
        let mut out = BytesMut::new();
        put_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "ex".into(),
                routing_key: "rk".into(),
                mandatory: true,
                immediate: false,
            })),
        );
        put_content(
            &mut out,
            1,
            &BasicProperties::default().with_delivery_mode(2),
            &Bytes::from_static(b"0123456789"),
            12,
        );
        out
    }

    #[test]
    fn frames_round_trip_and_bodies_split_at_frame_max() {
        let mut buf = encoded_publish();
        let mut kinds = Vec::new();
        while let Some(frame) = parse(&mut buf, 1 << 20).expect("valid") {
            kinds.push(match frame {
                Frame::Method(1, _) => "method",
                Frame::Header(1, header) => {
                    assert_eq!(header.body_size, 10);
                    assert_eq!(header.class_id, 60);
                    assert_eq!(
                        header.properties,
                        BasicProperties::default().with_delivery_mode(2)
                    );
                    "header"
                }
                Frame::Body(1, body) => {
                    assert!(body.len() <= 4);
                    "body"
                }
                _ => "other",
            });
        }
        assert_eq!(kinds, ["method", "header", "body", "body", "body"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn publish_frames_are_recognised_from_their_start() {
        let whole = encoded_publish();
        assert!(starts_with_publish(&whole));
        assert!(!starts_with_publish(&whole[..10]), "too short to tell");
        let mut other = BytesMut::new();
        put_method(
            &mut other,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
        );
        assert!(!starts_with_publish(&other));
    }

    #[test]
    fn every_truncation_waits_and_never_panics() {
        let whole = encoded_publish();
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            // Parse what is complete; the rest must wait, not fail.
            loop {
                match parse(&mut buf, 1 << 20) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(error) => panic!("cut {cut}: {error:?}"),
                }
            }
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_frame_errors() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        assert_eq!(parse(&mut buf, 131_072).expect_err("too big").code, 501);
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(parse(&mut buf, 131_072).expect_err("bad type").code, 501);
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0x00][..]);
        assert_eq!(parse(&mut buf, 131_072).expect_err("no end").code, 501);
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0, 0, 2, 0xff, 0xff, 0xCE][..]);
        assert_eq!(parse(&mut buf, 131_072).expect_err("bad method").code, 501);
    }
}
