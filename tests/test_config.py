"""
Tests of the configuration: the C{twistd poolproxy} flags, the TOML file
given with C{--config}, the precedence between them, and the one-line errors
for every kind of mistake.  Options are parsed for real with
L{ProxyOptions.parseOptions} and files are real files.
"""

from __future__ import annotations

import os
from typing import List, Optional

from twisted.trial.unittest import SynchronousTestCase

from poolproxy.config import SETTINGS, ConfigError, ProxyConfig
from poolproxy.config.endpoints import backend_name, expand_backend
from poolproxy.tap import Options, ProxyOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "configuration.md")

# The smallest valid command line.
BASE = ["--listen", "tcp:6380:interface=127.0.0.1", "--backend", "127.0.0.1:6379"]


def parse(argv: List[str]) -> ProxyConfig:
    options = ProxyOptions()
    options.parseOptions(argv)
    return options.config


class ConfigTestCase(SynchronousTestCase):
    def write_toml(self, text: str) -> str:
        """Write C{text} to a fresh file and return its path."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def assertConfigError(self, argv: List[str], *fragments: str) -> str:
        """
        Parsing C{argv} must fail with a one-line L{ConfigError} containing
        every fragment; return the message.
        """
        e = self.assertRaises(ConfigError, parse, argv)
        message = str(e)
        self.assertNotIn("\n", message)
        self.assertTrue(message.strip(), "empty error message")
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def assertFlagError(self, flag: str, value: str, *fragments: str) -> str:
        """
        A bad value for one flag (on an otherwise valid command line) must fail
        with a one-line message that starts with the flag's name.
        """
        message = self.assertConfigError(BASE + [flag, value], *fragments)
        self.assertTrue(message.startswith(flag + ":"), message)
        return message

    def assertFileError(self, toml: str, key: str, *fragments: str,
                        argv: Optional[List[str]] = None) -> str:
        """
        A bad TOML file must fail with a one-line message naming the key and
        the file.
        """
        path = self.write_toml(toml)
        message = self.assertConfigError(
            (BASE if argv is None else argv) + ["--config", path], *fragments)
        self.assertTrue(message.startswith(f"{key} (in {path}):"), message)
        return message


class DefaultsAndPrecedenceTests(ConfigTestCase):
    def test_defaults(self) -> None:
        """
        With only a listener and a backend, every other setting has the default
        from the SETTINGS table (which is also ProxyConfig's default).
        """
        config = parse(BASE)
        self.assertEqual(config.listen, ("tcp:6380:interface=127.0.0.1",))
        self.assertEqual(config.backend, ("127.0.0.1:6379",))
        for setting in SETTINGS:
            if setting.name in ("listen", "backend"):
                continue
            self.assertEqual(getattr(config, setting.name), setting.default, setting.name)
        self.assertEqual(config.protocol, "tcp")
        self.assertEqual(config.metrics, "tcp:9090:interface=127.0.0.1")
        self.assertEqual(config.pool_size, 10)
        self.assertEqual(config.queue_timeout, 5.0)
        self.assertIsNone(config.demo)

    def test_flags_are_typed(self) -> None:
        """
        Flag strings become ints and floats of the setting's kind; durations
        accept fractions, and 0 is accepted where it means "off".
        """
        config = parse(BASE + ["--pool-size", "3", "--queue-timeout", "0.25",
                               "--idle-timeout", "0", "--max-lifetime", "0",
                               "--max-uses", "0", "--queue-size", "0",
                               "--pool-max-waiters", "0"])
        self.assertEqual(config.pool_size, 3)
        self.assertIsInstance(config.pool_size, int)
        self.assertEqual(config.queue_timeout, 0.25)
        self.assertEqual(config.idle_timeout, 0.0)
        self.assertIsInstance(config.idle_timeout, float)
        self.assertEqual((config.max_lifetime, config.max_uses, config.queue_size,
                          config.pool_max_waiters), (0.0, 0, 0, 0))

    def test_file_only(self) -> None:
        """
        Every setting can come from the TOML file alone, keys with underscores;
        an integer is accepted for a duration.
        """
        path = self.write_toml(
            'listen = ["tcp:7000:interface=127.0.0.1"]\n'
            'backend = ["10.0.0.1:6379", "tcp:host=10.0.0.2:port=6379"]\n'
            'pool_size = 4\n'
            'pool_min_idle = 2\n'
            'connect_timeout = 2\n'
            'metrics = "tcp:9191:interface=127.0.0.1"\n'
        )
        config = parse(["--config", path])
        self.assertEqual(config.listen, ("tcp:7000:interface=127.0.0.1",))
        self.assertEqual(config.backend, ("10.0.0.1:6379", "tcp:host=10.0.0.2:port=6379"))
        self.assertEqual(config.pool_size, 4)
        self.assertEqual(config.pool_min_idle, 2)
        self.assertEqual(config.connect_timeout, 2.0)
        self.assertIsInstance(config.connect_timeout, float)
        self.assertEqual(config.metrics, "tcp:9191:interface=127.0.0.1")
        self.assertEqual(config.queue_size, 1000)  # still the default

    def test_list_key_accepts_a_string(self) -> None:
        """
        In the file, listen and backend may be a single string instead of a
        list of strings.
        """
        path = self.write_toml('listen = "tcp:7000"\nbackend = "127.0.0.1:6379"\n')
        config = parse(["--config", path])
        self.assertEqual(config.listen, ("tcp:7000",))
        self.assertEqual(config.backend, ("127.0.0.1:6379",))

    def test_flags_override_file(self) -> None:
        """
        A flag beats the same key in the file, whichever order --config comes
        in; keys that no flag gives keep the file's value.
        """
        path = self.write_toml(
            'listen = ["tcp:7000"]\nbackend = ["10.0.0.1:6379"]\n'
            'pool_size = 4\nqueue_timeout = 9.5\nmax_uses = 7\n'
        )
        for argv in (["--config", path, "--pool-size", "20", "--queue-timeout", "1"],
                     ["--pool-size", "20", "--queue-timeout", "1", "--config", path]):
            config = parse(argv)
            self.assertEqual(config.pool_size, 20)
            self.assertEqual(config.queue_timeout, 1.0)
            self.assertEqual(config.max_uses, 7)
            self.assertEqual(config.listen, ("tcp:7000",))
            self.assertEqual(config.sources["pool_size"], "--pool-size")
            self.assertEqual(config.sources["max_uses"], f"max_uses (in {path})")

    def test_repeated_flags_replace_file_list(self) -> None:
        """
        --listen and --backend given on the command line replace the file's
        list as a whole rather than adding to it.
        """
        path = self.write_toml('listen = ["tcp:7000"]\nbackend = ["10.0.0.1:6379", "10.0.0.2:6379"]\n')
        config = parse(["--config", path, "--backend", "10.0.0.9:6379"])
        self.assertEqual(config.backend, ("10.0.0.9:6379",))
        self.assertEqual(config.listen, ("tcp:7000",))

    def test_repeatable_listen_and_backend(self) -> None:
        """
        --listen and --backend may each be given several times; all values are
        kept, in order.
        """
        config = parse([
            "--listen", "tcp:6380:interface=127.0.0.1", "--listen", "tcp:6381",
            "--backend", "10.0.0.1:6379", "--backend", "tcp:host=10.0.0.2:port=6379",
            "--backend", "[::1]:6379",
        ])
        self.assertEqual(config.listen, ("tcp:6380:interface=127.0.0.1", "tcp:6381"))
        self.assertEqual(config.backend,
                         ("10.0.0.1:6379", "tcp:host=10.0.0.2:port=6379", "[::1]:6379"))

    def test_demo_stands_in_for_backend(self) -> None:
        """
        --demo with a plain tcp:PORT listener is accepted without any --backend.
        """
        config = parse(["--listen", "tcp:6380", "--demo", "tcp:8081:interface=127.0.0.1"])
        self.assertEqual(config.demo, "tcp:8081:interface=127.0.0.1")
        self.assertEqual(config.backend, ())


class ShorthandTests(SynchronousTestCase):
    def test_host_port(self) -> None:
        """
        HOST:PORT expands to a tcp client endpoint string; its name is itself.
        """
        self.assertEqual(expand_backend("127.0.0.1:6379"), "tcp:host=127.0.0.1:port=6379")
        self.assertEqual(expand_backend("redis.internal:6379"), "tcp:host=redis.internal:port=6379")
        self.assertEqual(backend_name("127.0.0.1:6379"), "127.0.0.1:6379")

    def test_ipv6_shorthand(self) -> None:
        """
        [V6ADDR]:PORT expands to a tcp client endpoint with the colons of the
        address escaped (Twisted has no tcp6 client endpoint), which parses.
        """
        expanded = expand_backend("[::1]:6379")
        self.assertEqual(expanded, "tcp:host=\\:\\:1:port=6379")
        self.assertEqual(backend_name("[::1]:6379"), "[::1]:6379")
        config = parse(["--listen", "tcp:6380", "--backend", "[::1]:6379"])
        self.assertEqual(config.backend, ("[::1]:6379",))

    def test_endpoint_strings_unchanged(self) -> None:
        """
        Full endpoint strings (and tcp:PORT, which looks like HOST:PORT) are not
        expanded.
        """
        for description in ("tcp:host=127.0.0.1:port=6379", "unix:path=/tmp/redis.sock",
                            "tcp:6379"):
            self.assertEqual(expand_backend(description), description)

    def test_backend_name_of_endpoint_strings(self) -> None:
        """
        backend_name() gives HOST:PORT for tcp endpoint strings (brackets around
        an IPv6 host) and the description itself for other kinds.
        """
        self.assertEqual(backend_name("tcp:host=10.0.0.2:port=6379"), "10.0.0.2:6379")
        self.assertEqual(backend_name("tcp:port=6379:host=db"), "db:6379")
        self.assertEqual(backend_name("tcp:host=\\:\\:1:port=6379"), "[::1]:6379")
        self.assertEqual(backend_name("unix:path=/tmp/redis.sock"), "unix:path=/tmp/redis.sock")


class FlagErrorTests(ConfigTestCase):
    def test_bad_listen_endpoint(self) -> None:
        """
        An unknown endpoint type, a non-numeric port or an out-of-range port
        given to --listen is refused, naming --listen and the string.
        """
        self.assertConfigError(["--listen", "bogus:6380", "--backend", "h:1"],
                               "--listen:", "'bogus:6380'", "Unknown endpoint type")
        self.assertConfigError(["--listen", "tcp:notaport", "--backend", "h:1"],
                               "--listen:", "'tcp:notaport'", "is not a number")
        self.assertConfigError(["--listen", "tcp:99999", "--backend", "h:1"],
                               "--listen:", "port 99999 is not in 0-65535")
        self.assertConfigError(["--listen", "tcp:6380:color=blue", "--backend", "h:1"],
                               "--listen:", "unknown parameter 'color'")

    def test_second_listen_bad(self) -> None:
        """
        Every --listen value is checked, not only the first.
        """
        self.assertConfigError(["--listen", "tcp:6380", "--listen", "nope", "--backend", "h:1"],
                               "--listen:", "'nope'")

    def test_empty_listen(self) -> None:
        """
        An empty --listen value is refused.
        """
        self.assertConfigError(["--listen", " ", "--backend", "h:1"],
                               "--listen:", "non-empty")

    def test_bad_backend_endpoint(self) -> None:
        """
        A backend that is neither HOST:PORT nor a client endpoint string, one
        without a port, or one with port 0 or > 65535 is refused, naming
        --backend and the string.
        """
        self.assertConfigError(BASE[:2] + ["--backend", "nohostport"],
                               "--backend:", "'nohostport'", "Unknown endpoint type")
        self.assertConfigError(BASE[:2] + ["--backend", "tcp:host=db"],
                               "--backend:", "missing parameter 'port'", "HOST:PORT")
        self.assertConfigError(BASE[:2] + ["--backend", "db:99999"],
                               "--backend:", "port 99999 is not in 1-65535")
        self.assertConfigError(BASE[:2] + ["--backend", "db:0"],
                               "--backend:", "port 0 is not in 1-65535")
        self.assertConfigError(BASE[:2] + ["--backend", "tcp:host=db:port=x"],
                               "--backend:", "'x' is not a number")

    def test_bad_metrics_endpoint(self) -> None:
        """
        A bad --metrics endpoint is refused, naming --metrics.
        """
        self.assertFlagError("--metrics", "nope", "'nope'", "Unknown endpoint type")
        self.assertFlagError("--metrics", "tcp:abc", "'abc' is not a number")

    def test_zero_pool_size(self) -> None:
        """
        --pool-size 0 is refused: a pool needs at least one connection.
        """
        self.assertFlagError("--pool-size", "0", "must be at least 1", "'0'")

    def test_negative_pool_size(self) -> None:
        """
        A negative --pool-size is refused.
        """
        self.assertFlagError("--pool-size", "-3", "must be at least 1", "'-3'")

    def test_fractional_pool_size(self) -> None:
        """
        A count must be an integer.
        """
        self.assertFlagError("--pool-size", "1.5", "expected an integer", "'1.5'")

    def test_zero_max_concurrency(self) -> None:
        """
        --max-concurrency 0 is refused (nothing could ever be served).
        """
        self.assertFlagError("--max-concurrency", "0", "must be at least 1")

    def test_negative_queue_size(self) -> None:
        """
        A negative --queue-size is refused (0 is allowed: reject at once).
        """
        self.assertFlagError("--queue-size", "-1", "must be at least 0", "'-1'")

    def test_upper_bounds(self) -> None:
        """
        A share above 1 or a percentage above 100 is refused, quoting the value.
        """
        self.assertFlagError("--access-log-sample", "1.5", "must be at most 1", "'1.5'")
        self.assertFlagError("--max-ejected-percent", "101", "must be at most 100", "'101'")
        self.assertEqual(parse(BASE + ["--access-log-sample", "1"]).access_log_sample, 1.0)

    def test_http_failures(self) -> None:
        """
        --http-failures takes 5xx (the default), gateway or none.
        """
        self.assertEqual(parse(BASE).http_failures, "5xx")
        self.assertEqual(parse(BASE + ["--http-failures", "gateway"]).http_failures, "gateway")
        self.assertFlagError("--http-failures", "sometimes",
                             "unknown value 'sometimes'; available: 5xx, gateway, none")

    def test_negative_counts(self) -> None:
        """
        Negative --pool-min-idle, --pool-max-waiters and --max-uses are refused.
        """
        for flag in ("--pool-min-idle", "--pool-max-waiters", "--max-uses"):
            self.assertFlagError(flag, "-1", "must be at least 0")

    def test_zero_duration(self) -> None:
        """
        Durations that must be positive refuse 0: --queue-timeout,
        --connect-timeout, --pool-acquire-timeout, --health-interval.
        """
        for flag in ("--queue-timeout", "--connect-timeout", "--pool-acquire-timeout",
                     "--health-interval"):
            self.assertFlagError(flag, "0", "must be greater than 0", "'0'")

    def test_negative_duration(self) -> None:
        """
        Negative durations are refused, including those where 0 means "off".
        """
        self.assertFlagError("--connect-timeout", "-1", "must be greater than 0", "'-1'")
        self.assertFlagError("--idle-timeout", "-1", "must be at least 0", "'-1'")
        self.assertFlagError("--max-lifetime", "-0.5", "must be at least 0")

    def test_non_numeric_duration(self) -> None:
        """
        A duration that is not a number is refused, quoting the value.
        """
        self.assertFlagError("--idle-timeout", "abc", "expected a number", "'abc'")
        self.assertFlagError("--queue-timeout", "5s", "expected a number", "'5s'")

    def test_nan_and_infinity(self) -> None:
        """
        NaN and infinity are not accepted as durations.
        """
        for value in ("nan", "NaN", "inf", "-inf", "1e999"):
            self.assertFlagError("--idle-timeout", value, "finite number")
        self.assertFlagError("--queue-timeout", "nan", "finite number")

    def test_min_idle_exceeds_pool_size(self) -> None:
        """
        --pool-min-idle larger than --pool-size (given or default) is refused,
        saying what the pool size is.
        """
        self.assertFlagError("--pool-min-idle", "11", "must not exceed pool-size (10)", "11")
        message = self.assertConfigError(BASE + ["--pool-size", "2", "--pool-min-idle", "3"],
                                         "must not exceed pool-size (2)")
        self.assertTrue(message.startswith("--pool-min-idle:"), message)

    def test_mux_connections_only_where_connections_are_shared(self) -> None:
        """
        mux_connections is a share of pool_size for redis and memcached only:
        a pool of 1 needs no --mux-connections 1 for postgres, http or tcp.
        """
        for protocol in ("postgres", "http", "tcp"):
            config = parse(BASE + ["--protocol", protocol, "--pool-size", "1"])
            self.assertEqual(config.pool_size, 1)
        for protocol in ("redis", "memcached"):
            self.assertConfigError(BASE + ["--protocol", protocol, "--pool-size", "1"],
                                   "must be at least mux-connections (2), got 1")

    def test_ordered_settings_name_what_was_given(self) -> None:
        """
        The checks between settings (the same as a cluster's) name the flag
        that was given: --pool-size 1 is below the default mux-connections,
        --breaker-max-reset-timeout below breaker-reset-timeout.
        """
        message = self.assertConfigError(BASE + ["--protocol", "redis", "--pool-size", "1"],
                                         "must be at least mux-connections (2), got 1")
        self.assertTrue(message.startswith("--pool-size:"), message)
        self.assertFlagError("--breaker-max-reset-timeout", "2",
                             "must be at least breaker-reset-timeout (5), got 2")
        message = self.assertConfigError(
            BASE + ["--breaker-reset-timeout", "90", "--breaker-max-reset-timeout", "60"],
            "must be at least breaker-reset-timeout (90), got 60")
        self.assertTrue(message.startswith("--breaker-max-reset-timeout:"), message)

    def test_unknown_protocol(self) -> None:
        """
        An unknown --protocol is refused, listing the available ones.
        """
        self.assertFlagError("--protocol", "gopher", "unknown protocol 'gopher'", "available: http, memcached, postgres, redis, tcp")

    def test_missing_listen(self) -> None:
        """
        Without any --listen (and no listen key in a file) startup is refused.
        """
        message = self.assertConfigError(["--backend", "127.0.0.1:6379"], "at least one listener")
        self.assertTrue(message.startswith("--listen:"), message)

    def test_missing_backend(self) -> None:
        """
        Without any --backend (and no --demo) startup is refused.
        """
        message = self.assertConfigError(["--listen", "tcp:6380"], "at least one backend")
        self.assertTrue(message.startswith("--backend:"), message)

    def test_bad_demo(self) -> None:
        """
        --demo must be a plain tcp:PORT[:interface=HOST] listener with a fixed
        port, since the proxy connects to it by that address.
        """
        self.assertFlagError("--demo", "bogus", "Unknown endpoint type")
        self.assertFlagError("--demo", "unix:/tmp/demo.sock", "needs tcp:PORT[:interface=HOST]")
        self.assertFlagError("--demo", "tcp:0", "needs tcp:PORT[:interface=HOST]")


class BooleanSettingTests(ConfigTestCase):
    def test_flag_words_and_toml_booleans(self) -> None:
        """
        A bool setting (watch_config) takes true/false and their usual flag
        spellings; TOML needs a real boolean; anything else is refused.
        """
        self.assertFalse(parse(BASE).watch_config)
        empty = self.write_toml("")  # watch_config needs a file to watch
        for word, expected in [("true", True), ("Yes", True), ("on", True), ("1", True),
                               ("false", False), ("no", False), ("OFF", False), ("0", False)]:
            self.assertEqual(parse(BASE + ["--config", empty, "--watch-config", word]).watch_config,
                             expected, word)
        self.assertFlagError("--watch-config", "maybe", "expected true or false")
        path = self.write_toml("watch_config = true\n")
        self.assertTrue(parse(BASE + ["--config", path]).watch_config)
        self.assertFileError('watch_config = "true"\n', "watch_config", "expected true or false")


class FileErrorTests(ConfigTestCase):
    def test_unknown_key(self) -> None:
        """
        A key that is not a setting is refused, naming it and the file and
        listing the known keys.
        """
        message = self.assertFileError("pool_sise = 3\n", "pool_sise", "unknown key", "pool_size")
        for setting in SETTINGS:
            self.assertIn(setting.name, message)

    def test_dashed_key(self) -> None:
        """
        The flag spelling (dashes) is not a TOML key: keys use underscores.
        """
        self.assertFileError("pool-size = 3\n", "pool-size", "unknown key")

    def test_table_is_unknown_key(self) -> None:
        """
        A TOML table such as [pool] is not a setting.
        """
        self.assertFileError("[pool]\nsize = 3\n", "pool", "unknown key")

    def test_string_for_integer(self) -> None:
        """
        A string where a number belongs is refused, even if it holds digits.
        """
        self.assertFileError('pool_size = "5"\n', "pool_size", "expected an integer", "'5'")

    def test_bool_for_integer(self) -> None:
        """
        A TOML boolean is not a number.
        """
        self.assertFileError("pool_size = true\n", "pool_size", "expected an integer", "True")
        self.assertFileError("queue_timeout = false\n", "queue_timeout", "expected a number")

    def test_float_for_integer(self) -> None:
        """
        A float is refused for a count.
        """
        self.assertFileError("queue_size = 2.0\n", "queue_size", "expected an integer")

    def test_number_for_string(self) -> None:
        """
        A number where an endpoint string belongs is refused.
        """
        self.assertFileError("metrics = 9090\n", "metrics", "expected a non-empty string")

    def test_wrong_list(self) -> None:
        """
        listen must be a string or a list of strings.
        """
        self.assertFileError("listen = [6380]\n", "listen", "expected a list of non-empty strings",
                             argv=["--backend", "h:1"])

    def test_out_of_range_in_file(self) -> None:
        """
        Range checks apply to file values too, naming the key and the file.
        """
        self.assertFileError("pool_size = 0\n", "pool_size", "must be at least 1")
        self.assertFileError("queue_size = -1\n", "queue_size", "must be at least 0")
        self.assertFileError("connect_timeout = 0\n", "connect_timeout", "must be greater than 0")

    def test_nan_and_inf_in_file(self) -> None:
        """
        TOML's nan and inf literals are refused for durations.
        """
        self.assertFileError("idle_timeout = nan\n", "idle_timeout", "finite number")
        self.assertFileError("queue_timeout = inf\n", "queue_timeout", "finite number")
        self.assertFileError("pool_size = inf\n", "pool_size", "expected an integer")

    def test_bad_endpoint_in_file(self) -> None:
        """
        A bad endpoint string from the file is reported with the key and the
        file, not with the flag.
        """
        self.assertFileError('listen = ["tcp:6380", "nope"]\n', "listen", "'nope'",
                             argv=["--backend", "h:1"])
        self.assertFileError('backend = ["nope"]\n', "backend", "'nope'",
                             argv=["--listen", "tcp:6380"])
        self.assertFileError('metrics = "tcp:x"\n', "metrics", "'x' is not a number")

    def test_min_idle_from_file(self) -> None:
        """
        pool_min_idle > pool_size names the key where pool_min_idle came from.
        """
        self.assertFileError("pool_size = 2\npool_min_idle = 5\n", "pool_min_idle",
                             "must not exceed pool-size (2)")

    def test_unknown_protocol_in_file(self) -> None:
        """
        An unknown protocol in the file names the key and the file.
        """
        self.assertFileError('protocol = "gopher"\n', "protocol", "unknown protocol 'gopher'")

    def test_file_checked_even_where_flag_overrides(self) -> None:
        """
        A flag replaces a good file value, but a bad file value is still an
        error even when a flag overrides that key: the file is checked whole.
        """
        path = self.write_toml("pool_size = 4\n")
        self.assertEqual(parse(BASE + ["--config", path, "--pool-size", "5"]).pool_size, 5)
        path = self.write_toml("pool_size = 0\n")
        self.assertRaises(ConfigError, parse, BASE + ["--config", path, "--pool-size", "5"])

    def test_missing_file(self) -> None:
        """
        A --config path that does not exist is refused, naming --config, the
        path and the reason.
        """
        path = self.mktemp()
        message = self.assertConfigError(BASE + ["--config", path], path, "No such file")
        self.assertTrue(message.startswith("--config: cannot read"), message)

    def test_directory(self) -> None:
        """
        A directory given as --config is refused as unreadable.
        """
        path = self.mktemp()
        os.mkdir(path)
        message = self.assertConfigError(BASE + ["--config", path], path, "Is a directory")
        self.assertTrue(message.startswith("--config: cannot read"), message)

    def test_malformed_toml(self) -> None:
        """
        A file that is not TOML is refused with the parser's one-line reason,
        including where in the file.
        """
        path = self.write_toml('listen = ["tcp:6380"\npool_size = \n')
        message = self.assertConfigError(BASE + ["--config", path], path, "is not valid TOML", "line")
        self.assertTrue(message.startswith("--config:"), message)

    def test_duplicate_key(self) -> None:
        """
        A key given twice in the file is a TOML error.
        """
        path = self.write_toml("pool_size = 3\npool_size = 4\n")
        self.assertConfigError(BASE + ["--config", path], "--config:", "is not valid TOML")

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is refused as invalid TOML, not with a
        traceback.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'protocol = "\xff"\n')
        self.assertConfigError(BASE + ["--config", path], "--config:", path, "not UTF-8")

    def test_empty_file(self) -> None:
        """
        An empty file is valid TOML and changes nothing.
        """
        path = self.write_toml("")
        self.assertEqual(parse(BASE + ["--config", path]), parse(BASE))


class TwistdOptionsTests(ConfigTestCase):
    def assertExits(self, argv: List[str], *fragments: str) -> str:
        """
        The twistd Options must raise SystemExit whose code is one line that
        starts with "poolproxy: error:" and contains every fragment.
        """
        e = self.assertRaises(SystemExit, Options().parseOptions, argv)
        self.assertIsInstance(e.code, str)
        message = e.code
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("poolproxy: error: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_flag_error_exits(self) -> None:
        """
        A bad flag value becomes SystemExit("poolproxy: error: --flag: ...").
        """
        message = self.assertExits(BASE + ["--pool-size", "0"], "must be at least 1")
        self.assertTrue(message.startswith("poolproxy: error: --pool-size: "), message)

    def test_file_error_exits(self) -> None:
        """
        A bad key in the file becomes SystemExit naming the key and the file.
        """
        path = self.write_toml("bogus = 1\n")
        self.assertExits(BASE + ["--config", path], f"bogus (in {path}): unknown key")

    def test_unreadable_file_exits(self) -> None:
        """
        An unreadable --config file becomes SystemExit naming --config.
        """
        self.assertExits(BASE + ["--config", self.mktemp()], "--config: cannot read")

    def test_missing_listen_exits(self) -> None:
        """
        Missing --listen becomes SystemExit naming --listen.
        """
        self.assertExits(["--backend", "h:1"], "--listen: at least one listener")

    def test_valid_options(self) -> None:
        """
        Valid options parse without exiting and give the same configuration as
        ProxyOptions.
        """
        options = Options()
        options.parseOptions(BASE + ["--pool-size", "3"])
        self.assertEqual(options.config, parse(BASE + ["--pool-size", "3"]))


class DocumentationTests(SynchronousTestCase):
    def read_docs(self) -> str:
        with open(DOCS, encoding="utf-8") as f:
            return f.read()

    def row(self, text: str, key: str) -> Optional[str]:
        """The settings table row whose first cell is C{key}, or None."""
        for line in text.splitlines():
            if line.startswith(f"| `{key}` |"):
                return line
        return None

    def test_every_key_documented(self) -> None:
        """
        docs/configuration.md has a table row for every setting, with its TOML
        key and its flag.
        """
        text = self.read_docs()
        for setting in SETTINGS:
            row = self.row(text, setting.name)
            self.assertIsNotNone(row, f"{setting.name} has no row in {DOCS}")
            self.assertIn(f"| `{setting.flag}` |", row, setting.name)

    def test_documented_defaults(self) -> None:
        """
        Each setting's row shows its default as the SETTINGS table has it.
        """
        text = self.read_docs()
        for setting in SETTINGS:
            row = self.row(text, setting.name)
            assert row is not None, setting.name
            if setting.default in (None, ()):
                self.assertIn("(none)", row, setting.name)
            elif isinstance(setting.default, bool):
                self.assertIn(f"`{str(setting.default).lower()}`", row, setting.name)
            elif isinstance(setting.default, float):
                shown = f"`{setting.default:g}`"
                self.assertTrue(shown in row or f"`{setting.default!r}`" in row,
                                f"{setting.name}: default {setting.default!r} not in {row!r}")
            elif isinstance(setting.default, str):
                self.assertIn(f"`{setting.default}`", row, setting.name)
            else:
                self.assertIn(f"`{setting.default}`", row, setting.name)


class BacklogTests(SynchronousTestCase):
    def test_tcp_listeners_get_a_larger_backlog(self) -> None:
        """
        tcp listeners default to a backlog of 1024 (Twisted's is 50); one the
        user set is kept, and other endpoint kinds are left alone.
        """
        from poolproxy.config.endpoints import server_endpoint, with_backlog
        from twisted.internet.testing import MemoryReactor

        self.assertEqual(with_backlog("tcp:6380:interface=127.0.0.1"),
                         "tcp:6380:interface=127.0.0.1:backlog=1024")
        self.assertEqual(with_backlog("tcp:6380:backlog=7"), "tcp:6380:backlog=7")
        self.assertEqual(with_backlog("unix:/tmp/x.sock"), "unix:/tmp/x.sock")
        reactor = MemoryReactor()
        server_endpoint(reactor, "tcp:6380:interface=127.0.0.1").listen(object())
        self.assertEqual(reactor.tcpServers[0][2], 1024)

