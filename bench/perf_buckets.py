"""Reads `perf report --sort dso,sym -n --stdio` and prints CPU per request by bucket.

Usage: perf report ... | python3 perf_buckets.py REQUESTS SAMPLE_HZ
"""
import re
import sys

# First match wins: a symbol is counted once.
RULES = [
    ("kernel", r"\[kernel"),
    ("malloc/free", r"malloc|_int_free|cfree|unlink_chunk|\bfree\b|realloc|memalign"),
    ("memcpy", r"memmove|memcpy|memset"),
    ("channels (tokio mpsc)", r"mpsc|chan::|list::"),
    ("cancellation, task tracker, notify", r"cancellation|task_tracker|notify|Notified"),
    ("TLS (rustls, ring)", r"rustls|\bring::|ring_core"),
    ("framing, codec, protocol", r"codec|Framed|postcard|mirrord_protocol|decode|encode"),
    ("tokio runtime and I/O", r"tokio"),
    ("libc syscall wrappers", r"libc\.so.*(send|recv|writev|readv|epoll|pthread|__GI)"),
]


def main() -> None:
    requests, hz = float(sys.argv[1]), float(sys.argv[2])
    buckets: dict[str, int] = {}
    for line in sys.stdin:
        m = re.match(r"\s+[\d.]+%\s+(\d+)\s+(\S+)\s+(.*)", line)
        if not m:
            continue
        samples, where = int(m.group(1)), m.group(2) + " " + m.group(3)
        key = next((k for k, r in RULES if re.search(r, where)), "other")
        buckets[key] = buckets.get(key, 0) + samples
    total = sum(buckets.values())
    for key, n in sorted(buckets.items(), key=lambda kv: -kv[1]):
        print(f"   {key:36s} {n / hz / requests * 1e6:6.2f} us")
    print(f"   {'total':36s} {total / hz / requests * 1e6:6.2f} us")


main()
