"""The client bench/exec_context*.sh time: `setup HOST PORT N` (N sequential connections,
each one GET and its whole answer: p50 and p99 in ms) or `bulk HOST PORT 0` (one connection
read to its end: MB/s and bytes)."""
import socket, statistics, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "setup":
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s = socket.create_connection((host, port))
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{statistics.median(times):.3f} {times[int(len(times) * 0.99) - 1]:.3f}")
else:
    s = socket.create_connection((host, port))
    # An HTTP server sends its large file; a raw sender ignores the request.
    s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    got, t = 0, time.perf_counter()
    buf = bytearray(1 << 20)
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        got += k
    print(f"{got / (time.perf_counter() - t) / 1e6:.0f} {got}")
