//! A message's header fields as one byte block.
//!
//! A stolen request's head crosses the operator, the wire and `mirrordctl`; carried as a
//! list of owned names and values it cost two allocations per field on each side. The block
//! is one buffer: per field a big-endian `u16` name length, the name, a `u32` value length,
//! the value. Length-prefixed rather than `name: value` lines, so any value a peer sends
//! survives exactly; checked when decoded, so a block that exists is well formed.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Header fields in their order, names as received (hyper gives them lowercase).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderBlock(Bytes);

/// Builds a [`HeaderBlock`] field by field.
pub struct HeaderBlockBuf(BytesMut);

const NAME_LEN: usize = 2;
const VALUE_LEN: usize = 4;

impl HeaderBlockBuf {
    /// `bytes`: the names' and values' total length (an estimate is fine).
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self(BytesMut::with_capacity(
            bytes + fields * (NAME_LEN + VALUE_LEN),
        ))
    }

    /// Appends one field. A name longer than 65,535 bytes is not a header name (`http`
    /// refuses those too) and is dropped.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let (Ok(n), Ok(v)) = (u16::try_from(name.len()), u32::try_from(value.len())) else {
            return;
        };
        self.0.put_u16(n);
        self.0.put_slice(name);
        self.0.put_u32(v);
        self.0.put_slice(value);
    }

    pub fn finish(self) -> HeaderBlock {
        HeaderBlock(self.0.freeze())
    }
}

impl HeaderBlock {
    /// Every field of `map`, in its order.
    pub fn from_map(map: &HeaderMap) -> Self {
        let bytes = map.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        let mut b = HeaderBlockBuf::with_capacity(map.len(), bytes);
        for (k, v) in map {
            b.push(k.as_str().as_bytes(), v.as_bytes());
        }
        b.finish()
    }

    /// For tests and small literal heads.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut b = HeaderBlockBuf::with_capacity(0, 0);
        for (k, v) in pairs {
            b.push(k.as_bytes(), v);
        }
        b.finish()
    }

    /// The fields, as (name, value), in order.
    pub fn fields(&self) -> Fields<'_> {
        Fields { rest: &self.0 }
    }

    /// The values of the fields named `name` (ASCII case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Appends the fields `keep` accepts to `dst`, sharing this block's memory for the
    /// values. Fields that are not valid HTTP (a peer may send anything) are skipped.
    pub fn append_to(&self, dst: &mut HeaderMap, mut keep: impl FnMut(&HeaderName) -> bool) {
        dst.reserve(self.fields().count());
        for (name, value) in self.fields() {
            // `from_bytes` lowercases the name itself (a well-known name allocates nothing).
            let Ok(name) = HeaderName::from_bytes(name) else {
                continue;
            };
            if !keep(&name) {
                continue;
            }
            if let Ok(value) = HeaderValue::from_maybe_shared(self.0.slice_ref(value)) {
                dst.append(name, value);
            }
        }
    }

    /// The encoded block's length in bytes.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn check(bytes: &[u8]) -> Result<(), &'static str> {
        let mut rest = bytes;
        while !rest.is_empty() {
            rest = split_field(rest)
                .ok_or("a header block ends inside a field")?
                .2;
        }
        Ok(())
    }
}

/// One field off the front: (name, value, rest), or `None` if `b` is cut short.
fn split_field(b: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (n, b) = b.split_first_chunk::<NAME_LEN>()?;
    let (name, b) = b.split_at_checked(usize::from(u16::from_be_bytes(*n)))?;
    let (v, b) = b.split_first_chunk::<VALUE_LEN>()?;
    let len = usize::try_from(u32::from_be_bytes(*v)).ok()?;
    let (value, rest) = b.split_at_checked(len)?;
    Some((name, value, rest))
}

pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // Blocks are checked when built or decoded; a cut one just ends here.
        let (name, value, rest) = split_field(self.rest)?;
        self.rest = rest;
        Some((name, value))
    }
}

impl fmt::Debug for HeaderBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

impl Serialize for HeaderBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for HeaderBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Bytes::deserialize(d)?;
        Self::check(&bytes).map_err(serde::de::Error::custom)?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_back_in_order_whatever_their_bytes() {
        let block = HeaderBlock::from_pairs([
            ("host", &b"a"[..]),
            ("x-bin", &[0, 255, b'\n', b':'][..]),
            ("empty", &b""[..]),
            ("host", &b"b"[..]),
        ]);
        let fields: Vec<_> = block.fields().collect();
        assert_eq!(
            fields,
            [
                (&b"host"[..], &b"a"[..]),
                (b"x-bin", &[0, 255, b'\n', b':']),
                (b"empty", b""),
                (b"host", b"b"),
            ]
        );
        assert_eq!(block.values("HOST").collect::<Vec<_>>(), [b"a", b"b"]);
        let back: HeaderBlock =
            postcard::from_bytes(&postcard::to_allocvec(&block).unwrap()).unwrap();
        assert_eq!(back, block);
    }

    #[test]
    fn a_header_map_round_trips_sharing_the_block() {
        let mut map = HeaderMap::new();
        map.append("content-type", HeaderValue::from_static("text/plain"));
        map.append("x-user", HeaderValue::from_static("alice"));
        map.append("x-user", HeaderValue::from_static("bob"));
        let block = HeaderBlock::from_map(&map);
        let mut back = HeaderMap::new();
        block.append_to(&mut back, |n| n != "content-type");
        assert_eq!(back.len(), 2);
        assert_eq!(
            back.get_all("x-user").iter().collect::<Vec<_>>(),
            ["alice", "bob"]
        );
    }

    #[test]
    fn fields_that_are_not_http_are_skipped() {
        let block = HeaderBlock::from_pairs([
            ("bad name", &b"v"[..]),
            ("ok", &b"line\r\nbreak"[..]),
            ("Fine", &b"yes"[..]),
        ]);
        let mut map = HeaderMap::new();
        block.append_to(&mut map, |_| true);
        assert_eq!(map.len(), 1);
        assert_eq!(map["fine"], "yes");
    }

    #[test]
    fn a_cut_block_is_refused_when_decoded() {
        let block = HeaderBlock::from_pairs([("x-user", &b"alice"[..])]);
        for cut in 1..block.encoded_len() {
            let wire = postcard::to_allocvec(&Bytes::copy_from_slice(&block.0[..cut])).unwrap();
            let err = postcard::from_bytes::<HeaderBlock>(&wire).unwrap_err();
            assert!(
                matches!(err, postcard::Error::SerdeDeCustom),
                "{cut}: {err}"
            );
        }
    }
}
