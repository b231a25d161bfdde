//! `struct addrinfo` lists allocated exactly as glibc's `getaddrinfo` allocates them, so the app frees them with
//! glibc's own `freeaddrinfo` (`free(ai_canonname); free(node)`): each node is one `malloc` holding the node
//! and its sockaddr right after it, and the canonical name is a separate `malloc`'d string.
#![allow(unsafe_code)]

use std::mem::size_of;
use std::ptr;

use libc::{addrinfo, c_int, c_void, socklen_t};

use crate::dns::Answer;
use crate::sockaddr;

/// Builds the list for `answer`; `Err(EAI_MEMORY)` when `malloc` fails (nothing is leaked then).
pub fn build(answer: &Answer) -> Result<*mut addrinfo, c_int> {
    let mut head: *mut addrinfo = ptr::null_mut();
    for entry in answer.entries.iter().rev() {
        let (bytes, len) = sockaddr::encode(entry.addr);
        // SAFETY: plain malloc of a size that holds an addrinfo followed by the largest sockaddr we write.
        let node =
            unsafe { libc::malloc(size_of::<addrinfo>() + sockaddr::MAX) }.cast::<addrinfo>();
        if node.is_null() {
            free_list(head);
            return Err(libc::EAI_MEMORY);
        }
        // SAFETY: `node` is a fresh allocation of that size; malloc's alignment suits addrinfo, and the
        // sockaddr area right after it is 8-byte aligned (addrinfo's size is a multiple of 8).
        unsafe {
            let addr = node.cast::<u8>().add(size_of::<addrinfo>());
            ptr::copy_nonoverlapping(bytes.as_ptr(), addr, len);
            node.write(addrinfo {
                ai_flags: 0,
                ai_family: if entry.addr.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                },
                ai_socktype: entry.socktype,
                ai_protocol: entry.protocol,
                ai_addrlen: len as socklen_t,
                ai_addr: addr.cast(),
                ai_canonname: ptr::null_mut(),
                ai_next: head,
            });
        }
        head = node;
    }
    if let (Some(name), false) = (&answer.canonname, head.is_null()) {
        let bytes = name.as_bytes();
        // SAFETY: plain malloc for the name and its NUL.
        let s = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
        if s.is_null() {
            free_list(head);
            return Err(libc::EAI_MEMORY);
        }
        // SAFETY: `s` holds len + 1 bytes; `head` is the first node built above.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), s, bytes.len());
            *s.add(bytes.len()) = 0;
            (*head).ai_canonname = s.cast();
        }
    }
    Ok(head)
}

/// What glibc's `freeaddrinfo` does, for lists this module built and gave nobody.
fn free_list(mut p: *mut addrinfo) {
    while !p.is_null() {
        // SAFETY: every node and name in the list came from malloc in `build`.
        unsafe {
            let next = (*p).ai_next;
            libc::free((*p).ai_canonname.cast::<c_void>());
            libc::free(p.cast::<c_void>());
            p = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::dns::AddrEntry;

    fn entry(s: &str, socktype: c_int, protocol: c_int) -> AddrEntry {
        AddrEntry {
            addr: s.parse().unwrap(),
            socktype,
            protocol,
        }
    }

    /// Walks the list like an app would, then frees it with glibc's real `freeaddrinfo` (these unit tests are
    /// not linked with the exports, so `libc::freeaddrinfo` is glibc's).
    fn walk_and_free(
        head: *mut addrinfo,
    ) -> Vec<(c_int, c_int, c_int, std::net::SocketAddr, Option<String>)> {
        let mut out = Vec::new();
        let mut p = head;
        while !p.is_null() {
            // SAFETY: `p` is a node of a list built by `build`, alive until freed below.
            unsafe {
                let ai = &*p;
                let addr =
                    std::slice::from_raw_parts(ai.ai_addr.cast::<u8>(), ai.ai_addrlen as usize);
                let canon = (!ai.ai_canonname.is_null()).then(|| {
                    CStr::from_ptr(ai.ai_canonname)
                        .to_string_lossy()
                        .into_owned()
                });
                out.push((
                    ai.ai_family,
                    ai.ai_socktype,
                    ai.ai_protocol,
                    sockaddr::decode(addr).unwrap(),
                    canon,
                ));
                p = ai.ai_next;
            }
        }
        // SAFETY: the list was built by `build` exactly as glibc builds its own.
        unsafe { libc::freeaddrinfo(head) };
        out
    }

    #[test]
    fn glibc_frees_what_we_build() {
        for _ in 0..200 {
            let answer = Answer {
                entries: vec![
                    entry("10.1.2.3:80", libc::SOCK_STREAM, 6),
                    entry("10.1.2.3:80", libc::SOCK_DGRAM, 17),
                    entry("[fd00::7]:80", libc::SOCK_STREAM, 6),
                ],
                canonname: Some("db.ns.svc.cluster.local".into()),
            };
            let got = walk_and_free(build(&answer).unwrap());
            assert_eq!(got.len(), 3);
            assert_eq!(
                got[0],
                (
                    libc::AF_INET,
                    libc::SOCK_STREAM,
                    6,
                    "10.1.2.3:80".parse().unwrap(),
                    Some("db.ns.svc.cluster.local".into())
                )
            );
            assert_eq!(
                got[1].4, None,
                "the canonical name is on the first node only"
            );
            assert_eq!(
                (got[2].0, got[2].3),
                (libc::AF_INET6, "[fd00::7]:80".parse().unwrap())
            );
        }
    }

    #[test]
    fn without_canonical_name() {
        let answer = Answer {
            entries: vec![entry("[::ffff:10.0.0.1]:0", libc::SOCK_RAW, 0)],
            canonname: None,
        };
        let got = walk_and_free(build(&answer).unwrap());
        assert_eq!(
            got,
            vec![(
                libc::AF_INET6,
                libc::SOCK_RAW,
                0,
                "[::ffff:10.0.0.1]:0".parse().unwrap(),
                None
            )]
        );
    }
}
