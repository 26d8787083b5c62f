"""
Backends from DNS: C{dns:NAME:PORT} (one backend per A and AAAA address)
and C{srv:_service._proto.NAME} (one backend per SRV target and port, the
SRV weight as its balancing weight, only the lowest priority in use, as
RFC 2782 says).

A L{DnsName} resolves one such entry off the request path with a
C{twisted.names} resolver (any object with the L{IResolver} lookups it
calls), again at the answer's TTL clamped to C{[min_ttl, max_ttl]}, on the
reactor's clock, and hands each answer to its L{Members}, which turns the
difference into the proxy's add and drain path (the one SIGHUP uses):
added addresses take traffic at once, removed ones drain.

What DNS can get wrong is not allowed to empty a cluster: a failed lookup
(timeout, SERVFAIL, refused) keeps the last good set, counted in
L{DnsName.failures} and logged at most once per interval; an empty or
NXDOMAIN answer removes members only after C{empty_hold} seconds, and then
never more than the cluster's C{max_ejected_percent} of them.

A member's name is what a consistent-hash ring hashes: an SRV target's
name and port (so a target that changes its address keeps its keys), a
C{dns:} address's address and port.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredList, FirstError, gatherResults
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from poolproxy.util.throttled import ThrottledLog

#: The address prefixes that name backends in DNS.
DISCOVERY_KINDS = ("dns", "srv")
#: Seconds each lookup waits for its server, then tries again: 4 s in all,
#: well under any TTL floor worth having (Twisted's default waits 60 s).
LOOKUP_TIMEOUT = (1, 3)
#: The largest balancing weight an SRV weight becomes (SRV weights go to
#: 65535; a ring of that many points per backend would take seconds to build).
MAX_WEIGHT = 100


@dataclass(frozen=True)
class Discovered:
    """
    A backend entry resolved by DNS: C{kind} C{"dns"} (C{name}, C{port}) or
    C{"srv"} (C{name} is the whole SRV name, C{port} 0: each target has its own).
    """

    kind: str
    name: str
    port: int

    def __str__(self) -> str:
        return f"dns:{self.name}:{self.port}" if self.kind == "dns" else f"srv:{self.name}"


def parse_discovery(address: str) -> Optional[Discovered]:
    """
    The DNS entry C{address} names, or L{None} if it names none (it starts
    neither with C{dns:} nor with C{srv:}).

    @raise ValueError: it starts so but is malformed (the message says how).
    """
    kind, sep, rest = address.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in DISCOVERY_KINDS:
        return None
    if kind == "srv":
        labels = rest.rstrip(".").split(".")
        if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_") \
                or not all(labels):
            raise ValueError(f"expected srv:_SERVICE._PROTO.NAME, e.g. srv:_redis._tcp.example.com, "
                             f"got {address!r}")
        return Discovered("srv", rest.rstrip("."), 0)
    name, sep, port = rest.rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536 \
            or ":" in name or not all(name.rstrip(".").split(".")):
        raise ValueError(f"expected dns:NAME:PORT, e.g. dns:redis.example.com:6379, got {address!r}")
    return Discovered("dns", name.rstrip("."), int(port))


@dataclass(frozen=True)
class Target:
    """
    One backend an answer names.

    @ivar member: its name in the cluster (metrics, logs, the hash ring).
    @ivar host: the IP address to connect to.
    """

    member: str
    host: str
    port: int
    weight: int = 1

    @property
    def address(self) -> str:
        """A C{HOST:PORT} client address (IPv6 in brackets)."""
        return _hostport(self.host, self.port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Members(Protocol):
    """Where a L{DnsName}'s answers go: the backends it has brought in."""

    def names(self) -> Sequence[str]:
        """The names of the backends it has in the cluster now."""

    def apply(self, targets: Sequence[Target]) -> None:
        """Make the backends it has brought in these: add, drain, re-weight."""


