"""
The redis request framer's time per frame, 16 SET or GET commands fed at once.

    .venv/bin/python bench/micro/redis_framer.py [iterations]
"""
import os
import time, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from poolproxy.codecs.redis import RespRequestFramer, encode_command
def cmd(i, kind):
    if kind == "set":
        return encode_command([b"SET", b"key:%012d" % i, b"x" * 32])
    return encode_command([b"GET", b"key:%012d" % i])
for kind in ("set", "get"):
    batch = b"".join(cmd(i, kind) for i in range(16))
    f = RespRequestFramer(1 << 26)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    t = time.perf_counter()
    for _ in range(n):
        f.feed(batch)
    dt = time.perf_counter() - t
    print(f"{kind}: {dt / (n * 16) * 1e6:.3f} us/frame")
