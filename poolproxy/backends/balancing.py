"""
Load-balancing policies: which backend of a cluster gets the next request.

A policy is pure: it holds the backends and their weights and picks one per
request (or per client session); it never sees a transport, a reactor or a
clock, and draws its randomness from an injected L{random.Random}, so it is
tested with plain values and a seed.

Backends are opaque to a policy: it stores them as dict keys (so they must be
hashable; a L{poolproxy.backends.pool.BackendPool} is, by identity) and hands back the
one it picked.  Whether a backend may be used right now (health checks, an
open circuit breaker, an operator's switch) is not the policy's business: the
caller passes an C{available} predicate to each L{IPolicy.pick}, and the
policy chooses among the backends for which it is true.

Four policies, by their names in L{POLICIES}:
  - C{round_robin}: L{WeightedRoundRobin}, nginx's smooth weighted
    round-robin;
  - C{least_outstanding}: L{LeastOutstanding}, the power of two random
    choices on outstanding requests per unit of weight;
  - C{consistent_hash}: L{ConsistentHash}, a libketama ring on the routing
    key;
  - C{random}: L{WeightedRandom}.
"""

from __future__ import annotations

import random
import struct
from bisect import bisect_left
from hashlib import md5
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from zope.interface import Attribute, Interface, implementer

Available = Callable[[Any], bool]


class IPolicy(Interface):
    """
    Picks one backend of a weighted set.
    """

    backends = Attribute("The backends, in the order they were added (a new list).")

    def pick(key: Optional[bytes], available: Available) -> Optional[Any]:
        """
        A backend for which C{available(backend)} is true, or L{None} if there
        is none.

        @param key: the request's routing key, or L{None}; only
            L{ConsistentHash} looks at it.
        @param available: a pure query, called at most once per backend per
            pick, and possibly for only some of them.
        """

    def weight(backend: Any) -> int:
        """
        The weight of C{backend}.

        @raise KeyError: if C{backend} is not in the set.
        """

    def add(backend: Any, weight: int) -> None:
        """
        Add C{backend} with C{weight}.

        @raise ValueError: if it is already in the set, or the weight is not a
            positive int.
        """

    def remove(backend: Any) -> None:
        """
        Remove C{backend}.

        @raise KeyError: if it is not in the set.
        """

    def set_weight(backend: Any, weight: int) -> None:
        """
        Change the weight of C{backend}.

        @raise KeyError: if it is not in the set.
        @raise ValueError: if the weight is not a positive int.
        """


def _check_weight(weight: Any) -> int:
    # bool is an int, but True as a weight is surely a configuration mistake.
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
        raise ValueError(f"a weight must be a positive int, not {weight!r}")
    return weight


@implementer(IPolicy)
class Policy:
    """
    The bookkeeping every policy shares: backends and weights, in order.
    Subclasses implement L{pick} and rebuild what they derive from the set in
    L{_changed}.

    @ivar _weights: backend -> weight, in the order the backends were added.
    """

    def __init__(self, backends: Iterable[Tuple[Any, int]]) -> None:
        """
        @param backends: C{(backend, weight)} pairs; may be empty, in which
            case L{pick} returns L{None} until one is added.
        """
        self._weights: Dict[Any, int] = {}
        for backend, weight in backends:
            if backend in self._weights:
                raise ValueError(f"backend {backend!r} given twice")
            self._weights[backend] = _check_weight(weight)
        self._changed()

    @property
    def backends(self) -> List[Any]:
        return list(self._weights)

    def weight(self, backend: Any) -> int:
        return self._weights[backend]

    def add(self, backend: Any, weight: int) -> None:
        if backend in self._weights:
            raise ValueError(f"backend {backend!r} is already in the set")
        self._weights[backend] = _check_weight(weight)
        try:
            self._changed()
        except BaseException:
            # Such as a name clash on a hash ring: leave the set as it was.
            del self._weights[backend]
            self._changed()
            raise

    def remove(self, backend: Any) -> None:
        del self._weights[backend]
        self._changed()

    def set_weight(self, backend: Any, weight: int) -> None:
        if backend not in self._weights:
            raise KeyError(backend)
        self._weights[backend] = _check_weight(weight)
        self._changed()

    def _changed(self) -> None:
        """The set or a weight changed: rebuild derived state."""

    def _candidates(self, available: Available) -> Tuple[List[Any], List[int], int]:
        """The available backends, their weights, and the weights' total."""
        backends = []
        weights = []
        total = 0
        for backend, weight in self._weights.items():
            if available(backend):
                backends.append(backend)
                weights.append(weight)
                total += weight
        return backends, weights, total

    def pick(self, key: Optional[bytes], available: Available) -> Optional[Any]:
        raise NotImplementedError


def _weighted_index(rng: random.Random, weights: List[int], total: int,
                    skip: int = -1) -> int:
    """
    An index into C{weights} drawn with probability proportional to its
    weight, never C{skip}.

    @param total: the sum of C{weights}, less C{weights[skip]} if C{skip} is
        given.
    """
    r = rng.random() * total
    last = -1
    for i, w in enumerate(weights):
        if i == skip:
            continue
        r -= w
        if r < 0:
            return i
        last = i
    # Only reached if rounding made r reach total.
    return last