class DnsName:
    """
    One C{dns:} or C{srv:} entry of a cluster, resolved again and again.

    @ivar failures: lookups that failed (the last good set was kept).
    @ivar last_refresh: when the last answer (good, empty or NXDOMAIN)
        came, on the clock, or L{None}.
    @ivar ttl: seconds until the next lookup, as last scheduled.
    @ivar last_error: what the last failed lookup said, until one succeeds.
    @ivar targets: the last set applied.
    @ivar empty_since: when answers started to be empty, while they are.
    """

    log = Logger()

    def __init__(self, cluster: str, entry: Discovered, resolver: Any, clock: Any,
                 members: Members, *, min_ttl: float = 5.0, max_ttl: float = 300.0,
                 empty_hold: float = 30.0, max_ejected_share: float = 0.5,
                 throttled: Optional[ThrottledLog] = None) -> None:
        self.cluster = cluster
        self.entry = entry
        self.resolver = resolver
        self.clock = clock
        self.members = members
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.empty_hold = empty_hold
        self.max_ejected_share = max_ejected_share
        self.throttled = throttled or ThrottledLog(self.log, clock)
        self.failures = 0
        self.refreshes = 0
        self.last_refresh: Optional[float] = None
        self.ttl = min_ttl
        self.last_error: Optional[str] = None
        self.targets: Tuple[Target, ...] = ()
        self.empty_since: Optional[float] = None
        # The set when answers became empty: what the ejection cap is a share of.
        self._before_empty: Tuple[Target, ...] = ()
        self._next: Any = None
        self._running = False

    @property
    def name(self) -> str:
        """How metrics and logs name it: the configured entry."""
        return str(self.entry)

    def start(self) -> None:
        """Resolve now, then at each answer's TTL until L{stop}."""
        self._running = True
        self.refresh()

    def stop(self) -> None:
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def refresh(self) -> "Deferred[Any]":
        """One lookup; the next is scheduled once it is answered (never two at once)."""
        self._next = None
        d = _srv_targets(self.resolver, self.entry) if self.entry.kind == "srv" \
            else _address_targets(self.resolver, self.entry)
        d.addCallbacks(self._answered, self._failed)
        # A bug while applying an answer must not end the refreshes for good.
        d.addErrback(self._broken)
        return d

    def _broken(self, failure: Failure) -> None:
        self.log.failure("cluster {cluster}: {name}: applying an answer failed",
                         failure, cluster=self.cluster, name=self.name)
        if self._next is None:
            self._schedule(self.min_ttl)

    def _schedule(self, ttl: float) -> None:
        self.ttl = ttl
        if self._running:
            self._next = self.clock.callLater(ttl, self.refresh)

    def _clamp(self, ttl: Optional[float]) -> float:
        return self.min_ttl if ttl is None else min(self.max_ttl, max(self.min_ttl, ttl))

    def _answered(self, answer: "Answer") -> None:
        if not self._running:
            return  # stopped (shutdown) while the lookup was out: change nothing
        targets, ttl, partial = answer
        self.refreshes += 1
        self.last_refresh = self.clock.seconds()
        self.last_error = None
        if partial is not None:
            # One family answered, the other failed: apply the answer, and
            # keep what the failed family had (unknown is not absent).
            family, why = partial
            targets = targets + [t for t in self.targets if _family(t.host) == family]
            self._count_failure(why)
            if not targets:  # nothing known: not an empty answer
                self._schedule(self.min_ttl)
                return
        if targets:
            self.empty_since = None
            self._apply(targets)
            self._schedule(self._clamp(ttl))
            return
        self._empty("an empty answer")

    def _empty(self, what: str) -> None:
        """No address: hold the set for C{empty_hold}, then shrink it within the cap."""
        now = self.clock.seconds()
        if self.empty_since is None:
            self.empty_since, self._before_empty = now, self.targets
        held = now - self.empty_since
        if self.targets and held < self.empty_hold:
            self.throttled.warn(("dns-empty", self.cluster, self.name),
                                "cluster {cluster}: {name}: {what}; keeping its {n} backends "
                                "for {hold:g}s more", cluster=self.cluster, name=self.name,
                                what=what, n=len(self.targets), hold=self.empty_hold - held)
            self._schedule(min(self.min_ttl, self.empty_hold - held))
            return
        # The cap is a share of the set before answers became empty, so that
        # empty answers one after another do not shrink it step by step.
        before = self._before_empty
        removable = math.floor(self.max_ejected_share * len(before) + 1e-9)
        kept = before[:len(before) - removable]
        if kept != self.targets:
            self.log.warn("cluster {cluster}: {name}: {what} for {held:g}s; draining {gone} of "
                          "its backends, keeping {kept} (max_ejected_percent)",
                          cluster=self.cluster, name=self.name, what=what, held=held,
                          gone=len(self.targets) - len(kept), kept=len(kept))
            self._apply(kept)
        self._schedule(self.min_ttl)

    def _failed(self, failure: Failure) -> None:
        if not self._running:
            return
        if failure.check(DNSNameError):
            self.refreshes += 1
            self.last_refresh = self.clock.seconds()
            self.last_error = None
            self._empty("NXDOMAIN")
            return
        self._count_failure(failure)
        self._schedule(self.min_ttl)

    def _count_failure(self, failure: Failure) -> None:
        self.failures += 1
        self.last_error = _describe(failure)
        self.throttled.warn(("dns-failure", self.cluster, self.name),
                            "cluster {cluster}: {name}: lookup failed ({why}); keeping its "
                            "{n} backends", cluster=self.cluster, name=self.name,
                            why=self.last_error, n=len(self.targets))

    def _apply(self, targets: Sequence[Target]) -> None:
        ordered = tuple(sorted(targets, key=lambda t: t.member))
        if ordered != self.targets:
            self.targets = ordered
            self.members.apply(ordered)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _describe(failure: Failure) -> str:
    """One line for a failed lookup: the error's class and message."""
    value = failure.value
    text = str(value).splitlines()[0] if str(value) else ""
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


