"""
deploy/: the systemd unit and socket, and the Kubernetes manifests.

Nothing here needs systemd running or a Kubernetes cluster:

- the unit files pass C{systemd-analyze verify} (which also checks that
  ExecStart's binary exists, so the test verifies a copy whose ExecStart
  names this venv's twistd instead of /opt/poolproxy/bin/twistd);
- the manifests validate against a pinned Kubernetes version's schemas,
  bundled with kubernetes-validate (offline); the Prometheus Operator's
  PodMonitor, a CRD it has no schema for, is checked by structure;
- the TOML each ships is loaded by poolproxy's own loader, with the
  command line the unit or the Deployment runs, and what the manifests say
  about ports, probes and grace periods is checked against it;
- those command lines run: the unit's ExecStart and the Deployment's
  command start a real twistd, and the unit's socket activation runs under
  systemd's own C{systemd-socket-activate}, which passes the socket exactly
  as systemd does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - PyPy 3.9
    import tomli as tomllib

from poolproxy.config import ConfigError, ProxyConfig
from poolproxy.config.budget import client_cap, descriptor_budget
from poolproxy.config.endpoints import tcp_listen_address
from poolproxy.tap import ProxyOptions
from tests.interop import Process, binary, free_port, module, redis_server, wait_port
from tests.support import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
SYSTEMD = os.path.join(DEPLOY, "systemd")
KUBERNETES = os.path.join(DEPLOY, "kubernetes")
#: The Kubernetes version the manifests are validated against: the oldest
#: still maintained upstream when they were written (1.30, with PodDisruptionBudget
#: policy/v1, seccompProfile and topologySpreadConstraints long stable).
KUBERNETES_VERSION = "1.30"
#: Where the unit expects poolproxy's venv (deploy/systemd/poolproxy.service).
UNIT_TWISTD = "/opt/poolproxy/bin/twistd"
#: An example for the backends, not part of poolproxy's kustomization.
BACKENDS_EXAMPLE = "backends-headless.yaml"
#: Custom resources kubernetes-validate has no schema for (checked by structure).
CRDS = ("monitoring.coreos.com/", "kustomize.config.k8s.io/")
#: What runs twistd from this venv, as the installed twistd script would.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


# ---------------------------------------------------------------- helpers

def unit_file(name: str) -> Dict[str, Dict[str, List[str]]]:
    """
    A systemd unit file: section -> key -> values in order (systemd keys
    repeat, which configparser does not allow).
    """
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Dict[str, List[str]] = {}
    with open(os.path.join(SYSTEMD, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span such as C{60}, C{45s} or C{1min 30s}."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def options(args: List[str]) -> ProxyConfig:
    """The configuration C{twistd poolproxy ARGS} runs with."""
    parsed = ProxyOptions()
    parsed.parseOptions(args)
    return parsed.config


def after_subcommand(argv: List[str]) -> List[str]:
    """The arguments of C{twistd ... poolproxy ARGS}: ARGS."""
    return argv[argv.index("poolproxy") + 1:]


def tcp_port(endpoint: str) -> int:
    address = tcp_listen_address(endpoint)
    assert address is not None, f"{endpoint!r} is not a tcp listener"
    return address.port


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def redis_ping(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    sock.sendall(b"PING\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        reply += chunk
    return reply


# ---------------------------------------------------------------- systemd

class SystemdExampleConfig:
    """The unit's command line and the example TOML it names."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.unit = unit_file("poolproxy.service")
        (exec_start,) = self.unit["Service"]["ExecStart"]
        self.argv = shlex.split(exec_start)
        args = after_subcommand(self.argv)
        self.config_path = args[args.index("--config") + 1]
        with open(os.path.join(SYSTEMD, "poolproxy.toml")) as f:
            self.toml = f.read()
        self.tmp = os.path.abspath(testcase.mktemp())
        os.makedirs(self.tmp)

    def write(self, toml: str) -> List[str]:
        """C{toml} in a file, and ExecStart's argv reading it with this venv's twistd."""
        path = os.path.join(self.tmp, "poolproxy.toml")
        with open(path, "w") as f:
            f.write(toml)
        argv = [path if a == self.config_path else a for a in self.argv]
        return TWISTD + argv[1:]

    def socket_activated(self) -> str:
        """The TOML with its listener commented in for poolproxy.socket."""
        plain = re.search(r"^listen = .*$", self.toml, re.M)
        activated = re.search(r"^#(listen = \[\"systemd:.*)$", self.toml, re.M)
        assert plain is not None and activated is not None, "poolproxy.toml lost its listen lines"
        return self.toml.replace(plain.group(0), "#" + plain.group(0)).replace(
            activated.group(0), activated.group(1))