class WeightedRoundRobin(Policy):
    """
    Smooth weighted round-robin, as nginx does it: on each pick every
    available backend's current value grows by its weight, the largest wins
    (the first in order on a tie) and drops by the total weight of the
    candidates.  Picks are spread out: weights 5, 1, 1 give C{a a b a c a a},
    not C{a a a a a b c}.

    An unavailable backend takes no part in a pick, so its current value
    waits unchanged until it is back.  A change of weight keeps the current
    values, so the schedule bends rather than restarts (restarting on every
    change would favour the heaviest backend if weights change often).
    """

    def __init__(self, backends: Iterable[Tuple[Any, int]]) -> None:
        self._peers: List[List[Any]] = []
        Policy.__init__(self, backends)

    def _changed(self) -> None:
        old = {peer[0]: peer[2] for peer in self._peers}
        # [backend, weight, current]: mutable, so pick updates in place.
        self._peers = [
            [b, w, old.get(b, 0)] for b, w in self._weights.items()]

    def pick(self, key: Optional[bytes], available: Available) -> Optional[Any]:
        best: Optional[List[Any]] = None
        best_current = 0
        total = 0
        for peer in self._peers:
            if not available(peer[0]):
                continue
            weight = peer[1]
            current = peer[2] + weight
            peer[2] = current
            total += weight
            if best is None or current > best_current:
                best = peer
                best_current = current
        if best is None:
            return None
        best[2] = best_current - total
        return best[0]


class LeastOutstanding(Policy):
    """
    The power of two random choices: draw two distinct available backends at
    random, each draw weighted by weight, and pick the one with fewer
    outstanding requests per unit of weight (the first drawn on a tie).  With
    one available backend, that one.

    It follows load nearly as well as scanning for the least loaded backend,
    without herding every proxy onto the same one.  The backend with the
    strictly highest load per weight is never picked while two or more are
    available; the strictly least loaded one is picked whenever it is drawn.
    """

    def __init__(self, backends: Iterable[Tuple[Any, int]],
                 outstanding: Callable[[Any], int], *,
                 rng: Optional[random.Random] = None) -> None:
        """
        @param outstanding: the number of requests a backend has in flight.
        @param rng: the source of randomness; a fresh, OS-seeded one if
            L{None}.
        """
        self._outstanding = outstanding
        self._rng = rng if rng is not None else random.Random()
        Policy.__init__(self, backends)

    def pick(self, key: Optional[bytes], available: Available) -> Optional[Any]:
        backends, weights, total = self._candidates(available)
        if len(backends) < 2:
            return backends[0] if backends else None
        rng = self._rng
        i = _weighted_index(rng, weights, total)
        j = _weighted_index(rng, weights, total - weights[i], skip=i)
        a = backends[i]
        b = backends[j]
        outstanding = self._outstanding
        # load(a) <= load(b), i.e. out(a)/w(a) <= out(b)/w(b), in integers.
        if outstanding(a) * weights[j] <= outstanding(b) * weights[i]:
            return a
        return b


_POINT = struct.Struct("<I")
_FOUR_POINTS = struct.Struct("<4I")


def ketama_hash(key: bytes) -> int:
    """
    The 32-bit ketama hash of C{key}: the first four bytes of its MD5 digest
    as a little-endian unsigned int, as libketama, libmemcached and
    twemproxy compute it.
    """
    return _POINT.unpack_from(md5(key).digest())[0]


def ketama_points(name: str, weight: int) -> List[int]:
    """
    The ring points of one backend, as libketama makes them: C{40 * weight}
    MD5 digests of C{"NAME-I"} (I from 0), each cut into four little-endian
    unsigned 32-bit points, so 160 points per unit of weight.
    """
    points: List[int] = []
    for i in range(40 * weight):
        points.extend(_FOUR_POINTS.unpack(md5(f"{name}-{i}".encode("utf-8")).digest()))
    return points