Lookup = Tuple[List[dns.RRHeader], List[dns.RRHeader], List[dns.RRHeader]]


def _addresses(records: Sequence[dns.RRHeader], name: Optional[str] = None,
               ) -> Tuple[List[str], Optional[float]]:
    """The A and AAAA addresses among C{records} (of C{name}, if given), and their least TTL."""
    found: List[str] = []
    ttl: Optional[float] = None
    for rr in records:
        if name is not None and str(rr.name).rstrip(".").lower() != name:
            continue
        payload: Any = rr.payload
        if rr.type == dns.A:
            found.append(socket.inet_ntop(socket.AF_INET, payload.address))
        elif rr.type == dns.AAAA:
            found.append(socket.inet_ntop(socket.AF_INET6, payload.address))
        else:
            continue
        ttl = rr.ttl if ttl is None else min(ttl, rr.ttl)
    return found, ttl


def _least(*ttls: Optional[float]) -> Optional[float]:
    known = [t for t in ttls if t is not None]
    return min(known) if known else None


#: A lookup of one address family that failed while the other answered:
#: (the failed family, socket.AF_INET or AF_INET6, and why), or None.
Partial = Optional[Tuple[int, Failure]]


def _lookup_addresses(resolver: Any, name: str,
                      ) -> "Deferred[Tuple[List[str], Optional[float], Partial]]":
    """
    C{name}'s A and AAAA addresses, their least TTL, and the family whose
    lookup failed if only one did.  NXDOMAIN for both is NXDOMAIN; a name
    with addresses of one family only answers the other with nothing (or
    NXDOMAIN from some servers), which is fine.
    """
    families = (socket.AF_INET, socket.AF_INET6)

    def settle(results: List[Tuple[bool, Any]]) -> Tuple[List[str], Optional[float], Partial]:
        addresses: List[str] = []
        ttl: Optional[float] = None
        names_missing = 0
        failed: List[Tuple[int, Failure]] = []
        for family, (ok, value) in zip(families, results):
            if not ok:
                if value.check(DNSNameError):
                    names_missing += 1
                else:
                    failed.append((family, value))
                continue
            found, found_ttl = _addresses(value[0])
            addresses += found
            ttl = _least(ttl, found_ttl)
        if names_missing == len(results):
            raise DNSNameError(name)
        if failed and len(failed) + names_missing == len(results):
            failed[0][1].raiseException()  # nothing answered
        return addresses, ttl, (failed[0] if failed else None)

    lookups = [resolver.lookupAddress(name, timeout=LOOKUP_TIMEOUT),
               resolver.lookupIPV6Address(name, timeout=LOOKUP_TIMEOUT)]
    return DeferredList(lookups, consumeErrors=True).addCallback(settle)


