"""
The Prometheus view of the plain counters in L{poolproxy.stats}, the
admission gate, the pools and the cluster's backends (their health checks
and circuit breakers).  Nothing here runs per request: the collector
reads current values when /metrics is scraped.  docs/metrics.md lists every
metric this module exports.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from poolproxy.backends.breaker import STATES as BREAKER_STATES
from poolproxy.backends.cluster import BACKEND_STATES
from poolproxy.ops.pools import pinned_clients, serving_pools
from poolproxy.ops.view import ProxyView
from poolproxy.proxy.transaction.stats import TransactionStats
from poolproxy.stats import Histogram


# Why a pool closes a connection (poolproxy.backends.pool and poolproxy.proxy.session).  The
# pool's tally creates a reason on first use; exporting them all from the
# start keeps rate() and increase() from missing a series' first close.
CLOSE_REASONS = ("idle_timeout", "max_lifetime", "max_uses", "backend_closed",
                 "session_end", "shutdown")

# The values of poolproxy.backends.health.HealthCheck.state (those of Backend.state
# and CircuitBreaker.state are imported above).  Each is exported as a
# Prometheus "enum" gauge: one series per value, 1 for the current one and 0
# for the others, all present from the start.
HEALTH_STATES = ("unknown", "healthy", "unhealthy")

# Why a listener does not accept: an operator paused it (poolproxy.ops.admin),
# or its connection limit or the process's holds it (poolproxy.proxy.limits).
LISTENER_PAUSES = ("admin", "listener_limit", "proxy_limit")


def _histogram(name: str, doc: str, labels: "list[str]") -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add_histogram(family: HistogramMetricFamily, values: "list[str]", h: Histogram) -> None:
    family.add_metric(values, h.cumulative(), h.total)


def _add_enum(family: GaugeMetricFamily, values: "list[str]", states: "tuple[str, ...]",
              current: str) -> None:
    """
    One series per state in C{states}, 1 for C{current} and 0 for the others
    (a state not in C{states} is exported too, so the series always sum to 1).
    """
    for state in states:
        family.add_metric(values + [state], 1 if state == current else 0)
    if current not in states:
        family.add_metric(values + [current], 1)


class ProxyCollector:
    """
    A custom collector over one running proxy (a L{ProxyView}).
    """

    def __init__(self, service: ProxyView) -> None:
        self.service = service

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self._listeners()
        yield from self._limits()
        yield from self._admission()
        yield from self._pools()
        yield from self._postgres()
        yield from self._backends()
        yield from self._dns()
        yield from self._hooks()

    def _hooks(self) -> Iterator[Metric]:
        """What each listener's hooks answered: counted by the hooks themselves."""
        calls = CounterMetricFamily("poolproxy_hook_calls",
                                    "Hook calls, by listener, hook point and outcome: ok (it "
                                    "answered), error (it raised), timeout (past hook_timeout).",
                                    labels=["listener", "hook", "outcome"])
        refusals = CounterMetricFamily("poolproxy_hook_refusals",
                                       "Clients or requests a hook refused (its answer, an "
                                       "error or a timeout), by listener and hook point.",
                                       labels=["listener", "hook"])
        deferred = CounterMetricFamily("poolproxy_hook_deferred_calls",
                                       "Hook calls that returned a Deferred or a coroutine "
                                       "(the others were answered at once).",
                                       labels=["listener", "hook"])
        for name, hooks in self.service.hooks.items():
            for point, hook in hooks.configured().items():
                calls.add_metric([name, point, "ok"], hook.ok)
                calls.add_metric([name, point, "error"], hook.errors)
                calls.add_metric([name, point, "timeout"], hook.timeouts)
                refusals.add_metric([name, point], hook.refused)
                deferred.add_metric([name, point], hook.asynchronous)
        yield from (calls, refusals, deferred)

    def _listeners(self) -> Iterator[Metric]:
        opened = CounterMetricFamily("poolproxy_client_connections",
                                     "Client connections accepted.", labels=["listener"])
        open_now = GaugeMetricFamily("poolproxy_client_connections_open",
                                     "Client connections open now.", labels=["listener"])
        sessions = CounterMetricFamily("poolproxy_sessions",
                                       "Client sessions ended, by outcome.",
                                       labels=["listener", "outcome"])
        requests = CounterMetricFamily("poolproxy_requests",
                                       "Requests ended, by outcome (tcp mode: one per session).",
                                       labels=["listener", "outcome"])
        traffic = CounterMetricFamily("poolproxy_bytes",
                                      "Bytes forwarded: upstream is client to backend.",
                                      labels=["listener", "direction"])
        refused = CounterMetricFamily("poolproxy_commands_refused",
                                      "Requests refused by the command policy, by command "
                                      "(\"(unknown)\" for commands the proxy does not know).",
                                      labels=["listener", "command"])
        auth_failures = CounterMetricFamily("poolproxy_auth_failures",
                                            "Failed client authentications (redis AUTH, HELLO).",
                                            labels=["listener"])
        output_closed = CounterMetricFamily(
            "poolproxy_client_output_closed",
            "Clients closed for holding too many unread replies, by the limit broken "
            "(client: client_output_limit; proxy: proxy_output_limit).",
            labels=["listener", "limit"])
        timeouts = CounterMetricFamily("poolproxy_timeouts",
                                       "Deadlines that passed, by phase: idle, head, body, "
                                       "send, tunnel, response.",
                                       labels=["listener", "phase"])
        buffered = CounterMetricFamily("poolproxy_http_buffered",
                                       "http requests whose body was read whole before a "
                                       "backend connection was asked for, and responses whose "
                                       "connection was released before their client had read "
                                       "them.", labels=["listener", "direction"])
        durations = _histogram("poolproxy_request_duration_seconds",
                               "Requests (tcp: sessions; postgres: transactions) from the "
                               "read that brought them to their reply's last byte written, "
                               "by outcome.", ["listener", "outcome"])
        for listener in self.service.listeners:
            stats = listener.stats
            opened.add_metric([listener.name], stats.connections_total)
            for outcome, h in stats.durations.items():
                _add_histogram(durations, [listener.name, outcome], h)
            for phase, n in stats.timeouts.items():
                timeouts.add_metric([listener.name, phase], n)
            buffered.add_metric([listener.name, "request"], stats.requests_buffered)
            buffered.add_metric([listener.name, "response"], stats.responses_buffered)
            open_now.add_metric([listener.name], stats.connections_open)
            for outcome, n in stats.sessions.items():
                sessions.add_metric([listener.name, outcome], n)
            for outcome, n in stats.requests.items():
                if outcome == "ok":
                    n += stats.requests_ok
                requests.add_metric([listener.name, outcome], n)
            traffic.add_metric([listener.name, "upstream"], stats.bytes_upstream)
            traffic.add_metric([listener.name, "downstream"], stats.bytes_downstream)
            for command, n in stats.commands_refused.items():
                refused.add_metric([listener.name, command], n)
            auth_failures.add_metric([listener.name], stats.auth_failures)
            for limit, n in stats.output_closed.items():
                output_closed.add_metric([listener.name, limit], n)
        output = self.service.output
        held = GaugeMetricFamily("poolproxy_client_output_held_bytes",
                                 "Bytes of replies held for clients that are not reading "
                                 "them, all listeners together (an upper bound).",
                                 value=output.held)
        peak = GaugeMetricFamily("poolproxy_client_output_held_peak_bytes",
                                 "The most poolproxy_client_output_held_bytes has been.",
                                 value=output.peak)
        yield from (opened, open_now, sessions, requests, traffic, refused, auth_failures,
                    output_closed, held, peak)
        yield timeouts
        yield buffered
        yield durations
        yield GaugeMetricFamily("poolproxy_http_request_body_held_bytes",
                                "Bytes of http request bodies held before their backend "
                                "connection is leased, all listeners together.",
                                value=output.bodies)

    def _limits(self) -> Iterator[Metric]:
        """Connection limits and the listeners' accepting."""
        limit = GaugeMetricFamily("poolproxy_client_connections_limit",
                                  "The most client connections the listener may have open: "
                                  "its max_connections or max_client_connections.",
                                  labels=["listener"])
        paused = GaugeMetricFamily("poolproxy_listener_paused",
                                   "1 while the listener does not accept for this reason "
                                   "(admin, listener_limit, proxy_limit).",
                                   labels=["listener", "reason"])
        pauses = CounterMetricFamily("poolproxy_listener_limit_pauses",
                                     "Times a connection limit stopped the listener accepting.",
                                     labels=["listener"])
        refused = CounterMetricFamily("poolproxy_client_connections_refused",
                                      "Connections closed as soon as accepted, by reason "
                                      "(per_source, limit).", labels=["listener", "reason"])
        accept_errors = CounterMetricFamily("poolproxy_accept_errors",
                                            "Connections lost to an accept error, by error "
                                            "(EMFILE, ENFILE...).", labels=["listener", "error"])
        for listener in self.service.listeners:
            name = [listener.name]
            limit.add_metric(name, listener.connection_limit)
            held = listener.gate.reasons
            for reason in LISTENER_PAUSES:
                paused.add_metric(name + [reason], 1 if reason in held else 0)
            stats = listener.stats
            pauses.add_metric(name, stats.limit_pauses)
            for reason, n in stats.refused.items():
                refused.add_metric(name + [reason], n)
            for error, n in stats.accept_errors.items():
                accept_errors.add_metric(name + [error], n)
        yield from (limit, paused, pauses, refused, accept_errors)
        yield GaugeMetricFamily("poolproxy_max_client_connections",
                                "The most client connections open at once, all listeners "
                                "together.", value=self.service.limits.cap)

    def _admission(self) -> Iterator[Metric]:
        admission = self.service.admission
        yield GaugeMetricFamily("poolproxy_admission_in_flight",
                                "Requests admitted and being served.", value=admission.in_flight)
        yield GaugeMetricFamily("poolproxy_admission_queued",
                                "Requests waiting for admission.", value=admission.queued)
        yield GaugeMetricFamily("poolproxy_admission_max_concurrency",
                                "Configured limit of requests served at once.",
                                value=admission.max_concurrency)
        yield GaugeMetricFamily("poolproxy_admission_queue_size",
                                "Configured limit of requests waiting.", value=admission.queue_size)
        yield CounterMetricFamily("poolproxy_admission_admitted",
                                  "Requests admitted.", value=admission.admitted)
        rejected = CounterMetricFamily("poolproxy_admission_rejected",
                                       "Requests rejected, by reason.", labels=["reason"])
        for reason, n in admission.rejected.items():
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("poolproxy_admission_abandoned",
                                  "Queued requests whose client left first.",
                                  value=admission.abandoned)
        wait = _histogram("poolproxy_admission_queue_wait_seconds",
                          "Time admitted requests spent queued.", [])
        _add_histogram(wait, [], admission.queue_wait)
        yield wait

    def _pools(self) -> Iterator[Metric]:
        # database and user: a transaction-mode (postgres) pool's; empty for
        # the other modes' (Prometheus reads an empty label as no label).
        per_pool = ["cluster", "backend", "database", "user"]
        connections = GaugeMetricFamily("poolproxy_pool_connections",
                                        "Backend connections by state.",
                                        labels=per_pool + ["state"])
        size = GaugeMetricFamily("poolproxy_pool_size",
                                 "Configured most connections per backend.", labels=per_pool)
        waiters = GaugeMetricFamily("poolproxy_pool_waiters",
                                    "Requests waiting for a backend connection.",
                                    labels=per_pool)
        longest = GaugeMetricFamily("poolproxy_pool_longest_wait_seconds",
                                    "How long the request waiting longest for a backend "
                                    "connection has waited so far (0 with none waiting).",
                                    labels=per_pool)
        up = GaugeMetricFamily("poolproxy_backend_up",
                               "1 if the last connect to the backend succeeded.",
                               labels=["cluster", "backend"])
        connects = CounterMetricFamily("poolproxy_pool_connects",
                                       "Backend connect attempts, by result.",
                                       labels=per_pool + ["result"])
        closes = CounterMetricFamily("poolproxy_pool_closes",
                                     "Backend connections closed, by reason.",
                                     labels=per_pool + ["reason"])
        failures = CounterMetricFamily("poolproxy_pool_acquire_failures",
                                       "Requests that got no backend connection, by reason.",
                                       labels=per_pool + ["reason"])
        wait = _histogram("poolproxy_pool_acquire_wait_seconds",
                          "Time from asking for a backend connection to getting one.",
                          per_pool)
        for pool in self.service.pools:
            # The backend's own pool, whichever pools serve its clients.
            up.add_metric([pool.cluster, pool.name], 1 if pool.state == "up" else 0)
        for serving in serving_pools(self.service.pools):
            pool, name = serving.pool, serving.labels
            for state, n in (("idle", pool.idle), ("active", pool.leased),
                             ("connecting", pool.connecting)):
                connections.add_metric(name + [state], n)
            size.add_metric(name, pool.size)
            waiters.add_metric(name, pool.waiters)
            longest.add_metric(name, pool.longest_wait)
            for result, n in pool.connects.items():
                connects.add_metric(name + [result], n)
            for reason in CLOSE_REASONS:
                closes.add_metric(name + [reason], pool.closes[reason])
            for reason, n in pool.closes.items():
                if reason not in CLOSE_REASONS:
                    closes.add_metric(name + [reason], n)
            for reason, n in pool.acquire_failures.items():
                failures.add_metric(name + [reason], n)
            _add_histogram(wait, name, pool.acquire_wait)
        yield from (connections, size, waiters, longest, up, connects, closes, failures, wait)

    def _postgres(self) -> Iterator[Metric]:
        """Transaction pooling (postgres): only when a listener or a backend uses it."""
        per_key = ["listener", "database", "user"]
        transactions = CounterMetricFamily("poolproxy_postgres_transactions",
                                           "Transactions completed (the server idle again "
                                           "after the client's queries).", labels=per_key)
        queries = CounterMetricFamily("poolproxy_postgres_queries",
                                      "Query and Execute messages sent to servers.",
                                      labels=per_key)
        wait = _histogram("poolproxy_postgres_wait_seconds",
                          "Time from a transaction needing a server connection to getting "
                          "one, admission included.", per_key)
        held = _histogram("poolproxy_postgres_transaction_seconds",
                          "Time a client held a server connection (a lease: a transaction, "
                          "or a pinned client's session).", per_key)
        pinned = CounterMetricFamily("poolproxy_postgres_pinned",
                                     "Clients that keep their server connection until they "
                                     "leave, by reason.", labels=["listener", "reason"])
        cancels = CounterMetricFamily("poolproxy_postgres_cancels",
                                      "CancelRequests received, by outcome.",
                                      labels=["listener", "outcome"])
        definitions = GaugeMetricFamily("poolproxy_postgres_statement_definitions",
                                        "Distinct prepared-statement definitions the proxy "
                                        "names on its server connections.", labels=["listener"])
        forgotten = CounterMetricFamily("poolproxy_postgres_statement_definitions_forgotten",
                                        "Definitions forgotten to stay within the bound "
                                        "(renamed, and parsed again, on their next use).",
                                        labels=["listener"])
        any_listener = False
        for listener in self.service.listeners:
            stats = listener.stats
            if not isinstance(stats, TransactionStats):
                continue
            any_listener = True
            names = stats.statement_names
            if names is not None:
                definitions.add_metric([listener.name], len(names))
                forgotten.add_metric([listener.name], names.forgotten)
            for (database, user), counts in stats.keys.items():
                labels = [listener.name, database.decode("utf-8", "replace"),
                          user.decode("utf-8", "replace")]
                transactions.add_metric(labels, counts.transactions)
                queries.add_metric(labels, counts.queries)
                _add_histogram(wait, labels, counts.wait)
                _add_histogram(held, labels, counts.held)
            for reason, n in stats.pinned.items():
                pinned.add_metric([listener.name, reason], n)
            for outcome, n in stats.cancels.items():
                cancels.add_metric([listener.name, outcome], n)
        per_pool = ["cluster", "backend", "database", "user"]
        resets = CounterMetricFamily("poolproxy_postgres_server_resets",
                                     "Server connections reset before another client got "
                                     "them, by kind (rollback, discard, failed).",
                                     labels=per_pool + ["kind"])
        pinned_now = GaugeMetricFamily("poolproxy_postgres_pinned_clients",
                                       "Clients holding a server connection of the pool for "
                                       "the rest of their session.", labels=per_pool)
        any_pool = False
        for serving in serving_pools(self.service.pools):
            keyed = serving.keyed
            if keyed is None:
                continue
            any_pool = True
            for kind, n in keyed.resets.items():
                resets.add_metric(serving.labels + [kind], n)
            pinned_now.add_metric(serving.labels, pinned_clients(keyed))
        if any_listener:
            yield from (transactions, queries, wait, held, pinned, cancels, definitions,
                        forgotten)
        if any_listener or any_pool:
            yield from (resets, pinned_now)

    def _backends(self) -> Iterator[Metric]:
        per_backend = ["cluster", "backend"]
        weight = GaugeMetricFamily("poolproxy_backend_weight",
                                   "The backend's balancing weight.", labels=per_backend)
        outstanding = GaugeMetricFamily("poolproxy_backend_outstanding",
                                        "Requests (tcp mode: sessions) in flight to the backend.",
                                        labels=per_backend)
        requests = CounterMetricFamily("poolproxy_backend_requests",
                                       "Requests (tcp mode: sessions) sent to the backend.",
                                       labels=per_backend)
        failures = CounterMetricFamily("poolproxy_backend_failures",
                                       "Failures counted against the backend: failed connects "
                                       "and failed requests.",
                                       labels=per_backend)
        retries = CounterMetricFamily("poolproxy_backend_retries",
                                      "Requests to the backend sent again after a failed attempt.",
                                      labels=per_backend)
        unsolicited = CounterMetricFamily("poolproxy_backend_unsolicited_dropped",
                                          "Messages the backend sent unasked on a shared "
                                          "connection (RESP3 pushes), dropped.",
                                          labels=per_backend)
        too_large = CounterMetricFamily("poolproxy_backend_replies_too_large",
                                        "Replies larger than max_reply_size: the client got "
                                        "an error, the reply was skipped.",
                                        labels=per_backend)
        state = GaugeMetricFamily("poolproxy_backend_state",
                                  "1 for the backend's current state, 0 for the others.",
                                  labels=per_backend + ["state"])
        checks = CounterMetricFamily("poolproxy_backend_health_checks",
                                     "Active health checks of the backend, by result.",
                                     labels=per_backend + ["result"])
        health = GaugeMetricFamily("poolproxy_backend_health_state",
                                   "1 for the health check's current state, 0 for the others.",
                                   labels=per_backend + ["state"])
        breaker_state = GaugeMetricFamily("poolproxy_backend_breaker_state",
                                          "1 for the circuit breaker's current state, "
                                          "0 for the others.",
                                          labels=per_backend + ["state"])
        opened = CounterMetricFamily("poolproxy_backend_breaker_opened",
                                     "Times the backend's circuit breaker opened (ejections).",
                                     labels=per_backend)
        refused = CounterMetricFamily("poolproxy_backend_breaker_refused",
                                      "Times the breaker stayed closed at its failure threshold "
                                      "because too many backends were ejected.",
                                      labels=per_backend)
        durations = _histogram("poolproxy_backend_request_duration_seconds",
                               "Requests from written to the backend to its reply's end "
                               "(tcp: a session's lease; postgres: a transaction's), by "
                               "outcome.", per_backend + ["outcome"])
        first_byte = _histogram("poolproxy_backend_first_byte_seconds",
                                "From a request written to the backend to the first byte of "
                                "its reply (http, tcp, postgres).", per_backend)
        counts = GaugeMetricFamily("poolproxy_cluster_backends",
                                   "Backends of the cluster, by state.",
                                   labels=["cluster", "state"])
        any_health = any_breaker = False
        for cluster in self.service.clusters.values():
            tally = dict.fromkeys(BACKEND_STATES, 0)
            for backend in cluster.backends:
                name = [cluster.name, backend.name]
                weight.add_metric(name, backend.weight)
                outstanding.add_metric(name, backend.outstanding)
                requests.add_metric(name, backend.requests)
                failures.add_metric(name, backend.failures)
                retries.add_metric(name, backend.retries)
                unsolicited.add_metric(name, backend.unsolicited)
                too_large.add_metric(name, backend.replies_too_large)
                for outcome, h in backend.durations.items():
                    _add_histogram(durations, name + [outcome], h)
                _add_histogram(first_byte, name, backend.first_byte)
                current = backend.state
                tally[current] = tally.get(current, 0) + 1
                _add_enum(state, name, BACKEND_STATES, current)
                check = backend.health
                if check is not None:
                    any_health = True
                    checks.add_metric(name + ["ok"], check.probes_ok)
                    checks.add_metric(name + ["failed"], check.probes_failed)
                    _add_enum(health, name, HEALTH_STATES, check.state)
                breaker = backend.breaker
                if breaker is not None:
                    any_breaker = True
                    _add_enum(breaker_state, name, BREAKER_STATES, breaker.state)
                    opened.add_metric(name, breaker.opened_total)
                    refused.add_metric(name, breaker.refused_total)
            for value, n in tally.items():
                counts.add_metric([cluster.name, value], n)
        yield from (weight, outstanding, requests, failures, retries, unsolicited, too_large,
                    state)
        yield from (durations, first_byte)
        if any_health:
            yield from (checks, health)
        if any_breaker:
            yield from (breaker_state, opened, refused)
        yield counts


    def _dns(self) -> Iterator[Metric]:
        names = self.service.dns_names
        if not names:
            return
        labels = ["cluster", "name"]
        failures = CounterMetricFamily("poolproxy_dns_failures",
                                       "Lookups of a dns: or srv: backend entry that failed "
                                       "(timeout, SERVFAIL, refused); its last good set was kept.",
                                       labels=labels)
        backends = GaugeMetricFamily("poolproxy_dns_backends",
                                     "Backends a dns: or srv: entry has in its cluster now.",
                                     labels=labels)
        for name in names:
            failures.add_metric([name.cluster, name.name], name.failures)
            backends.add_metric([name.cluster, name.name], len(name.targets))
        yield from (failures, backends)


def build_registry(service: ProxyView) -> CollectorRegistry:
    """
    A private registry (not prometheus-client's global one) holding the
    proxy's collector and the process collector (memory, CPU, open fds).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(service))
    ProcessCollector(registry=registry)
    return registry