class ConsistentHash(Policy):
    """
    Consistent hashing on the routing key, over a libketama ring (see
    L{ketama_points}): a key goes to the owner of the first point at or after
    its L{ketama_hash}, wrapping past the top.

    Each backend's points depend only on its name and weight, so adding,
    removing or reweighting one backend moves only keys to or from that
    backend.  When a key's backend is unavailable, the walk goes on clockwise
    to the next point whose backend is available: exactly where the key would
    go if that backend were removed, so only its share of keys moves, and
    moves back when it returns.

    A request without a key (L{None}) goes to the first available backend on
    the ring from point 0: deterministic, but all key-less requests then go
    to one backend.  Listeners with much key-less traffic want another
    policy.

    Names must be unique and stable across restarts, or keys move when the
    proxy restarts: the default, C{str(backend)}, is stable only if the
    backend's C{__str__} is (a L{poolproxy.backends.pool.BackendPool}'s is not: give
    C{name_of=lambda pool: pool.name}).
    """

    def __init__(self, backends: Iterable[Tuple[Any, int]], *,
                 name_of: Optional[Callable[[Any], str]] = None, remap: bool = True) -> None:
        """
        @param name_of: a backend's name on the ring; C{str} if L{None}.
        @param remap: whether a key whose backend is unavailable goes on to
            the next available one (twemproxy's C{auto_eject_hosts}), or
            gets none (L{None}), so that proxies that disagree about a
            backend's health never disagree about where its keys live.
        """
        self._name_of: Callable[[Any], str] = name_of if name_of is not None else str
        self._remap = remap
        # (name, weight) -> points: a change of one backend rehashes only it.
        self._point_cache: Dict[Tuple[str, int], List[int]] = {}
        Policy.__init__(self, backends)

    def _changed(self) -> None:
        names: Dict[str, Any] = {}
        for backend in self._weights:
            name = self._name_of(backend)
            if name in names:
                raise ValueError(
                    f"backends {names[name]!r} and {backend!r} have the same name {name!r}")
            names[name] = backend
        # Each entry is point * n + the rank of its owner's name: sorting
        # plain ints is several times faster than sorting pairs, and on the
        # rare equal points it orders by name, so the ring does not depend on
        # the order backends were added.
        by_rank = [names[name] for name in sorted(names)]
        n = len(by_rank) or 1
        cache: Dict[Tuple[str, int], List[int]] = {}
        ring: List[int] = []
        for rank, backend in enumerate(by_rank):
            spec = (self._name_of(backend), self._weights[backend])
            points = self._point_cache.get(spec)
            if points is None:
                points = ketama_points(*spec)
            cache[spec] = points
            ring.extend([point * n + rank for point in points])
        self._point_cache = cache
        ring.sort()
        self._points: List[int] = [entry // n for entry in ring]
        self._owners: List[Any] = [by_rank[entry % n] for entry in ring]

    def pick(self, key: Optional[bytes], available: Available) -> Optional[Any]:
        points = self._points
        if not points:
            return None
        if key is None:
            i = 0
        else:
            i = bisect_left(points, _POINT.unpack_from(md5(key).digest())[0])
            if i == len(points):
                i = 0
        owner = self._owners[i]
        if available(owner):
            return owner
        return self._walk(i, available) if self._remap else None

    def _walk(self, i: int, available: Available) -> Optional[Any]:
        """
        Clockwise from point C{i}, whose owner is unavailable, to the first
        point whose owner is available; each backend is asked at most once.
        """
        owners = self._owners
        n = len(owners)
        down = {owners[i]}
        left = len(self._weights) - 1
        while left:
            i += 1
            if i == n:
                i = 0
            owner = owners[i]
            if owner in down:
                continue
            if available(owner):
                return owner
            down.add(owner)
            left -= 1
        return None


class WeightedRandom(Policy):
    """
    A random available backend, drawn with probability proportional to its
    weight.
    """

    def __init__(self, backends: Iterable[Tuple[Any, int]], *,
                 rng: Optional[random.Random] = None) -> None:
        """
        @param rng: the source of randomness; a fresh, OS-seeded one if
            L{None}.
        """
        self._rng = rng if rng is not None else random.Random()
        Policy.__init__(self, backends)

    def pick(self, key: Optional[bytes], available: Available) -> Optional[Any]:
        backends, weights, total = self._candidates(available)
        if not backends:
            return None
        return backends[_weighted_index(self._rng, weights, total)]


#: Policy classes by their configuration names.
POLICIES: Dict[str, type] = {
    "round_robin": WeightedRoundRobin,
    "least_outstanding": LeastOutstanding,
    "consistent_hash": ConsistentHash,
    "random": WeightedRandom,
}


def make_policy(name: str, backends_with_weights: Iterable[Tuple[Any, int]], *,
                outstanding: Optional[Callable[[Any], int]] = None,
                rng: Optional[random.Random] = None,
                name_of: Optional[Callable[[Any], str]] = None,
                remap: bool = True) -> Policy:
    """
    The policy called C{name} in L{POLICIES}.  Options a policy does not use
    are ignored, so that a caller may pass all it has.

    @param backends_with_weights: C{(backend, weight)} pairs.
    @param outstanding: a backend's requests in flight; needed by
        C{least_outstanding}.
    @param rng: the source of randomness of C{least_outstanding} and
        C{random}.
    @param name_of: a backend's name on the C{consistent_hash} ring.
    @param remap: C{consistent_hash}: whether an unavailable backend's keys
        go to the next one on the ring (see L{ConsistentHash}).
    @return: a new policy.
    @raise ValueError: for an unknown name, or C{least_outstanding} without
        C{outstanding}.
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(
            f"unknown balancing policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    if cls is LeastOutstanding:
        if outstanding is None:
            raise ValueError("least_outstanding needs an outstanding callable")
        return LeastOutstanding(backends_with_weights, outstanding, rng=rng)
    if cls is ConsistentHash:
        return ConsistentHash(backends_with_weights, name_of=name_of, remap=remap)
    if cls is WeightedRandom:
        return WeightedRandom(backends_with_weights, rng=rng)
    return WeightedRoundRobin(backends_with_weights)