Answer = Tuple[List[Target], Optional[float], Partial]


def _address_targets(resolver: Any, entry: Discovered) -> "Deferred[Answer]":
    """A C{dns:} entry: one target per address, named by its address and port."""
    def targets(found: Tuple[List[str], Optional[float], Partial]) -> Answer:
        addresses, ttl, partial = found
        unique = sorted(set(addresses))
        return [Target(_hostport(a, entry.port), a, entry.port) for a in unique], ttl, partial

    return _lookup_addresses(resolver, entry.name).addCallback(targets)


def _srv_targets(resolver: Any, entry: Discovered) -> "Deferred[Answer]":
    """
    An C{srv:} entry: the records of the lowest priority, one target per
    target name and port, named by them; its address from the answer's
    additional records, else looked up.  A lone target C{.} means the
    service is not offered there (RFC 2782): an empty answer.
    """
    def records(result: Lookup) -> "Deferred[Answer]":
        answers, _, additional = result
        srvs: List[Tuple[Any, float]] = [(rr.payload, rr.ttl) for rr in answers if rr.type == dns.SRV]
        srvs = [(srv, ttl) for srv, ttl in srvs if str(srv.target) not in ("", ".")]
        if not srvs:
            return _done(([], _least(*[rr.ttl for rr in answers]), None))
        lowest = min(srv.priority for srv, _ in srvs)
        chosen: Dict[Tuple[str, int], Tuple[int, float]] = {}
        for srv, srv_ttl in srvs:
            if srv.priority == lowest:
                key = (str(srv.target).rstrip(".").lower(), srv.port)
                weight, ttl = chosen.get(key, (0, srv_ttl))
                chosen[key] = (weight + srv.weight, min(ttl, srv_ttl))
        weights = _scaled({key: w for key, (w, _) in chosen.items()})
        srv_ttl = min(ttl for _, ttl in chosen.values())

        def one(key: Tuple[str, int]) -> "Deferred[Tuple[Optional[Target], Optional[float]]]":
            target, port = key
            found, ttl = _addresses(additional, target)
            member = f"{target}:{port}"

            def pick(found_ttl: Tuple[List[str], Optional[float], Partial]
                     ) -> Tuple[Optional[Target], Optional[float]]:
                addresses, ttl, partial = found_ttl
                if not addresses:
                    if partial is not None:
                        partial[1].raiseException()  # unknown, not absent: keep the set
                    return None, ttl
                # One backend per target: its first address, in a stable order.
                return Target(member, sorted(addresses)[0], port, weights[key]), ttl

            if found:
                return _done(pick((found, ttl, None)))
            return _lookup_addresses(resolver, target).addCallback(pick)

        def gathered(results: List[Tuple[Optional[Target], Optional[float]]]) -> Answer:
            targets = [t for t, _ in results if t is not None]
            return targets, _least(srv_ttl, *[ttl for _, ttl in results]), None

        return gatherResults([one(key) for key in sorted(chosen)], consumeErrors=True
                             ).addCallback(gathered)

    d = resolver.lookupService(entry.name, timeout=LOOKUP_TIMEOUT).addCallback(records)
    # gatherResults wraps the first failure: unwrap it so NXDOMAIN stays one.
    return d.addErrback(_unwrap)


def _unwrap(failure: Failure) -> Failure:
    if failure.check(FirstError):
        inner: Failure = failure.value.subFailure
        return inner
    return failure


def _done(value: Any) -> "Deferred[Any]":
    d: "Deferred[Any]" = Deferred()
    d.callback(value)
    return d


