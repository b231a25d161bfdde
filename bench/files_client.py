"""The process side of bench/files_kube.sh: reads a file whole, or stats many paths, and prints
the seconds it took (and the bytes, or the paths found), measured inside the process."""
import hashlib, os, sys, time

what = sys.argv[1]
if what == "read":
    t = time.perf_counter()
    h = hashlib.sha256()
    n = 0
    with open(sys.argv[2], "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
            h.update(b)
    print(f"{time.perf_counter() - t:.4f} {n} {h.hexdigest()}")
elif what == "stat":
    d, count = sys.argv[2], int(sys.argv[3])
    t = time.perf_counter()
    found = sum(1 for i in range(count) if os.stat(f"{d}/f{i}").st_size >= 0)
    print(f"{time.perf_counter() - t:.4f} {found}")
