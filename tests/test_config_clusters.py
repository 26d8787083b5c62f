"""
Tests of listeners and clusters in the configuration: the C{[[listener]]},
C{[[cluster]]} and C{[[cluster.backend]]} tables of the TOML file, the single
C{default} cluster built from the flat C{listen}, C{backend} and C{demo} keys,
per-cluster overrides read with L{ClusterConfig.setting}, and the one-line
error for every kind of mistake.  Options are parsed for real with
L{ProxyOptions.parseOptions} and files are real files.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional


from poolproxy.config import (
    CLUSTER_OVERRIDES,
    SETTINGS_BY_NAME,
    BackendConfig,
    BackendTLS,
    ClusterConfig,
    ConfigError,
    ListenerConfig,
    ProxyConfig,
    build_config,
)
from poolproxy.tap import Options
from tests.test_config import BASE, ConfigTestCase, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "configuration.md")

# A valid file with two clusters, each with a listener; tests add to it.
TWO_CLUSTERS = """\
[[listener]]
name = "cache"
listen = "tcp:6380:interface=127.0.0.1"
cluster = "cache"

[[listener]]
listen = "tcp:8080:interface=127.0.0.1"
cluster = "web"

[[cluster]]
name = "cache"
protocol = "redis"
[[cluster.backend]]
address = "10.0.0.1:6379"

