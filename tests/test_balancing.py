"""
Unit and property tests of the load-balancing policies in
L{poolproxy.backends.balancing}.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from hashlib import md5
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from poolproxy.backends.balancing import (
    POLICIES,
    ConsistentHash,
    IPolicy,
    LeastOutstanding,
    Policy,
    WeightedRandom,
    WeightedRoundRobin,
    ketama_hash,
    ketama_points,
    make_policy,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

KEYS = [b"key:%d" % i for i in range(10000)]


def always(backend: Any) -> bool:
    return True


def except_(*down: Any) -> Callable[[Any], bool]:
    """An C{available} predicate false for C{down} only."""
    return lambda backend: backend not in down


def names(n: int) -> List[str]:
    return [f"10.0.0.{i}:6379" for i in range(n)]


def picks(policy: Policy, n: int, available: Callable[[Any], bool] = always,
          key: Optional[bytes] = None) -> List[Any]:
    return [policy.pick(key, available) for _ in range(n)]


def mapping(policy: Policy, available: Callable[[Any], bool] = always) -> Dict[bytes, Any]:
    """Where each of L{KEYS} goes."""
    return {key: policy.pick(key, available) for key in KEYS}


class PolicyBookkeepingTests(SynchronousTestCase):
    """
    What every policy shares: the set of backends and their weights.
    """

    def all_policies(self, backends: Iterable[Tuple[Any, int]]) -> List[Policy]:
        pairs = list(backends)
        return [make_policy(name, pairs, outstanding=lambda b: 0, rng=random.Random(0))
                for name in POLICIES]

    def test_provides_interface(self) -> None:
        """
        Every policy in L{POLICIES} provides L{IPolicy}, and L{make_policy}
        builds the class registered under each name.
        """
        for name, cls in POLICIES.items():
            policy = make_policy(name, [("a", 1)], outstanding=lambda b: 0)
            self.assertIs(type(policy), cls)
            self.assertTrue(verifyObject(IPolicy, policy))
        self.assertEqual(sorted(POLICIES),
                         ["consistent_hash", "least_outstanding", "random", "round_robin"])

    def test_make_policy_errors(self) -> None:
        """
        L{make_policy} rejects an unknown name, naming the known ones, and
        C{least_outstanding} without an C{outstanding} callable.
        """
        e = self.assertRaises(ValueError, make_policy, "fastest", [("a", 1)])
        self.assertIn("round_robin", str(e))
        self.assertRaises(ValueError, make_policy, "least_outstanding", [("a", 1)])

    def test_add_remove_set_weight(self) -> None:
        """
        C{backends} keeps insertion order through L{Policy.add} and
        L{Policy.remove}; L{Policy.set_weight} changes L{Policy.weight}.
        """
        for policy in self.all_policies([("a", 1), ("b", 2)]):
            policy.add("c", 3)
            self.assertEqual(policy.backends, ["a", "b", "c"])
            policy.remove("a")
            self.assertEqual(policy.backends, ["b", "c"])
            policy.set_weight("b", 7)
            self.assertEqual((policy.weight("b"), policy.weight("c")), (7, 3))

    def test_invalid_changes(self) -> None:
        """
        A backend given twice, a weight that is not a positive int (0, -1,
        1.5, True), and removing or reweighting an unknown backend are
        errors, and leave the set unchanged.
        """
        for name in POLICIES:
            self.assertRaises(ValueError, make_policy, name, [("a", 1), ("a", 2)],
                              outstanding=lambda b: 0)
            for weight in (0, -1, 1.5, True, "2"):
                self.assertRaises(ValueError, make_policy, name, [("a", weight)],
                                  outstanding=lambda b: 0)
        for policy in self.all_policies([("a", 1)]):
            self.assertRaises(ValueError, policy.add, "a", 1)
            self.assertRaises(ValueError, policy.add, "b", 0)
            self.assertRaises(ValueError, policy.set_weight, "a", 0)
            self.assertRaises(KeyError, policy.remove, "b")
            self.assertRaises(KeyError, policy.set_weight, "b", 1)
            self.assertEqual(policy.backends, ["a"])
            self.assertEqual(policy.weight("a"), 1)

    def test_empty(self) -> None:
        """
        A policy may start empty or become empty; it then picks L{None},
        and picks again once a backend is added.
        """
        for policy in self.all_policies([]):
            self.assertIsNone(policy.pick(b"k", always))
            policy.add("a", 1)
            self.assertEqual(policy.pick(b"k", always), "a")
            policy.remove("a")
            self.assertIsNone(policy.pick(None, always))


class WeightedRoundRobinTests(SynchronousTestCase):
    def test_smooth_order(self) -> None:
        """
        Weights 5, 1, 1 give nginx's smooth order C{a a b a c a a}, repeated,
        not five C{a}s in a row.
        """
        policy = WeightedRoundRobin([("a", 5), ("b", 1), ("c", 1)])
        self.assertEqual("".join(picks(policy, 14)), "aabacaa" * 2)

    def test_equal_weights(self) -> None:
        """
        Equal weights rotate in order; the key is ignored.
        """
        policy = WeightedRoundRobin([("a", 1), ("b", 1), ("c", 1)])
        self.assertEqual("".join(picks(policy, 6, key=b"k")), "abcabc")

    def test_unavailable_skipped(self) -> None:
        """
        An unavailable backend is never picked and the others share its
        turns by weight; once available again it is picked in turn.
        """
        policy = WeightedRoundRobin([("a", 5), ("b", 1), ("c", 1)])
        without_b = picks(policy, 60, except_("b"))
        self.assertEqual(Counter(without_b), {"a": 50, "c": 10})
        self.assertEqual(Counter(picks(policy, 700)), {"a": 500, "b": 100, "c": 100})

    def test_set_weight(self) -> None:
        """
        A new weight takes effect at once: set before any pick, the order is
        the same as if built with it; set midway, the next 7,000 picks follow
        the new weights to within one pick.
        """
        policy = WeightedRoundRobin([("a", 1), ("b", 1), ("c", 1)])
        policy.set_weight("a", 5)
        self.assertEqual("".join(picks(policy, 7)), "aabacaa")
        picks(policy, 3)
        policy.set_weight("a", 1)
        policy.set_weight("c", 5)
        counts = Counter(picks(policy, 7000))
        self.assertEqual(set(counts), {"a", "b", "c"})
        for backend, expected in (("a", 1000), ("b", 1000), ("c", 5000)):
            self.assertApproximates(counts[backend], expected, 1)

    def test_add_remove(self) -> None:
        """
        An added backend takes its share; a removed one is never picked.
        """
        policy = WeightedRoundRobin([("a", 1), ("b", 1)])
        picks(policy, 3)
        policy.add("c", 2)
        self.assertEqual(Counter(picks(policy, 400)), {"a": 100, "b": 100, "c": 200})
        policy.remove("a")
        self.assertEqual(Counter(picks(policy, 300)), {"b": 100, "c": 200})

    def test_all_unavailable(self) -> None:
        """
        With no backend available, L{None}; the schedule is not disturbed.
        """
        policy = WeightedRoundRobin([("a", 5), ("b", 1), ("c", 1)])
        self.assertEqual(picks(policy, 3, lambda b: False), [None] * 3)
        self.assertEqual("".join(picks(policy, 7)), "aabacaa")


class LeastOutstandingTests(SynchronousTestCase):
    def policy(self, weights: Dict[str, int], outstanding: Dict[str, int],
               seed: int = 0) -> LeastOutstanding:
        return LeastOutstanding(list(weights.items()), outstanding.__getitem__,
                                rng=random.Random(seed))

    def test_two_backends_less_loaded_wins(self) -> None:
        """
        With two backends the two draws are both of them, so the less loaded
        one is always picked, however lightly it is less loaded.
        """
        policy = self.policy({"a": 1, "b": 1}, {"a": 10, "b": 9})
        self.assertEqual(set(picks(policy, 1000)), {"b"})

    def test_most_loaded_never_picked(self) -> None:
        """
        With three equal backends loaded 10, 5 and 0, the most loaded loses
        every pair it is drawn in, so is never picked; the idle one wins
        whenever drawn (2 pairs of 3: 2/3 of picks) and the middle one the
        rest (1/3).
        """
        policy = self.policy({"a": 1, "b": 1, "c": 1}, {"a": 10, "b": 5, "c": 0})
        counts = Counter(picks(policy, 30000))
        self.assertNotIn("a", counts)
        self.assertApproximates(counts["c"] / 30000, 2 / 3, 0.02)
        self.assertApproximates(counts["b"] / 30000, 1 / 3, 0.02)

    def test_load_per_weight(self) -> None:
        """
        Load is outstanding requests per unit of weight: 4 outstanding on
        weight 4 is less load than 2 on weight 1.
        """
        policy = self.policy({"a": 4, "b": 1}, {"a": 4, "b": 2})
        self.assertEqual(set(picks(policy, 1000)), {"a"})

    def test_ties_to_first_drawn(self) -> None:
        """
        On equal load per weight the first backend drawn wins, so idle
        backends are picked as often as they are drawn first: in proportion
        to their weights.
        """
        policy = self.policy({"a": 6, "b": 3, "c": 1}, {"a": 0, "b": 0, "c": 0})
        counts = Counter(picks(policy, 30000))
        for backend, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
            self.assertApproximates(counts[backend] / 30000, share, 0.015)
        # Equal load per weight, not equal counts: 2/2 ties with 1/1.
        policy = self.policy({"a": 2, "b": 1}, {"a": 2, "b": 1})
        self.assertApproximates(picks(policy, 30000).count("a") / 30000, 2 / 3, 0.015)

    def test_weights_in_draws(self) -> None:
        """
        Draws are weighted: with the light backends busy and the heavy one
        a little loaded, the heavy one wins whenever drawn, which (drawing two
        of three) it is in all but the draws of both light ones, in either
        order: 1 - 2 * (1/10 * 1/9) of picks.
        """
        policy = self.policy({"a": 8, "b": 1, "c": 1}, {"a": 1, "b": 5, "c": 5})
        share = picks(policy, 30000).count("a") / 30000
        self.assertApproximates(share, 1 - 2 / 90, 0.005)

    def test_unavailable_never_drawn(self) -> None:
        """
        An unavailable backend is not picked however idle; with one backend
        available it is picked however loaded; with none, L{None}.
        """
        policy = self.policy({"a": 1, "b": 1, "c": 1}, {"a": 0, "b": 50, "c": 60})
        self.assertEqual(Counter(picks(policy, 3000, except_("a"))).keys(), {"b"})
        self.assertEqual(set(picks(policy, 100, except_("a", "b"))), {"c"})
        self.assertEqual(set(picks(policy, 10, except_("a", "b", "c"))), {None})

    def test_seeded(self) -> None:
        """
        With the same seed two policies pick the same sequence; another seed
        gives another sequence.
        """
        weights = {n: i + 1 for i, n in enumerate("abcdef")}
        load = {n: 0 for n in weights}
        one = picks(self.policy(weights, load, seed=7), 1000)
        self.assertEqual(one, picks(self.policy(weights, load, seed=7), 1000))
        self.assertNotEqual(one, picks(self.policy(weights, load, seed=8), 1000))


class KetamaTests(SynchronousTestCase):
    def test_hash_pinned(self) -> None:
        """
        L{ketama_hash} is the first four bytes of the key's MD5 digest read
        as a little-endian unsigned int: checked against a digest computed
        here and against a literal (md5("foo") starts ac bd 18 db).
        """
        for key in (b"foo", b"", b"user:1000", bytes(range(256))):
            digest = md5(key).digest()
            expected = digest[0] | digest[1] << 8 | digest[2] << 16 | digest[3] << 24
            self.assertEqual(ketama_hash(key), expected)
        self.assertEqual(ketama_hash(b"foo"), 0xDB18BDAC)

    def test_points_are_libketama(self) -> None:
        """
        A backend of weight w gets the 4 little-endian words of each of the
        40 * w digests of C{"NAME-I"}, and the ring is exactly those points.
        """
        expected = []
        for i in range(80):
            digest = md5(f"cache-1:11211-{i}".encode()).digest()
            expected.extend(struct.unpack("<IIII", digest))
        self.assertEqual(ketama_points("cache-1:11211", 2), expected)
        self.assertEqual(len(expected), 320)
        # With one backend, every key goes to it.
        policy = ConsistentHash([("cache-1:11211", 2)])
        self.assertEqual(set(policy.pick(k, always) for k in KEYS[:100]), {"cache-1:11211"})


class ConsistentHashTests(SynchronousTestCase):
    def test_same_key_same_backend(self) -> None:
        """
        A key always goes to the same backend: across picks, and across
        policies built with the backends in another order.
        """
        pairs = [(n, 1) for n in names(5)]
        one = ConsistentHash(pairs)
        other = ConsistentHash(list(reversed(pairs)))
        first = mapping(one)
        self.assertEqual(first, mapping(one))
        self.assertEqual(first, mapping(other))
        self.assertEqual(len(set(first.values())), 5)

    def test_wraps_around(self) -> None:
        """
        A key hashing past the last point goes to the owner of the first
        point.
        """
        backends = names(2)
        owner_of = {p: b for b in backends for p in ketama_points(b, 1)}
        top, bottom = max(owner_of), min(owner_of)
        key = next(k for k in (b"wrap:%d" % i for i in range(10 ** 6))
                   if ketama_hash(k) > top)
        policy = ConsistentHash([(b, 1) for b in backends])
        self.assertEqual(policy.pick(key, always), owner_of[bottom])

    def test_equal_points(self) -> None:
        """
        Two backends with a point in common ("node-546" and "node-699" share
        1410088479): a key landing on it goes to the first by name, whatever
        order the backends were added in, and to the other when the first is
        unavailable.
        """
        shared = 1410088479
        a, b = "node-546", "node-699"
        self.assertIn(shared, ketama_points(a, 1))
        self.assertIn(shared, ketama_points(b, 1))
        below = max(p for p in ketama_points(a, 1) + ketama_points(b, 1) if p < shared)
        key = next(k for k in (b"tie:%d" % i for i in range(10 ** 6))
                   if below < ketama_hash(k) <= shared)
        for order in ([(a, 1), (b, 1)], [(b, 1), (a, 1)]):
            policy = ConsistentHash(order)
            self.assertEqual(policy.pick(key, always), a)
            self.assertEqual(policy.pick(key, except_(a)), b)

    def test_remove_moves_only_its_keys(self) -> None:
        """
        For 3, 5 and 10 backends and 10,000 keys, removing any one backend
        moves exactly the keys it owned, about 1/N of them, and every other
        key stays; adding it back restores the mapping exactly.
        """
        for n in (3, 5, 10):
            backends = names(n)
            policy = ConsistentHash([(b, 1) for b in backends])
            before = mapping(policy)
            for gone in backends:
                policy.remove(gone)
                after = mapping(policy)
                moved = {k for k in KEYS if after[k] != before[k]}
                self.assertEqual(moved, {k for k in KEYS if before[k] == gone})
                self.assertNotIn(gone, after.values())
                share = len(moved) / len(KEYS)
                self.assertTrue(0.5 / n <= share <= 1.6 / n, (n, gone, share))
                policy.add(gone, 1)
                self.assertEqual(mapping(policy), before)

    def test_unavailable_moves_only_its_keys(self) -> None:
        """
        A backend marked unavailable loses exactly its keys, each to where it
        would go were the backend removed, and they all come back when it is
        available again.
        """
        for n in (3, 5, 10):
            backends = names(n)
            policy = ConsistentHash([(b, 1) for b in backends])
            before = mapping(policy)
            down = backends[1]
            during = mapping(policy, except_(down))
            self.assertEqual({k for k in KEYS if during[k] != before[k]},
                             {k for k in KEYS if before[k] == down})
            self.assertEqual(during, mapping(ConsistentHash(
                [(b, 1) for b in backends if b != down])))
            self.assertEqual(mapping(policy), before)

    def test_two_unavailable(self) -> None:
        """
        With two backends down at once the walk skips both, landing where it
        would with both removed; with all down, L{None}.
        """
        backends = names(5)
        policy = ConsistentHash([(b, 1) for b in backends])
        down = except_(backends[0], backends[3])
        self.assertEqual(mapping(policy, down), mapping(ConsistentHash(
            [(b, 1) for b in backends if down(b)])))
        self.assertEqual(set(mapping(policy, lambda b: False).values()), {None})

    def test_weights(self) -> None:
        """
        A backend of weight 2 gets twice the keys of one of weight 1, to
        within 25%, whichever backend it is, among 3, 5 or 10.
        """
        for n in (3, 5, 10):
            backends = names(n)
            for heavy in backends:
                policy = ConsistentHash([(b, 2 if b == heavy else 1) for b in backends])
                counts = Counter(mapping(policy).values())
                mean_light = (len(KEYS) - counts[heavy]) / (n - 1)
                ratio = counts[heavy] / mean_light
                self.assertTrue(1.5 <= ratio <= 2.5, (n, heavy, ratio))

    def test_set_weight_moves_only_to_it(self) -> None:
        """
        Raising one backend's weight moves keys only to it (its new points
        are added; no other backend's move); lowering it back restores the
        mapping.
        """
        backends = names(5)
        policy = ConsistentHash([(b, 1) for b in backends])
        before = mapping(policy)
        policy.set_weight(backends[2], 3)
        after = mapping(policy)
        moved = [k for k in KEYS if after[k] != before[k]]
        self.assertTrue(moved)
        self.assertEqual({after[k] for k in moved}, {backends[2]})
        policy.set_weight(backends[2], 1)
        self.assertEqual(mapping(policy), before)

    def test_even_distribution(self) -> None:
        """
        Over 10 equal backends, each gets within 25% of the mean share of
        10,000 keys.
        """
        policy = ConsistentHash([(b, 1) for b in names(10)])
        counts = Counter(mapping(policy).values())
        self.assertEqual(len(counts), 10)
        for backend, count in counts.items():
            self.assertTrue(750 <= count <= 1250, (backend, count))

    def test_no_key(self) -> None:
        """
        A request without a key goes to the first available backend on the
        ring from point 0: the owner of the lowest point, or, when it is
        unavailable, the next one clockwise.
        """
        backends = names(3)
        owner_of = {p: b for b in backends for p in ketama_points(b, 1)}
        ring = [owner_of[p] for p in sorted(owner_of)]
        policy = ConsistentHash([(b, 1) for b in backends])
        self.assertEqual(set(picks(policy, 10)), {ring[0]})
        second = next(b for b in ring if b != ring[0])
        self.assertEqual(policy.pick(None, except_(ring[0])), second)

    def test_name_of(self) -> None:
        """
        With C{name_of}, backends are placed by that name, not C{str}: the
        same keys go to objects named like the strings.  Two backends with
        one name are an error, and adding a clashing one leaves the ring as
        it was.
        """

        class Backend:
            def __init__(self, name: str) -> None:
                self.name = name

        objects = [Backend(n) for n in names(4)]
        policy = ConsistentHash([(o, 1) for o in objects], name_of=lambda o: o.name)
        by_name = ConsistentHash([(n, 1) for n in names(4)])
        before = mapping(policy)
        self.assertEqual({k: b.name for k, b in before.items()}, mapping(by_name))
        self.assertRaises(ValueError, ConsistentHash,
                          [(Backend("x"), 1), (Backend("x"), 1)], name_of=lambda o: o.name)
        self.assertRaises(ValueError, policy.add, Backend(objects[0].name), 1)
        self.assertEqual(policy.backends, objects)
        self.assertEqual(mapping(policy), before)

    def test_available_asked_once(self) -> None:
        """
        Walking past many points of unavailable backends asks about each
        backend at most once per pick.
        """
        policy = ConsistentHash([(b, 3) for b in names(10)])
        asked: List[Any] = []

        def available(backend: Any) -> bool:
            asked.append(backend)
            return False

        for key in KEYS[:200]:
            del asked[:]
            self.assertIsNone(policy.pick(key, available))
            self.assertEqual(sorted(asked), names(10))


class WeightedRandomTests(SynchronousTestCase):
    def test_only_available_weighted(self) -> None:
        """
        Picks are among available backends only, in proportion to their
        weights; with none available, L{None}.
        """
        policy = WeightedRandom([("a", 3), ("b", 1), ("c", 100)], rng=random.Random(3))
        counts = Counter(picks(policy, 40000, except_("c")))
        self.assertEqual(set(counts), {"a", "b"})
        self.assertApproximates(counts["a"] / 40000, 0.75, 0.01)
        self.assertIsNone(policy.pick(None, lambda b: False))

    def test_seeded(self) -> None:
        """
        With the same seed two policies pick the same sequence.
        """
        pairs = [(n, i + 1) for i, n in enumerate("abcde")]
        self.assertEqual(picks(WeightedRandom(pairs, rng=random.Random(5)), 500),
                         picks(WeightedRandom(pairs, rng=random.Random(5)), 500))


# -- Properties of every policy ------------------------------------------------

backend_sets = st.lists(
    st.tuples(st.integers(1, 20), st.booleans(), st.integers(0, 50)),
    max_size=8)
keys = st.one_of(st.none(), st.binary(max_size=20))


def build(name: str, spec: List[Tuple[int, bool, int]], seed: int
          ) -> Tuple[Policy, Dict[str, bool]]:
    """
    A policy over backends C{"b0"}, C{"b1"}... with the weights, availability
    and outstanding counts in C{spec}, and that availability as a dict.
    """
    up = {f"b{i}": ok for i, (_, ok, _) in enumerate(spec)}
    load = {f"b{i}": n for i, (_, _, n) in enumerate(spec)}
    policy = make_policy(name, [(f"b{i}", w) for i, (w, _, _) in enumerate(spec)],
                         outstanding=lambda b: load.get(b, 0), rng=random.Random(seed))
    return policy, up


class PropertyTests(SynchronousTestCase):
    def check(self, policy: Policy, up: Dict[str, bool], key: Optional[bytes]) -> None:
        asked: List[Any] = []

        def available(backend: Any) -> bool:
            asked.append(backend)
            return up[backend]

        got = policy.pick(key, available)
        if any(up[b] for b in policy.backends):
            self.assertIn(got, policy.backends)
            self.assertTrue(up[got])
        else:
            self.assertIsNone(got)
        self.assertEqual(len(asked), len(set(asked)))

    @PROPERTY
    @given(backend_sets, st.lists(keys, min_size=1, max_size=5), st.integers(0, 2 ** 32))
    def test_pick_available_or_none(self, spec: List[Tuple[int, bool, int]],
                                    keys: List[Optional[bytes]], seed: int) -> None:
        """
        For any backends, weights, availability and outstanding counts, every
        policy picks an available backend, or L{None} exactly when none is
        available, asking about each backend at most once per pick.
        """
        for name in POLICIES:
            policy, up = build(name, spec, seed)
            for key in keys:
                self.check(policy, up, key)

    @PROPERTY
    @given(backend_sets, st.lists(st.tuples(
        st.sampled_from(["add", "remove", "set_weight", "flip"]),
        st.integers(0, 9), st.integers(1, 20)), max_size=10),
        keys, st.integers(0, 2 ** 32))
    def test_after_changes(self, spec: List[Tuple[int, bool, int]],
                           changes: List[Tuple[str, int, int]],
                           key: Optional[bytes], seed: int) -> None:
        """
        After any sequence of adds, removes, weight changes and availability
        flips, each pick is still an available backend or L{None} exactly
        when none is available, and the set is what the changes made it.
        """
        for name in POLICIES:
            policy, up = build(name, spec, seed)
            model = {f"b{i}": w for i, (w, _, _) in enumerate(spec)}
            for op, which, weight in changes:
                backend = f"b{which}"
                if op == "add" and backend not in model:
                    policy.add(backend, weight)
                    model[backend] = weight
                    up.setdefault(backend, True)
                elif op == "remove" and backend in model:
                    policy.remove(backend)
                    del model[backend]
                elif op == "set_weight" and backend in model:
                    policy.set_weight(backend, weight)
                    model[backend] = weight
                elif op == "flip" and backend in up:
                    up[backend] = not up[backend]
                self.assertEqual(policy.backends, list(model))
                self.assertEqual({b: policy.weight(b) for b in model}, model)
                self.check(policy, up, key)
