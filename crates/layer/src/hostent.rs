//! `struct hostent` answers: `gethostbyname*_r` write into the caller's buffer (`ERANGE` when it is too small,
//! as glibc), `gethostbyname`/`gethostbyname2` into a per-thread buffer (valid until the thread's next call,
//! which is stricter than glibc's one static buffer).
//!
//! Buffer layout: padding to pointer alignment, `h_addr_list` (addresses then NULL), `h_aliases` (just NULL),
//! the address bytes, the NUL-terminated name.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::mem::{align_of, size_of};
use std::net::IpAddr;
use std::ptr;

use libc::{c_char, c_int, hostent};

use crate::dns::HostAnswer;

fn addr_len(af: c_int) -> usize {
    if af == libc::AF_INET6 {
        16
    } else {
        4
    }
}

/// Bytes needed in a buffer starting at `base`.
fn needed(answer: &HostAnswer, af: c_int, base: usize) -> usize {
    let pad = base.wrapping_neg() % align_of::<*mut c_char>();
    pad + (answer.addrs.len() + 2) * size_of::<*mut c_char>()
        + answer.addrs.len() * addr_len(af)
        + answer.name.len()
        + 1
}

/// Fills `ret` and `buf` with `answer` (addresses of family `af`); `Err(ERANGE)` when `buflen` is too small.
///
/// # Safety
/// `ret` must be valid for writes of a hostent and `buf` for writes of `buflen` bytes, both outliving the use
/// of the result.
pub unsafe fn fill(
    answer: &HostAnswer,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
) -> Result<(), c_int> {
    if ret.is_null() || buf.is_null() || needed(answer, af, buf as usize) > buflen {
        return Err(libc::ERANGE);
    }
    let alen = addr_len(af);
    let n = answer.addrs.len();
    let pad = (buf as usize).wrapping_neg() % align_of::<*mut c_char>();
    // SAFETY: everything written lies within `buflen` bytes of `buf` (checked by `needed` above), and the
    // pointer arrays start at a pointer-aligned offset.
    unsafe {
        let list = buf.add(pad).cast::<*mut c_char>();
        let aliases = list.add(n + 1);
        let data = aliases.add(1).cast::<c_char>();
        for (i, ip) in answer.addrs.iter().enumerate() {
            let bytes = match (ip, af) {
                (IpAddr::V4(v4), libc::AF_INET) => v4.octets().to_vec(),
                (IpAddr::V4(v4), _) => v4.to_ipv6_mapped().octets().to_vec(),
                (IpAddr::V6(v6), _) => v6.octets().to_vec(),
            };
            let dst = data.add(i * alen);
            ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), dst, alen.min(bytes.len()));
            *list.add(i) = dst;
        }
        *list.add(n) = ptr::null_mut();
        *aliases = ptr::null_mut();
        let name = data.add(n * alen);
        ptr::copy_nonoverlapping(
            answer.name.as_ptr().cast::<c_char>(),
            name,
            answer.name.len(),
        );
        *name.add(answer.name.len()) = 0;
        ret.write(hostent {
            h_name: name,
            h_aliases: aliases,
            h_addrtype: af,
            h_length: alen as c_int,
            h_addr_list: list,
        });
    }
    Ok(())
}

struct Store {
    ent: hostent,
    buf: Vec<u64>,
}

thread_local! {
    static STORE: RefCell<Option<Box<Store>>> = const { RefCell::new(None) };
}

/// `answer` in this thread's buffer; NULL if the thread is being torn down.
pub fn thread_local(answer: &HostAnswer, af: c_int) -> *mut hostent {
    STORE
        .try_with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return ptr::null_mut();
            };
            let words = needed(answer, af, 0).div_ceil(8);
            let store = slot.get_or_insert_with(|| {
                Box::new(Store {
                    ent: hostent {
                        h_name: ptr::null_mut(),
                        h_aliases: ptr::null_mut(),
                        h_addrtype: 0,
                        h_length: 0,
                        h_addr_list: ptr::null_mut(),
                    },
                    buf: Vec::new(),
                })
            });
            store.buf.clear();
            store.buf.resize(words, 0);
            let buf = store.buf.as_mut_ptr().cast::<c_char>();
            // SAFETY: `ent` and `buf` (of `words * 8` bytes, enough for the answer) live in this thread's storage
            // until the next call on this thread.
            match unsafe { fill(answer, af, &mut store.ent, buf, words * 8) } {
                Ok(()) => &raw mut store.ent,
                Err(_) => ptr::null_mut(),
            }
        })
        .unwrap_or(ptr::null_mut())
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn answer() -> HostAnswer {
        HostAnswer {
            name: "db.internal".into(),
            addrs: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
        }
    }

    /// Reads a hostent back as (name, addresses).
    fn read(h: &hostent) -> (String, Vec<Vec<u8>>) {
        // SAFETY: `h` was filled by `fill`, whose buffer is still alive.
        unsafe {
            let name = CStr::from_ptr(h.h_name).to_string_lossy().into_owned();
            assert!((*h.h_aliases).is_null());
            let mut addrs = Vec::new();
            let mut p = h.h_addr_list;
            while !(*p).is_null() {
                addrs.push(
                    std::slice::from_raw_parts((*p).cast::<u8>(), h.h_length as usize).to_vec(),
                );
                p = p.add(1);
            }
            (name, addrs)
        }
    }

    #[test]
    fn fills_or_says_erange_at_every_size_and_alignment() {
        let a = answer();
        let mut backing = vec![0u8; 512];
        for offset in 0..8 {
            let need = needed(&a, libc::AF_INET, backing.as_ptr() as usize + offset);
            for len in 0..need + 4 {
                let mut ent = std::mem::MaybeUninit::<hostent>::uninit();
                // SAFETY: `len` bytes from `offset` are within `backing`; `ent` is writable.
                let r = unsafe {
                    fill(
                        &a,
                        libc::AF_INET,
                        ent.as_mut_ptr(),
                        backing.as_mut_ptr().add(offset).cast(),
                        len,
                    )
                };
                if len < need {
                    assert_eq!(r, Err(libc::ERANGE), "offset {offset} len {len}");
                } else {
                    assert_eq!(r, Ok(()));
                    // SAFETY: filled just above.
                    let ent = unsafe { ent.assume_init() };
                    assert_eq!((ent.h_addrtype, ent.h_length), (libc::AF_INET, 4));
                    assert_eq!(
                        read(&ent),
                        (
                            "db.internal".into(),
                            vec![vec![10, 0, 0, 1], vec![10, 0, 0, 2]]
                        )
                    );
                }
            }
        }
    }

    #[test]
    fn v6_and_thread_local() {
        let a = HostAnswer {
            name: "v6.internal".into(),
            addrs: vec!["fd00::1".parse().unwrap()],
        };
        let p = thread_local(&a, libc::AF_INET6);
        assert!(!p.is_null());
        // SAFETY: valid until this thread's next call.
        let (name, addrs) = read(unsafe { &*p });
        assert_eq!(name, "v6.internal");
        assert_eq!(
            addrs,
            vec!["fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec()]
        );
        let p2 = thread_local(&answer(), libc::AF_INET);
        // SAFETY: as above.
        assert_eq!(read(unsafe { &*p2 }).0, "db.internal");
    }
}