[[cluster]]
name = "web"
protocol = "http"
[[cluster.backend]]
address = "10.0.1.1:8000"
"""


def cluster_file(body: str, listen: str = 'listen = "tcp:6380"\n') -> str:
    """
    A file of one [[cluster]] table named "c" whose keys are C{body}, with a
    backend unless C{body} gives [[cluster.backend]] tables itself.
    """
    text = listen + '[[cluster]]\nname = "c"\n' + body
    if "[[cluster.backend]]" not in body:
        text += '[[cluster.backend]]\naddress = "10.0.0.1:6379"\n'
    return text


class ClusterConfigTestCase(ConfigTestCase):
    def parse_file(self, text: str, *argv: str) -> ProxyConfig:
        """Parse a configuration of the file C{text} and the flags C{argv}."""
        return parse(["--config", self.write_toml(text)] + list(argv))

    def assertFileError(self, toml: str, key: str, *fragments: str,
                        argv: Optional[List[str]] = None) -> str:
        """
        As L{ConfigTestCase.assertFileError}, without the flags of a listener
        and a backend unless C{argv} gives them: these files have their own.
        """
        return super().assertFileError(toml, key, *fragments, argv=argv or [])


class FlatKeysTests(ClusterConfigTestCase):
    def test_flags_make_default_cluster(self) -> None:
        """
        --listen and --backend flags make one cluster named "default" of
        weight-1 backends named by backend_name(), with the top-level protocol,
        balance and hash_key and no overrides, and one listener per --listen,
        named by its endpoint, routing to it.
        """
        config = parse(["--listen", "tcp:6380", "--listen", "tcp:6381",
                        "--backend", "10.0.0.1:6379", "--backend", "tcp:host=10.0.0.2:port=6379",
                        "--protocol", "redis", "--balance", "random"])
        self.assertEqual(config.clusters, (ClusterConfig(
            "default", "redis", "random", None,
            (BackendConfig("10.0.0.1:6379", "10.0.0.1:6379", 1),
             BackendConfig("10.0.0.2:6379", "tcp:host=10.0.0.2:port=6379", 1)),
            {}),))
        self.assertEqual(config.listeners, (ListenerConfig("tcp:6380", "tcp:6380", "default"),
                                            ListenerConfig("tcp:6381", "tcp:6381", "default")))
        self.assertEqual(dict(config.clusters[0].overrides), {})
        self.assertEqual(config.sources["listeners"], "--listen")
        self.assertEqual(config.sources["clusters"], "--backend")
        # The flat keys keep what was given.
        self.assertEqual(config.backend, ("10.0.0.1:6379", "tcp:host=10.0.0.2:port=6379"))

    def test_flat_keys_in_file(self) -> None:
        """
        The flat listen and backend keys of the file make the default cluster
        too, inheriting the file's protocol and hash_key; sources name the keys.
        """
        path = self.write_toml('listen = "tcp:7000"\nbackend = ["h1:80", "h2:80"]\n'
                               'protocol = "http"\nhash_key = "path"\n')
        config = parse(["--config", path])
        (cluster,) = config.clusters
        self.assertEqual((cluster.name, cluster.protocol, cluster.balance, cluster.hash_key),
                         ("default", "http", None, "path"))
        self.assertEqual([b.name for b in cluster.backends], ["h1:80", "h2:80"])
        self.assertEqual(config.listeners, (ListenerConfig("tcp:7000", "tcp:7000", "default"),))
        self.assertEqual(config.sources["clusters"], f"backend (in {path})")
        self.assertEqual(config.sources["listeners"], f"listen (in {path})")

    def test_demo_is_the_default_backend(self) -> None:
        """
        With --demo and no backend, the default cluster's one backend is the
        demo server's address (127.0.0.1 unless an interface is given).
        """
        config = parse(["--listen", "tcp:6380", "--demo", "tcp:8081"])
        self.assertEqual(config.clusters[0].backends,
                         (BackendConfig("127.0.0.1:8081", "127.0.0.1:8081", 1),))
        self.assertEqual(config.sources["clusters"], "--demo")
        config = parse(["--listen", "tcp:6380", "--demo", "tcp:8082:interface=127.0.0.2"])
        self.assertEqual(config.clusters[0].backends[0].address, "127.0.0.2:8082")

    def test_demo_with_backend(self) -> None:
        """
        With a backend given, the demo server is not one of the cluster's
        backends (as before clusters existed).
        """
        config = parse(BASE + ["--demo", "tcp:8081"])
        self.assertEqual([b.address for b in config.clusters[0].backends], ["127.0.0.1:6379"])

    def test_duplicate_flat_backend(self) -> None:
        """
        Two --backend values with the same name (here the same address written
        two ways) are refused: names identify backends in metrics.
        """
        self.assertConfigError(["--listen", "tcp:6380", "--backend", "10.0.0.1:6379",
                                "--backend", "tcp:host=10.0.0.1:port=6379"],
                               "--backend: duplicate backend name '10.0.0.1:6379'")

    def test_duplicate_flat_listen(self) -> None:
        """
        The same --listen endpoint twice is refused: listener names are unique.
        """
        self.assertConfigError(BASE + ["--listen", "tcp:6380:interface=127.0.0.1"],
                               "--listen: duplicate listener 'tcp:6380:interface=127.0.0.1'")

    def test_listener_tables_with_flat_backend(self) -> None:
        """
        [[listener]] tables may route to the default cluster built from the
        flat backend key, naming it or not.
        """
        config = self.parse_file('backend = ["10.0.0.1:6379"]\n'
                                 '[[listener]]\nlisten = "tcp:6380"\n'
                                 '[[listener]]\nname = "b"\nlisten = "tcp:6381"\ncluster = "default"\n')
        self.assertEqual(config.listeners, (ListenerConfig("tcp:6380", "tcp:6380", "default"),
                                            ListenerConfig("b", "tcp:6381", "default")))
        self.assertEqual(config.listen, ())

    def test_direct_construction(self) -> None:
        """
        A ProxyConfig constructed directly (embedding, tests) derives its
        listeners and clusters from the flat keys; without a backend it has
        none.
        """
        config = ProxyConfig(listen=("tcp:0",), backend=("h:1",))
        self.assertEqual(config.listeners, (ListenerConfig("tcp:0", "tcp:0", "default"),))
        self.assertEqual(config.clusters[0].backends, (BackendConfig("h:1", "h:1", 1),))
        self.assertEqual((ProxyConfig().listeners, ProxyConfig().clusters), ((), ()))

    def test_setting_without_overrides(self) -> None:
        """
        setting() on a cluster without overrides gives the top-level values,
        including those set by flags.
        """
        config = parse(BASE + ["--pool-size", "7", "--check-path", "/up"])
        cluster = config.cluster("default")
        self.assertEqual(cluster.setting("pool_size", config), 7)
        self.assertEqual(cluster.setting("check_path", config), "/up")
        self.assertEqual(cluster.setting("breaker_failures", config), 5)


class ClusterFileTests(ClusterConfigTestCase):
    FULL = """\
