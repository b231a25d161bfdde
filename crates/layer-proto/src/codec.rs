//! Blocking frames: a `u32` big-endian length, then that many bytes of postcard.
//!
//! Both ends are blocking (the layer inside an app's thread, `mirrordctl` on a blocking thread or through its
//! own async adapter), so the codec works on any `Read`/`Write`. A length over [`MAX_FRAME`] is refused on
//! both sides before anything is allocated for it.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use crate::MAX_FRAME;

/// Writes `msg` as one frame, in a single `write_all` (so a frame is never interleaved with another writer's
/// on a stream socket).
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame. End of stream before a frame starts is `UnexpectedEof`; an oversized length or a body
/// that is not a `T` is `InvalidData`.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use super::*;
    use crate::{DnsFailure, Family, Reply, Request};

    #[test]
    fn round_trip_every_message() {
        let requests = [
            Request::Hello {
                version: 1,
                pid: 42,
            },
            Request::Resolve {
                node: "db.internal".into(),
                family: Family::V6,
            },
            Request::Connect {
                remote: "[fd00::1]:5432".parse().unwrap(),
                host: Some("db".into()),
            },
            Request::Connect {
                remote: "10.0.0.1:80".parse().unwrap(),
                host: None,
            },
        ];
        let replies = [
            Reply::Welcome,
            Reply::Refused {
                message: "version 2 not served".into(),
            },
            Reply::Resolved {
                addrs: vec![
                    IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                    "fd00::2".parse().unwrap(),
                ],
                canonical: Some("db.ns.svc.cluster.local".into()),
            },
            Reply::DnsFailed(DnsFailure::NoData),
            Reply::Connected {
                relay: "127.0.0.1:40000".parse().unwrap(),
                local: "10.1.0.7:51234".parse().unwrap(),
            },
            Reply::ConnectFailed { errno: 111 },
        ];
        let mut wire = Vec::new();
        for r in &requests {
            write_frame(&mut wire, r).unwrap();
        }
        for r in &replies {
            write_frame(&mut wire, r).unwrap();
        }
        let mut cur = Cursor::new(wire);
        for r in &requests {
            assert_eq!(&read_frame::<_, Request>(&mut cur).unwrap(), r);
        }
        for r in &replies {
            assert_eq!(&read_frame::<_, Reply>(&mut cur).unwrap(), r);
        }
        let end = read_frame::<_, Reply>(&mut cur).unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn frame_is_length_then_postcard() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Reply::Welcome).unwrap();
        let body = postcard::to_stdvec(&Reply::Welcome).unwrap();
        assert_eq!(&wire[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&wire[4..], &body[..]);
    }

    #[test]
    fn oversize_frame_refused_before_reading_it() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0; 16]);
        let err = read_frame::<_, Reply>(&mut Cursor::new(wire)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn oversize_message_not_written() {
        let huge = Request::Resolve {
            node: "a".repeat(MAX_FRAME + 1),
            family: Family::Any,
        };
        let mut wire = Vec::new();
        let err = write_frame(&mut wire, &huge).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(wire.is_empty());
    }

    #[test]
    fn garbage_body_is_invalid_data() {
        let mut wire = 3u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read_frame::<_, Reply>(&mut Cursor::new(wire)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_frame_is_eof() {
        let mut wire = Vec::new();
        write_frame(
            &mut wire,
            &Request::Connect {
                remote: SocketAddr::from(([1, 2, 3, 4], 5)),
                host: None,
            },
        )
        .unwrap();
        wire.pop();
        let err = read_frame::<_, Request>(&mut Cursor::new(wire)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
