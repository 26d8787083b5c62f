"""
Timer cost per request: Twisted's callLater + cancel against poolproxy.util.deadlines (16 in flight, FIFO).
"""
import os
import sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from collections import deque
from twisted.internet import reactor
from poolproxy.util.deadlines import Deadlines
N = 200000
def f(*a): pass
# 16 timeouts in flight, started and cancelled in FIFO order, as exchanges are
def bench_calllater():
    live = deque(reactor.callLater(30, f) for _ in range(16))
    t = time.perf_counter()
    for _ in range(N):
        live.popleft().cancel()
        live.append(reactor.callLater(30, f))
        if _ % 1000 == 0:
            reactor.runUntilCurrent()  # lets the reactor compact cancelled calls, as its loop does
    dt = time.perf_counter() - t
    for d in live: d.cancel()
    return dt / N * 1e6
def bench_deadlines():
    d = Deadlines(reactor, 30, f)
    live = deque(d.start(i) for i in range(16))
    t = time.perf_counter()
    for i in range(N):
        d.cancel(live.popleft())
        live.append(d.start(i))
    dt = time.perf_counter() - t
    for e in live: d.cancel(e)
    return dt / N * 1e6
for _ in range(3):
    print(f"callLater+cancel {bench_calllater():.2f} us; Deadlines start+cancel {bench_deadlines():.2f} us")
