//! Framing: a big-endian u32 length followed by that many bytes of postcard.
//!
//! Hand-written rather than `LengthDelimitedCodec` so that an oversized or malformed frame
//! is a typed error the operator can answer precisely before closing the connection.

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Largest frame either side accepts. HTTP bodies handed to a developer travel in one
/// frame, so this also bounds a stolen request's body.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The bytes `item` takes in a frame (without the length prefix), to decide what fits in
/// one before encoding it.
pub fn encoded_len<T: Serialize>(item: &T) -> usize {
    postcard::experimental::serialized_size(item).unwrap_or(usize::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The peer's unfinished frames, on this connection and its others, hold more than it
    /// is allowed to make the other side buffer.
    #[error("{0} bytes of unfinished frames are more than this peer may have buffered at once")]
    OverBudget(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Told how many bytes the read buffer holds after each decode (unfinished frames, as a
/// rule); `false` refuses them ([`FrameError::OverBudget`]).
pub type Charge = Box<dyn FnMut(usize) -> bool + Send>;

/// Encodes `Out` messages and decodes `In` messages.
pub struct FrameCodec<In, Out> {
    /// The largest frame decoded, and encoded.
    max_in: usize,
    max_out: usize,
    charge: Option<Charge>,
    _p: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::with_max(MAX_FRAME_LEN)
    }
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn with_max(max: usize) -> Self {
        Self {
            max_in: max,
            max_out: max,
            charge: None,
            _p: PhantomData,
        }
    }

    /// Changes the largest frame accepted and sent from now on (e.g. small until a peer
    /// has said who it is, so an unknown peer cannot make the server hold a large buffer).
    pub fn set_max(&mut self, max: usize) {
        self.max_in = max;
        self.max_out = max;
    }

    /// Changes the largest frame accepted from now on, leaving what may be sent.
    pub fn set_max_in(&mut self, max: usize) {
        self.max_in = max;
    }

    /// Reports what the read buffer holds after each decode to `charge` (a budget shared
    /// by the peer's connections, so that many of them cannot together hold more than it).
    pub fn set_charge(&mut self, charge: Charge) {
        self.charge = Some(charge);
    }

    fn charged(&mut self, buffered: usize) -> Result<(), FrameError> {
        match self.charge.as_mut().map(|charge| charge(buffered)) {
            Some(false) => Err(FrameError::OverBudget(buffered)),
            _ => Ok(()),
        }
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let frame = self.split_frame(src);
        // Whatever the outcome, what stays buffered is charged.
        self.charged(src.len())?;
        match frame? {
            Some(frame) => Ok(Some(postcard::from_bytes(&frame)?)),
            None => Ok(None),
        }
    }
}

impl<In, Out> FrameCodec<In, Out> {
    /// The next whole frame's bytes, if they are all there.
    fn split_frame(&self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_in {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_in,
            });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }
}

impl<In, Out> Drop for FrameCodec<In, Out> {
    fn drop(&mut self) {
        // Nothing is buffered any more.
        let _ = self.charged(0);
    }
}

impl<In, Out: Serialize> FrameCodec<In, Out> {
    /// Serializes straight into `dst` after its length prefix: no intermediate buffer
    /// (and no copy of a data frame's bytes) per frame.
    fn encode_ref(&self, item: &Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = postcard::experimental::serialized_size(item)?;
        if len > self.max_out {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_out,
            });
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        let start = dst.len();
        dst.resize(start + len, 0);
        if let Err(e) = postcard::to_slice(item, &mut dst[start..]) {
            dst.truncate(start - 4);
            return Err(e.into());
        }
        Ok(())
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_ref(&item, dst)
    }
}

/// Boxed messages: a queue of `Box<Out>` preallocates 8 bytes per slot rather than a whole
/// message's size (the operator keeps one such queue per idle session).
impl<In, Out: Serialize> Encoder<Box<Out>> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Box<Out>, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_ref(&item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMessage, ServerMessage};

    #[test]
    fn round_trips_and_rejects_bad_frames() {
        let mut enc: FrameCodec<ServerMessage, ClientMessage> = FrameCodec::default();
        let mut buf = BytesMut::new();
        enc.encode(ClientMessage::Pong { nonce: 7 }, &mut buf)
            .unwrap();
        let mut dec: FrameCodec<ClientMessage, ServerMessage> = FrameCodec::default();
        match dec.decode(&mut buf).unwrap() {
            Some(ClientMessage::Pong { nonce: 7 }) => {}
            other => panic!("unexpected {other:?}"),
        }

        let mut big = BytesMut::from(&(u32::MAX).to_be_bytes()[..]);
        assert!(matches!(
            dec.decode(&mut big),
            Err(FrameError::TooLarge { .. })
        ));

        let mut junk = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            dec.decode(&mut junk),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_charge_sees_what_stays_buffered_and_can_refuse_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let seen = Arc::new(AtomicUsize::new(usize::MAX));
        let s = Arc::clone(&seen);
        let mut dec: FrameCodec<ClientMessage, ServerMessage> = FrameCodec::default();
        dec.set_charge(Box::new(move |n| {
            s.store(n, Ordering::SeqCst);
            n <= 8
        }));
        let mut part = BytesMut::from(&[0, 0, 0, 200, 1, 2, 3][..]);
        assert!(dec.decode(&mut part).unwrap().is_none());
        assert_eq!(seen.load(Ordering::SeqCst), 7);
        part.extend_from_slice(&[4, 5]);
        assert!(matches!(
            dec.decode(&mut part),
            Err(FrameError::OverBudget(9))
        ));
        drop(dec);
        assert_eq!(seen.load(Ordering::SeqCst), 0, "given back when dropped");
    }

    #[test]
    fn waits_for_a_whole_frame() {
        let mut dec: FrameCodec<ClientMessage, ServerMessage> = FrameCodec::default();
        let mut part = BytesMut::from(&[0, 0, 0, 9, 1][..]);
        assert!(dec.decode(&mut part).unwrap().is_none());
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use crate::{ClientMessage, ServerMessage};
    use proptest::prelude::*;

    proptest! {
        // Whatever a client sends, the operator's decoder answers with a frame, a typed
        // error or "need more bytes": never a panic, never an allocation past the limit.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut dec: FrameCodec<ClientMessage, ServerMessage> = FrameCodec::with_max(1024);
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn data_frames_round_trip(conn in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut enc: FrameCodec<ServerMessage, ClientMessage> = FrameCodec::default();
            let mut buf = BytesMut::new();
            enc.encode(ClientMessage::ConnData { conn, data: data.clone().into() }, &mut buf).unwrap();
            let mut dec: FrameCodec<ClientMessage, ServerMessage> = FrameCodec::default();
            match dec.decode(&mut buf).unwrap() {
                Some(ClientMessage::ConnData { conn: c, data: d }) => {
                    prop_assert_eq!(c, conn);
                    prop_assert_eq!(&d[..], &data[..]);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
            prop_assert!(buf.is_empty());
        }
    }
}