class SystemdUnitTests(SynchronousTestCase):
    """deploy/systemd/: the unit and socket, their TOML, and what they run."""

    def setUp(self) -> None:
        self.example = SystemdExampleConfig(self)

    def verify(self, units: Dict[str, str]) -> Tuple[int, str]:
        """C{systemd-analyze verify} on units (name -> text) in one directory."""
        analyze = binary("systemd-analyze")
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        for name, text in units.items():
            with open(os.path.join(where, name), "w") as f:
                f.write(text)
        done = subprocess.run([analyze, "verify", *(os.path.join(where, n) for n in units)],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, (done.stdout + done.stderr).strip()

    def units_for_this_venv(self) -> Dict[str, str]:
        """
        The unit and socket as shipped, but for ExecStart's binary: verify
        fails on a path that does not exist, so the copy names this venv's
        twistd (all else is checked as shipped).
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.assertTrue(os.access(twistd, os.X_OK), twistd)
        out = {}
        for name in ("poolproxy.service", "poolproxy.socket"):
            with open(os.path.join(SYSTEMD, name)) as f:
                out[name] = f.read().replace(UNIT_TWISTD, twistd)
        self.assertIn(twistd, out["poolproxy.service"])
        return out

    def test_verify(self) -> None:
        """systemd-analyze verify passes the unit and the socket without a word."""
        code, said = self.verify(self.units_for_this_venv())
        self.assertEqual((code, said), (0, ""))

    def test_verify_names_a_mistake(self) -> None:
        """
        The check above can fail: a misspelt key is named (with exit status
        0, hence any output fails it).
        """
        units = self.units_for_this_venv()
        service = units["poolproxy.service"]
        units["poolproxy.service"] = service.replace("LimitNOFILE=", "LimitNOFLIE=")
        code, said = self.verify(units)
        self.assertIn("Unknown key 'LimitNOFLIE'", said)

    def test_service_settings(self) -> None:
        """
        Reload is SIGHUP to the main process, stop is SIGTERM to it alone
        (KillMode=mixed: with --workers the supervisor forwards it), the unit
        waits out shutdown_delay + shutdown_timeout (+5 s a supervisor gives
        its workers), restarts on failure, and runs unprivileged.
        """
        service = self.example.unit["Service"]
        self.assertEqual(service["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(service["KillSignal"], ["SIGTERM"])
        self.assertEqual(service["KillMode"], ["mixed"])
        self.assertEqual(service["Restart"], ["on-failure"])
        self.assertEqual(service["Type"], ["simple"])
        for key in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "ProtectHome"):
            self.assertEqual(service[key], ["yes"], key)
        self.assertEqual(service["ProtectSystem"], ["strict"])
        self.assertEqual(self.example.argv[0], UNIT_TWISTD)
        self.assertEqual(self.example.argv[1:3], ["--nodaemon", "--pidfile="])
        config = options(after_subcommand(self.example.write(self.example.toml)))
        (stop,) = service["TimeoutStopSec"]
        self.assertGreaterEqual(seconds(stop), config.shutdown_delay + config.shutdown_timeout + 5)

    def test_open_file_limit_fits(self) -> None:
        """
        The example's pools, checks and clients fit in LimitNOFILE, with
        room for thousands of clients.
        """
        (limit,) = self.example.unit["Service"]["LimitNOFILE"]
        config = options(after_subcommand(self.example.write(self.example.toml)))
        self.assertGreaterEqual(client_cap(config, descriptor_budget(config, int(limit))), 10000)

    def test_socket_matches_the_config(self) -> None:
        """
        poolproxy.socket's FileDescriptorName is the name the TOML's
        systemd: listener asks for, and its port the plain listener's.
        """
        sock = unit_file("poolproxy.socket")["Socket"]
        (name,) = sock["FileDescriptorName"]
        activated = tomllib.loads(self.example.socket_activated())
        self.assertEqual(activated["listen"], [f"systemd:domain=INET:name={name}"])
        plain = options(after_subcommand(self.example.write(self.example.toml)))
        (listen_stream,) = sock["ListenStream"]
        self.assertEqual(int(listen_stream), tcp_port(plain.listeners[0].endpoint))

    def test_socket_missing(self) -> None:
        """
        Started without its socket (not through poolproxy.socket), the
        socket-activated configuration is refused with one line saying so.
        """
        args = after_subcommand(self.example.write(self.example.socket_activated()))
        e = self.assertRaises(ConfigError, options, args)
        self.assertIn("bad server endpoint 'systemd:domain=INET:name=clients': systemd passed "
                      "no socket named 'clients' (start it through its .socket unit", str(e))

    def test_exec_start_runs(self) -> None:
        """ExecStart's command line serves: a redis PING through it, /healthz and /readyz 200."""
        backend = redis_server(self)
        port, web = free_port(), free_port()
        argv = self.example.write(self.example.toml) + [
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--metrics", f"tcp:{web}:interface=127.0.0.1", "--backend", f"127.0.0.1:{backend}"]
        proxy = Process(self, argv, "proxy")
        wait_port(port, proxy.proc, log=proxy.log)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            self.assertEqual(redis_ping(sock), b"+PONG\r\n")
        self.assertEqual(http_status(web, "/healthz"), 200)
        self.assertEqual(http_status(web, "/readyz"), 200)

    def test_socket_activation(self) -> None:
        """
        With the TOML's systemd: listener, poolproxy serves on the socket
        systemd passes: systemd-socket-activate holds it, starts ExecStart's
        command when the first client connects, and that client is served.
        """
        activate = binary("systemd-socket-activate")
        (name,) = unit_file("poolproxy.socket")["Socket"]["FileDescriptorName"]
        backend = redis_server(self)
        port, web = free_port(), free_port()
        argv = self.example.write(self.example.socket_activated()) + [
            "--metrics", f"tcp:{web}:interface=127.0.0.1", "--backend", f"127.0.0.1:{backend}"]
        proxy = Process(self, [activate, "--listen", f"127.0.0.1:{port}", f"--fdname={name}",
                               *argv], "proxy")
        wait_port(port, proxy.proc, log=proxy.log)  # systemd's socket; poolproxy starts now
        with socket.create_connection(("127.0.0.1", port)) as sock:
            self.assertEqual(redis_ping(sock), b"+PONG\r\n")
        wait_port(web, proxy.proc, log=proxy.log)
        self.assertEqual(http_status(web, "/readyz"), 200)


# ------------------------------------------------------------- kubernetes

def manifests(yaml: Any) -> Dict[str, List[Dict[str, Any]]]:
    """Every document of every manifest in deploy/kubernetes/, by file name."""
    out = {}
    for name in sorted(os.listdir(KUBERNETES)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(KUBERNETES, name)) as f:
                out[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return out


def one(docs: Dict[str, List[Dict[str, Any]]], kind: str, name: Optional[str] = None,
        not_in: str = "") -> Dict[str, Any]:
    """The only manifest of C{kind} (called C{name}) outside the file C{not_in}."""
    found = [d for file, ds in docs.items() if file != not_in for d in ds
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def matches(selector: Dict[str, str], labels: Dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class KubernetesTests(SynchronousTestCase):
    """deploy/kubernetes/: valid manifests that agree with the TOML they carry."""

    def setUp(self) -> None:
        self.yaml = module("yaml")
        self.docs = manifests(self.yaml)
        self.deployment = one(self.docs, "Deployment")
        self.pod = self.deployment["spec"]["template"]
        (self.container,) = self.pod["spec"]["containers"]
        self.labels = self.pod["metadata"]["labels"]
        self.ports = {p["name"]: p for p in self.container["ports"]}
        self.config = self.load_config()

    def load_config(self) -> ProxyConfig:
        """
        The configuration the container runs with: its command line, with
        --config naming the ConfigMap's key where the Deployment mounts it.
        """
        args = after_subcommand(self.container["command"] + self.container.get("args", []))
        path = args[args.index("--config") + 1]
        (mount,) = [m for m in self.container["volumeMounts"]
                    if path.startswith(m["mountPath"] + "/")]
        (volume,) = [v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"]]
        configmap = one(self.docs, "ConfigMap", volume["configMap"]["name"])
        self.toml = configmap["data"][path[len(mount["mountPath"]) + 1:]]
        where = os.path.abspath(self.mktemp())
        with open(where, "w") as f:
            f.write(self.toml)
        self.args = [where if a == path else a for a in args]
        return options(self.args)

    def port_number(self, port: Any) -> int:
        """A container port given by name or number."""
        return int(self.ports[port]["containerPort"]) if isinstance(port, str) else int(port)

    def test_schemas(self) -> None:
        """
        Every manifest validates (strictly: no unknown field) against the
        pinned Kubernetes version.
        """
        validate = module("kubernetes_validate")
        checked = []
        for file, docs in self.docs.items():
            for doc in docs:
                if doc["apiVersion"].startswith(CRDS):
                    continue  # CRDs: no schema bundled (checked below)
                self.assertEqual(validate.validate(doc, KUBERNETES_VERSION, strict=True),
                                 KUBERNETES_VERSION)
                checked.append(doc["kind"])
        self.assertEqual(sorted(checked), ["ConfigMap", "Deployment", "PodDisruptionBudget",
                                           "Service", "Service"])

    def test_schemas_name_a_mistake(self) -> None:
        """The check above can fail: a misspelt probe field is refused offline."""
        validate = module("kubernetes_validate")
        broken = copy.deepcopy(self.deployment)
        container = broken["spec"]["template"]["spec"]["containers"][0]
        container["readinesProbe"] = container.pop("readinessProbe")
        self.assertRaises(validate.ValidationError, validate.validate, broken,
                          KUBERNETES_VERSION, strict=True)

    def test_probes(self) -> None:
        """
        Readiness is /readyz, liveness /healthz, both on the web endpoint's
        port, which listens beyond loopback (the kubelet probes the pod's IP).
        """
        web = tcp_listen_address(self.config.metrics)
        assert web is not None
        self.assertNotIn(web.host, ("127.0.0.1", "::1", "localhost"))
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = self.container[probe]["httpGet"]
            self.assertEqual((get["path"], self.port_number(get["port"])), (path, web.port))

    def test_container_ports_are_the_listeners(self) -> None:
        """The container declares each listener's port and the web port, and nothing else."""
        listeners = {tcp_port(spec.endpoint) for spec in self.config.listeners}
        declared = {int(p["containerPort"]) for p in self.ports.values()}
        self.assertEqual(declared, listeners | {tcp_port(self.config.metrics)})
        self.assertEqual({p.get("protocol", "TCP") for p in self.ports.values()}, {"TCP"})

    def test_service_targets_the_listeners(self) -> None:
        """The Service selects the pods and sends every port to a listener (not the web port)."""
        service = one(self.docs, "Service", not_in=BACKENDS_EXAMPLE)
        self.assertTrue(matches(service["spec"]["selector"], self.labels))
        listeners = {tcp_port(spec.endpoint) for spec in self.config.listeners}
        targets = {self.port_number(p["targetPort"]) for p in service["spec"]["ports"]}
        self.assertEqual(targets, listeners)

    def test_shutdown(self) -> None:
        """
        No preStop hook: shutdown_delay keeps serving while /readyz is 503,
        and the grace period covers it and the drain (+5 s to close pools).
        """
        self.assertGreater(self.config.shutdown_delay, 0)
        self.assertNotIn("lifecycle", self.container)
        self.assertGreaterEqual(self.pod["spec"]["terminationGracePeriodSeconds"],
                                self.config.shutdown_delay + self.config.shutdown_timeout + 5)
        self.assertTrue(self.config.watch_config)  # kubelet swaps the ConfigMap's file
        rolling = self.deployment["spec"]["strategy"]["rollingUpdate"]
        self.assertEqual(rolling["maxUnavailable"], 0)

    def test_runs_unprivileged(self) -> None:
        """Non-root, read-only root file system, no privilege escalation, no capabilities."""
        self.assertTrue(self.pod["spec"]["securityContext"]["runAsNonRoot"])
        context = self.container["securityContext"]
        self.assertTrue(context["readOnlyRootFilesystem"])
        self.assertFalse(context["allowPrivilegeEscalation"])
        self.assertEqual(context["capabilities"]["drop"], ["ALL"])
        self.assertEqual(self.container["command"][:3], ["twistd", "--nodaemon", "--pidfile="])
        self.assertIn("limits", self.container["resources"])
        self.assertIn("requests", self.container["resources"])

    def test_disruption_budget(self) -> None:
        """The PodDisruptionBudget selects the pods and leaves most of them up."""
        pdb = one(self.docs, "PodDisruptionBudget")
        self.assertTrue(matches(pdb["spec"]["selector"]["matchLabels"], self.labels))
        self.assertLess(pdb["spec"]["maxUnavailable"], self.deployment["spec"]["replicas"])

    def test_pod_monitor(self) -> None:
        """
        The PodMonitor (a CRD: checked by structure) scrapes /metrics on the
        web port of the pods.
        """
        monitor = one(self.docs, "PodMonitor")
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        self.assertTrue(matches(monitor["spec"]["selector"]["matchLabels"], self.labels))
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        self.assertIn(endpoint["port"], self.ports)  # PodMonitor ports are names
        self.assertEqual(self.port_number(endpoint["port"]), tcp_port(self.config.metrics))
        self.assertEqual(endpoint["path"], "/metrics")

    def test_headless_backends_feed_srv(self) -> None:
        """
        The headless Service example publishes an SRV record (a named port)
        and the ConfigMap's srv: example names that record.
        """
        service = one(self.docs, "Service", not_in="service.yaml")
        self.assertEqual(service["spec"]["clusterIP"], "None")
        (port,) = service["spec"]["ports"]
        protocol = port.get("protocol", "TCP").lower()
        record = f"_{port['name']}._{protocol}.{service['metadata']['name']}."
        self.assertRegex(self.toml, r"(?m)^\s*#\s*backend = \[\"srv:" + re.escape(record))
        # The static backends are that Service's pods by name (pod.service).
        for cluster in self.config.clusters:
            for backend in cluster.backends:
                self.assertRegex(backend.address, rf"^[a-z0-9-]+\.{service['metadata']['name']}:"
                                 rf"{port['port']}$")

    def test_kustomization(self) -> None:
        """
        kustomization.yaml lists every poolproxy manifest (the backends'
        example is not one) and names the image.
        """
        (kustomization,) = self.docs["kustomization.yaml"]
        expected = sorted(set(self.docs) - {"kustomization.yaml", BACKENDS_EXAMPLE})
        self.assertEqual(sorted(kustomization["resources"]), expected)
        image = self.container["image"].split(":")[0]
        self.assertEqual([i["name"] for i in kustomization["images"]], [image])

    def test_command_runs(self) -> None:
        """
        The container's command starts a proxy with the ConfigMap's TOML (its
        listener and web endpoint moved to free loopback ports): /healthz
        answers 200, /readyz 503 since its backends (cluster DNS names) are
        nowhere to be found here.
        """
        port, web = free_port(), free_port()
        command = self.container["command"]
        argv = TWISTD + command[1:command.index("poolproxy") + 1]
        argv += self.args + ["--listen", f"tcp:{port}:interface=127.0.0.1",
                             "--metrics", f"tcp:{web}:interface=127.0.0.1",
                             "--shutdown-delay", "0"]  # the test's SIGTERM need not wait
        proxy = Process(self, argv, "proxy")
        wait_port(web, proxy.proc, log=proxy.log)
        wait_port(port, proxy.proc, log=proxy.log)
        self.assertEqual(http_status(web, "/healthz"), 200)
        self.assertEqual(http_status(web, "/readyz"), 503)


# ------------------------------------------------------------------- docs

class DeploymentDocTests(SynchronousTestCase):
    """docs/deployment.md describes every file of deploy/ and its links lead somewhere."""

    def setUp(self) -> None:
        with open(os.path.join(ROOT, "docs", "deployment.md")) as f:
            self.doc = f.read()

    def test_every_file_described(self) -> None:
        """Each file under deploy/ is named (by its path) in docs/deployment.md."""
        for where, _, files in os.walk(DEPLOY):
            for name in files:
                path = os.path.relpath(os.path.join(where, name), ROOT)
                self.assertIn(path, self.doc)

    def test_links(self) -> None:
        """Relative links point at files that exist, and at headings that exist in them."""
        for target in re.findall(r"\]\(((?!https?:)[^)]+)\)", self.doc):
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, "docs", path)) if path else \
                os.path.join(ROOT, "docs", "deployment.md")
            self.assertTrue(os.path.exists(full), target)
            if anchor:
                with open(full) as f:
                    headings = re.findall(r"^#+ (.*)$", f.read(), re.M)
                slugs = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
                self.assertIn(anchor, slugs, target)

    def test_readme_links_it(self) -> None:
        """The README's list of documentation links the page."""
        with open(os.path.join(ROOT, "README.md")) as f:
            self.assertIn("(docs/deployment.md)", f.read())
