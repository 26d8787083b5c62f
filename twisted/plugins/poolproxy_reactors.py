# twistd --reactor=poolproxy-epoll: epoll without a log context per I/O event
# (poolproxy.reactor; measured in docs/performance.md).
from twisted.application.reactors import Reactor

poolproxy_epoll = Reactor(
    "poolproxy-epoll",
    "poolproxy.reactor",
    "epoll without a legacy log context per I/O event (faster; see poolproxy docs)",
)