protocol = "redis"
pool_size = 20
balance = "round_robin"

[[listener]]
name = "cache"
listen = "tcp:6380:interface=127.0.0.1"
cluster = "cache"

[[listener]]
listen = "tcp:8080:interface=127.0.0.1"
cluster = "web"

[[cluster]]
name = "cache"
balance = "consistent_hash"
pool_size = 8
mux_connections = 4
[[cluster.backend]]
address = "10.0.0.1:6379"
name = "redis-a"
weight = 2
[[cluster.backend]]
address = "tcp:host=10.0.0.2:port=6379"

[[cluster]]
name = "web"
protocol = "http"
hash_key = "header:X-User"
check_path = "/healthz"
request_timeout = 10
[[cluster.backend]]
address = "10.0.1.1:8000"
weight = 3
[[cluster.backend]]
address = "unix:path=/run/app.sock"
name = "local"
"""

    def test_full_file(self) -> None:
        """
        A file of two [[cluster]] tables with weighted backends and two
        [[listener]] tables gives exactly those clusters and listeners, in file
        order, with defaults filled in (names, weight 1, inherited protocol and
        balance) and the flat listen and backend keys empty.
        """
        path = self.write_toml(self.FULL)
        config = parse(["--config", path])
        self.assertEqual(config.clusters, (
            ClusterConfig("cache", "redis", "consistent_hash", None, (
                BackendConfig("redis-a", "10.0.0.1:6379", 2),
                BackendConfig("10.0.0.2:6379", "tcp:host=10.0.0.2:port=6379", 1),
            ), {"pool_size": 8, "mux_connections": 4}),
            ClusterConfig("web", "http", "round_robin", "header:X-User", (
                BackendConfig("10.0.1.1:8000", "10.0.1.1:8000", 3),
                BackendConfig("local", "unix:path=/run/app.sock", 1),
            ), {"check_path": "/healthz", "request_timeout": 10.0}),
        ))
        self.assertEqual(config.listeners, (
            ListenerConfig("cache", "tcp:6380:interface=127.0.0.1", "cache"),
            ListenerConfig("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1", "web"),
        ))
        self.assertEqual((config.listen, config.backend), ((), ()))
        self.assertEqual(config.sources["clusters"], f"[[cluster]] (in {path})")
        self.assertEqual(config.sources["listeners"], f"[[listener]] (in {path})")
        self.assertIs(config.cluster("web"), config.clusters[1])
        self.assertRaises(KeyError, config.cluster, "nope")

    def test_equal_and_hashable(self) -> None:
        """
        The same file gives equal configurations, which hash (the overrides
        mapping does not take part in the hash).
        """
        text = self.FULL
        first, second = self.parse_file(text), self.parse_file(text)
        self.assertEqual(first, second)
        self.assertEqual(hash(first), hash(second))
        self.assertNotEqual(first, self.parse_file(text.replace("weight = 2", "weight = 5")))

    def test_frozen(self) -> None:
        """
        The configuration cannot be changed: the dataclasses are frozen and the
        overrides mapping is read-only.
        """
        cluster = self.parse_file(self.FULL).clusters[0]
        with self.assertRaises(AttributeError):
            cluster.name = "x"  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            cluster.backends[0].weight = 9  # type: ignore[misc]
        with self.assertRaises(TypeError):
            cluster.overrides["pool_size"] = 1  # type: ignore[index]

    def test_docs_example(self) -> None:
        """
        The example file of docs/configuration.md's "Listeners and clusters"
        section is valid: a redis cluster of two weighted backends and an http
        cluster, each on its own listener.
        """
        with open(DOCS, encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("## Listeners and clusters"):]
        example = re.search(r"```toml\n(.*?)```", section, re.S)
        assert example is not None
        config = self.parse_file(example.group(1))
        self.assertEqual([(c.name, c.protocol) for c in config.clusters],
                         [("cache", "redis"), ("web", "http")])
        self.assertEqual([b.weight for b in config.clusters[0].backends], [2, 1])
        self.assertEqual([listener.cluster for listener in config.listeners], ["cache", "web"])

    def test_one_cluster_listener_defaults(self) -> None:
        """
        With exactly one cluster, a listener needs only listen: its cluster is
        that one and its name its endpoint.  A cluster without protocol,
        balance or hash_key takes the top-level ones (balance may stay None:
        the codec mode's default).
        """
        config = self.parse_file('[[listener]]\nlisten = "tcp:6380"\n' + cluster_file("", listen=""))
        self.assertEqual(config.listeners, (ListenerConfig("tcp:6380", "tcp:6380", "c"),))
        self.assertEqual((config.clusters[0].protocol, config.clusters[0].balance,
                          config.clusters[0].hash_key), ("tcp", None, None))

    def test_flat_listen_routes_to_one_cluster(self) -> None:
        """
        With one [[cluster]], the flat listen key (or --listen) routes to it.
        """
        config = self.parse_file(cluster_file(""))
        self.assertEqual(config.listeners, (ListenerConfig("tcp:6380", "tcp:6380", "c"),))

    def test_listen_flag_overrides_listener_tables(self) -> None:
        """
        --listen flags replace the file's [[listener]] tables, routing to the
        one cluster; the tables are still checked.
        """
        text = '[[listener]]\nlisten = "tcp:7000"\n' + cluster_file("", listen="")
        config = self.parse_file(text, "--listen", "tcp:7001", "--listen", "tcp:7002")
        self.assertEqual([(x.endpoint, x.cluster) for x in config.listeners],
                         [("tcp:7001", "c"), ("tcp:7002", "c")])
        self.assertEqual(config.sources["listeners"], "--listen")
        path = self.write_toml('[[listener]]\nlisten = "tcp:7000"\ncluster = "nope"\n'
                               + cluster_file("", listen=""))
        self.assertConfigError(["--config", path, "--listen", "tcp:7001"], "unknown cluster 'nope'")

    def test_listen_flag_with_several_clusters(self) -> None:
        """
        --listen cannot say which of several clusters to route to.
        """
        self.assertConfigError(["--config", self.write_toml(TWO_CLUSTERS), "--listen", "tcp:7001"],
                               "--listen: cannot tell which of the clusters cache, web to route to",
                               "[[listener]]")

    def test_flat_listen_key_with_several_clusters(self) -> None:
        """
        Neither can the flat listen key of the file.
        """
        text = 'listen = "tcp:7000"\n' + TWO_CLUSTERS[TWO_CLUSTERS.index("[[cluster]]"):]
        self.assertFileError(text, "listen", "cannot tell which of the clusters cache, web")

    def test_no_listener(self) -> None:
        """
        [[cluster]] tables without any listener are refused as before.
        """
        path = self.write_toml(cluster_file("", listen=""))
        self.assertConfigError(["--config", path], "--listen: at least one listener is required")

    def test_same_backend_name_in_two_clusters(self) -> None:
        """
        Backend names need only be unique within their cluster.
        """
        config = self.parse_file(TWO_CLUSTERS.replace("10.0.1.1:8000", "10.0.0.1:6379"))
        self.assertEqual([c.backends[0].name for c in config.clusters], ["10.0.0.1:6379"] * 2)

    def test_twistd_error(self) -> None:
        """
        Under twistd a cluster error is one line: poolproxy: error: and the
        table's key and the file.
        """
        path = self.write_toml(cluster_file('[[cluster.backend]]\naddress = "h:1"\nweight = 0\n'))
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path])
        self.assertEqual(e.code, f"poolproxy: error: cluster[0].backend[0].weight (in {path}): "
                                 "must be at least 1, got 0")

    def test_without_file_name(self) -> None:
        """
        build_config() without a file name (embedding) names table keys alone.
        """
        e = self.assertRaises(ConfigError, build_config,
                              {"listen": ["tcp:1"], "cluster": [{"name": "c"}]}, {})
        self.assertEqual(str(e), "cluster[0].backend: at least one [[cluster.backend]] "
                                 "table is required")


class OverrideTests(ClusterConfigTestCase):
    def test_setting_resolves_overrides(self) -> None:
        """
        setting() gives a cluster's own value for the keys it overrides and
        the top-level (file or flag) value for the others; for protocol,
        balance and hash_key it gives the cluster's fields.
        """
        text = cluster_file("pool_size = 4\ncheck_interval = 0\ncheck_path = \"/ping\"\n"
                            "protocol = \"http\"\nbalance = \"random\"\n")
        config = self.parse_file("pool_size = 30\ncheck_rise = 5\n" + text, "--check-fall", "9")
        cluster = config.clusters[0]
        self.assertEqual(dict(cluster.overrides),
                         {"pool_size": 4, "check_interval": 0.0, "check_path": "/ping"})
        self.assertEqual(cluster.setting("pool_size", config), 4)
        self.assertEqual(config.pool_size, 30)
        self.assertEqual(cluster.setting("check_interval", config), 0.0)
        self.assertIsInstance(cluster.setting("check_interval", config), float)
        self.assertEqual(cluster.setting("check_path", config), "/ping")
        self.assertEqual(cluster.setting("check_rise", config), 5)
        self.assertEqual(cluster.setting("check_fall", config), 9)
        self.assertEqual(cluster.setting("queue_size", config), 1000)
        self.assertEqual((cluster.setting("protocol", config), cluster.setting("balance", config),
                          cluster.setting("hash_key", config)), ("http", "random", None))

    def test_cluster_override_beats_flag(self) -> None:
        """
        A flag sets the top-level value, which clusters inherit unless they
        override the key.
        """
        config = self.parse_file(TWO_CLUSTERS.replace('protocol = "http"\n',
                                                      'protocol = "http"\npool_size = 3\n'),
                                 "--pool-size", "50")
        self.assertEqual([c.setting("pool_size", config) for c in config.clusters], [50, 3])

    def test_every_override_accepted(self) -> None:
        """
        Every key of CLUSTER_OVERRIDES may be set in a [[cluster]] table.
        """
        valid = {"pool_size": "10", "pool_min_idle": "1", "mux_connections": "2",
                 "request_timeout": "1.5", "check_interval": "1", "check_timeout": "0.5",
                 "check_rise": "1", "check_fall": "1", "check_path": '"/up"',
                 "breaker_failures": "0", "breaker_reset_timeout": "1",
                 "breaker_max_reset_timeout": "2", "max_ejected_percent": "100",
                 "hash_tag": '"{}"', "http_failures": '"gateway"',
                 "deny_commands": '["KEYS", "CLIENT KILL"]', "allow_commands": '["CONFIG"]',
                 "unknown_commands": '"pin"', "backend_tls": "{ verify = false }",
                 "pool_mode": '"session"', "max_prepared_statements": "50",
                 "shard_on_eject": '"keep"'}
        self.assertEqual(sorted(valid), sorted(CLUSTER_OVERRIDES))
        config = self.parse_file(cluster_file("".join(f"{k} = {v}\n" for k, v in valid.items())))
        self.assertEqual(sorted(config.clusters[0].overrides), sorted(CLUSTER_OVERRIDES))
        for key in CLUSTER_OVERRIDES:
            self.assertIsInstance(config.clusters[0].overrides[key], {
                "int": int, "float": float, "str": str, "names": tuple,
                "tls": BackendTLS}[SETTINGS_BY_NAME[key].kind])

    def test_override_values_checked(self) -> None:
        """
        Overrides are checked exactly like the top-level keys, with the same
        messages, naming cluster[N].KEY and the file.
        """
        for body, key, fragment in [
            ("pool_size = 0", "pool_size", "must be at least 1, got 0"),
            ("pool_size = -2", "pool_size", "must be at least 1, got -2"),
            ('pool_size = "5"', "pool_size", "expected an integer, got '5'"),
            ("pool_size = true", "pool_size", "expected an integer, got True"),
            ("check_rise = 1.5", "check_rise", "expected an integer, got 1.5"),
            ("check_timeout = 0", "check_timeout", "must be greater than 0, got 0"),
            ("breaker_reset_timeout = 0", "breaker_reset_timeout", "must be greater than 0"),
            ("request_timeout = -1", "request_timeout", "must be at least 0, got -1"),
            ("check_interval = nan", "check_interval", "expected a finite number"),
            ("check_interval = false", "check_interval", "expected a number, got False"),
            ('check_path = ""', "check_path", "expected a non-empty string"),
            ("check_path = 3", "check_path", "expected a non-empty string, got 3"),
            ("max_ejected_percent = 101", "max_ejected_percent", "must be at most 100, got 101"),
            ('http_failures = "4xx"', "http_failures",
             "unknown value '4xx'; available: 5xx, gateway, none"),
        ]:
            self.assertFileError(cluster_file(body + "\n"), f"cluster[0].{key}", fragment)

    def test_override_pairs_checked(self) -> None:
        """
        The checks between keys use the cluster's values (override, else
        top-level) and name the key the cluster sets.
        """
        self.assertFileError(cluster_file("pool_min_idle = 11\n"), "cluster[0].pool_min_idle",
                             "must not exceed pool-size (10), got 11")
        self.assertFileError("pool_min_idle = 3\n" + cluster_file("pool_size = 2\n"),
                             "cluster[0].pool_size", "must be at least pool-min-idle (3), got 2")
        self.assertFileError(cluster_file('protocol = "redis"\npool_size = 1\n'),
                             "cluster[0].pool_size", "must be at least mux-connections (2), got 1")
        self.assertFileError(
            cluster_file('protocol = "redis"\npool_size = 4\nmux_connections = 5\n'),
            "cluster[0].mux_connections", "must not exceed pool-size (4), got 5")
        # A cluster whose clients do not share connections has no mux share.
        config = self.parse_file(cluster_file('protocol = "postgres"\npool_size = 1\n'))
        self.assertEqual(config.clusters[0].setting("pool_size", config), 1)
        self.assertFileError(cluster_file("breaker_max_reset_timeout = 2\n"),
                             "cluster[0].breaker_max_reset_timeout",
                             "must be at least breaker-reset-timeout (5), got 2")
        self.assertFileError(cluster_file("breaker_reset_timeout = 90\n"),
                             "cluster[0].breaker_reset_timeout",
                             "must not exceed breaker-max-reset-timeout (60), got 90")
        # Both keys set in the cluster: the message names the same key as at
        # the top level.
        self.assertFileError(cluster_file("breaker_reset_timeout = 10\nbreaker_max_reset_timeout = 8\n"),
                             "cluster[0].breaker_max_reset_timeout",
                             "must be at least breaker-reset-timeout (10), got 8")
        self.assertFileError(cluster_file("pool_size = 3\npool_min_idle = 4\n"),
                             "cluster[0].pool_min_idle", "must not exceed pool-size (3), got 4")
        # A cluster may fix what would be wrong at the top level for it alone.
        config = self.parse_file("pool_size = 4\n" + cluster_file("pool_size = 1\nmux_connections = 1\n"))
        self.assertEqual(config.clusters[0].setting("mux_connections", config), 1)

    def test_top_level_only_key(self) -> None:
        """
        A setting that cannot be set per cluster is refused in a [[cluster]]
        table, saying so.
        """
        self.assertFileError(cluster_file("pool_max_waiters = 3\n"), "cluster[0].pool_max_waiters",
                             "not a per-cluster setting (set it at the top level)",
                             "known keys are name, protocol, balance, hash_key, backend, pool_size")


class ClusterErrorTests(ClusterConfigTestCase):
    def test_unknown_cluster(self) -> None:
        """
        A listener naming a cluster that does not exist is refused, listing
        the clusters.
        """
        self.assertFileError(TWO_CLUSTERS.replace('cluster = "web"', 'cluster = "wbe"'),
                             "listener[1].cluster", "unknown cluster 'wbe'; clusters are cache, web")
        self.assertFileError('backend = "h:1"\n[[listener]]\nlisten = "tcp:1"\ncluster = "x"\n',
                             "listener[0].cluster", "unknown cluster 'x'; clusters are default")

    def test_listener_without_cluster(self) -> None:
        """
        With several clusters every listener must name one.
        """
        self.assertFileError(TWO_CLUSTERS.replace('cluster = "web"\n', ""), "listener[1].cluster",
                             "missing; required when there are several clusters (cache, web)")

    def test_duplicate_cluster(self) -> None:
        """
        Two clusters with the same name are refused, naming both.
        """
        self.assertFileError(TWO_CLUSTERS.replace('name = "web"', 'name = "cache"'),
                             "cluster[1].name", "duplicate cluster name 'cache' (also cluster[0])")

    def test_duplicate_listener(self) -> None:
        """
        Two listeners with the same name, given or taken from the endpoint,
        are refused.
        """
        self.assertFileError(TWO_CLUSTERS.replace('listen = "tcp:8080', 'name = "cache"\nlisten = "tcp:8080'),
                             "listener[1].name", "duplicate listener name 'cache' (also listener[0])")
        text = '[[listener]]\nlisten = "tcp:1"\n[[listener]]\nlisten = "tcp:1"\n'
        self.assertFileError(text + cluster_file("", listen=""), "listener[1].listen",
                             "duplicate listener name 'tcp:1' (also listener[0])")

    def test_duplicate_backend(self) -> None:
        """
        Two backends of one cluster with the same name, given or taken from
        the address, are refused.
        """
        two = ('[[cluster.backend]]\naddress = "10.0.0.1:6379"\nname = "a"\n'
               '[[cluster.backend]]\naddress = "10.0.0.2:6379"\nname = "a"\n')
        self.assertFileError(cluster_file(two), "cluster[0].backend[1].name",
                             "duplicate backend name 'a' in cluster 'c' (also cluster[0].backend[0])")
        two = ('[[cluster.backend]]\naddress = "10.0.0.1:6379"\n'
               '[[cluster.backend]]\naddress = "tcp:host=10.0.0.1:port=6379"\n')
        self.assertFileError(cluster_file(two), "cluster[0].backend[1].address",
                             "duplicate backend name '10.0.0.1:6379'")

    def test_cluster_without_backends(self) -> None:
        """
        A cluster needs at least one [[cluster.backend]] table.
        """
        text = 'listen = "tcp:1"\n[[cluster]]\nname = "c"\n'
        self.assertFileError(text, "cluster[0].backend",
                             "at least one [[cluster.backend]] table is required")
        self.assertFileError(text + "backend = []\n", "cluster[0].backend",
                             "at least one [[cluster.backend]] table is required")
        self.assertFileError(text + 'backend = ["h:1"]\n', "cluster[0].backend",
                             "expected [[cluster.backend]] tables, got ['h:1']")

    def test_cluster_tables_malformed(self) -> None:
        """
        cluster and listener must be arrays of tables: a single [cluster]
        table, a string or an empty array is refused.
        """
        self.assertFileError('listen = "tcp:1"\n[cluster]\nname = "c"\n', "cluster",
                             "expected [[cluster]] tables, got a single [cluster] table")
        self.assertFileError('backend = "h:1"\nlistener = "tcp:1"\n', "listener",
                             "expected [[listener]] tables, got 'tcp:1'")
        self.assertFileError('listen = "tcp:1"\ncluster = []\n', "cluster",
                             "at least one [[cluster]] table is required")

    def test_missing_names_and_addresses(self) -> None:
        """
        A cluster needs a name, a backend an address and a listener an
        endpoint; names must be non-empty strings.
        """
        self.assertFileError('listen = "tcp:1"\n[[cluster]]\n[[cluster.backend]]\naddress = "h:1"\n',
                             "cluster[0].name", "missing; every [[cluster]] table needs name")
        self.assertFileError(cluster_file('[[cluster.backend]]\nname = "a"\n'),
                             "cluster[0].backend[0].address",
                             "missing; every [[cluster.backend]] table needs address")
        self.assertFileError('backend = "h:1"\n[[listener]]\nname = "x"\n', "listener[0].listen",
                             "missing; every [[listener]] table needs listen")
        self.assertFileError(cluster_file("").replace('name = "c"', "name = 3"), "cluster[0].name",
                             "expected a non-empty string, got 3")
        self.assertFileError(cluster_file("").replace('name = "c"', 'name = " "'), "cluster[0].name",
                             "expected a non-empty string")

    def test_unknown_keys(self) -> None:
        """
        Unknown keys in [[listener]], [[cluster]] and [[cluster.backend]]
        tables are refused, listing the known ones.
        """
        self.assertFileError(cluster_file("pool_sise = 3\n"), "cluster[0].pool_sise",
                             "unknown key in [[cluster]]; known keys are name, protocol")
        self.assertFileError(cluster_file('[[cluster.backend]]\naddress = "h:1"\nport = 2\n'),
                             "cluster[0].backend[0].port",
                             "unknown key in [[cluster.backend]]; known keys are address, name, weight")
        self.assertFileError(TWO_CLUSTERS.replace('name = "cache"\nlisten', 'name = "cache"\nprotocol = "redis"\nlisten'),
                             "listener[0].protocol",
                             "unknown key in [[listener]]; known keys are name, listen, cluster")

    def test_bad_weight(self) -> None:
        """
        A weight must be an integer of at least 1: 0, negative numbers,
        fractions, strings and booleans are refused.
        """
        for value, fragment in [("0", "must be at least 1, got 0"),
                                ("-1", "must be at least 1, got -1"),
                                ("1.5", "expected an integer, got 1.5"),
                                ("2.0", "expected an integer, got 2.0"),
                                ('"2"', "expected an integer, got '2'"),
                                ("true", "expected an integer, got True")]:
            body = f'[[cluster.backend]]\naddress = "h:1"\nweight = {value}\n'
            self.assertFileError(cluster_file(body), "cluster[0].backend[0].weight", fragment)

    def test_bad_backend_address(self) -> None:
        """
        Backend addresses get the --backend endpoint check, naming the table's
        key.
        """
        for address, fragment in [("nope", "bad backend endpoint 'nope': Unknown endpoint type"),
                                  ("tcp:host=db", "missing parameter 'port'"),
                                  ("db:0", "port 0 is not in 1-65535"),
                                  ("db:99999", "port 99999 is not in 1-65535")]:
            body = f'[[cluster.backend]]\naddress = "{address}"\n'
            self.assertFileError(cluster_file(body), "cluster[0].backend[0].address", fragment)
        self.assertFileError(cluster_file("[[cluster.backend]]\naddress = 6379\n"),
                             "cluster[0].backend[0].address", "expected a non-empty string, got 6379")

    def test_bad_listener_endpoint(self) -> None:
        """
        Listener endpoints get the --listen endpoint check, naming the table's
        key.
        """
        for endpoint, fragment in [("tcp:99999", "port 99999 is not in 0-65535"),
                                   ("bogus:1", "bad server endpoint 'bogus:1'")]:
            self.assertFileError(TWO_CLUSTERS.replace("tcp:8080:interface=127.0.0.1", endpoint),
                                 "listener[1].listen", fragment)

    def test_unknown_protocol_and_policy(self) -> None:
        """
        A cluster's protocol, balance and hash_key are checked like the
        top-level keys.
        """
        self.assertFileError(cluster_file('protocol = "gopher"\n'), "cluster[0].protocol",
                             "unknown protocol 'gopher'; available: http, memcached, postgres, redis, tcp")
        self.assertFileError(cluster_file('balance = "fastest"\n'), "cluster[0].balance",
                             "unknown policy 'fastest'; available: round_robin")
        self.assertFileError(cluster_file('hash_key = "cookie"\n'), "cluster[0].hash_key",
                             "expected 'path' or 'header:NAME', got 'cookie'")

    def test_backend_and_clusters(self) -> None:
        """
        The flat backend key (in the file or as --backend) cannot be used
        together with [[cluster]] tables, nor the file's listen key with
        [[listener]] tables.
        """
        self.assertFileError('backend = "h:1"\n' + cluster_file(""), "backend",
                             "use either backend or [[cluster]], not both")
        path = self.write_toml(cluster_file(""))
        self.assertConfigError(["--config", path, "--backend", "h:1"],
                               "--backend: use either backend or [[cluster]], not both",
                               f"({path} has [[cluster]] tables)")
        self.assertFileError('listen = "tcp:1"\n' + TWO_CLUSTERS, "listen",
                             "use either listen or [[listener]], not both")