def _scaled(weights: Dict[Any, int]) -> Dict[Any, int]:
    """SRV weights as balancing weights: at least 1, the largest at most L{MAX_WEIGHT}."""
    top = max(weights.values(), default=0)
    if top <= MAX_WEIGHT:
        return {key: max(1, w) for key, w in weights.items()}
    return {key: max(1, round(w * MAX_WEIGHT / top)) for key, w in weights.items()}


class ClusterMembers:
    """
    The backends one L{DnsName} brought into a cluster, changed through the
    proxy's add and drain path: C{add(target)} makes a backend join,
    C{retire(backend)} drains it, C{reweight(backend, weight)}.  A target
    whose address changed is a new backend under the same name (so it keeps
    its keys on a hash ring); the old one drains, renamed C{NAME@OLD_ADDRESS}.
    """

    log = Logger()

    def __init__(self, cluster: str, add: Callable[[Target], Any],
                 retire: Callable[[Any], Any], reweight: Callable[[Any, int], None],
                 rename: Optional[Callable[[Any, str], None]] = None) -> None:
        """
        @param rename: gives a draining backend whose target moved another
            name (C{NAME@OLD_ADDRESS}), so that it and its successor are
            told apart in metrics and logs while it drains.
        """
        self.cluster = cluster
        self._add, self._retire, self._reweight = add, retire, reweight
        self._rename = rename
        self.backends: Dict[str, Tuple[Any, Target]] = {}

    def names(self) -> List[str]:
        return list(self.backends)

    def apply(self, targets: Sequence[Target]) -> None:
        wanted = {t.member: t for t in targets}
        for member, (backend, had) in list(self.backends.items()):
            target = wanted.get(member)
            if target is None or (target.host, target.port) != (had.host, had.port):
                del self.backends[member]
                self.log.info("cluster {cluster}: backend {backend} ({address}) leaves (DNS); "
                              "draining", cluster=self.cluster, backend=member,
                              address=had.address)
                self._retire(backend)
                if target is not None and self._rename is not None:
                    self._rename(backend, f"{member}@{had.address}")
        for member, target in wanted.items():
            known = self.backends.get(member)
            if known is None:
                try:
                    backend = self._add(target)
                except Exception as e:
                    # Such as a backend_tls that cannot verify this address:
                    # the others still join, and an answer that changes tries again.
                    self.log.error("cluster {cluster}: backend {backend} ({address}) cannot "
                                   "join: {why}", cluster=self.cluster, backend=member,
                                   address=target.address, why=str(e) or repr(e))
                    continue
                if backend is None:
                    continue
                self.backends[member] = (backend, target)
                self.log.info("cluster {cluster}: backend {backend} ({address}, weight {weight}) "
                              "joins (DNS)", cluster=self.cluster, backend=member,
                              address=target.address, weight=target.weight)
            elif known[1].weight != target.weight:
                self._reweight(known[0], target.weight)
                self.backends[member] = (known[0], target)


def parse_resolver(text: str) -> Tuple[str, int]:
    """
    A C{dns_resolvers} entry, C{HOST:PORT} (C{[V6]:PORT}) or C{HOST} (port
    53), as (IP address, port).

    @raise ValueError: it is neither.
    """
    host, port = text.strip(), 53
    if host.startswith("["):
        inside, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected HOST:PORT or [IPV6]:PORT, got {text!r}")
        host, rest = inside, rest[1:]
        if rest:
            port = _port(rest, text)
    elif host.count(":") == 1:
        host, rest = host.split(":")
        port = _port(rest, text)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host, port
        except OSError:
            continue
    raise ValueError(f"expected an IP address and port, e.g. 127.0.0.1:5353, got {text!r}")


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"expected a port from 1 to 65535 in {whole!r}")
    return int(text)


def make_resolver(servers: Sequence[str], reactor: Any) -> Any:
    """
    A C{twisted.names} resolver asking C{servers} (C{dns_resolvers}
    entries), or those of /etc/resolv.conf if there are none; no cache, so
    each lookup sees the TTLs the servers give.
    """
    from twisted.names import client

    if servers:
        return client.Resolver(servers=[parse_resolver(s) for s in servers], reactor=reactor)
    return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
