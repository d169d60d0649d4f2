"""The Ray executor: a sweep's cases as Ray tasks on a cluster, one case per device at a time.

Ray already schedules work across the machines ML teams run (GPU servers, TPU hosts, CPU
servers), so the suite hands it one task per case with the resources that case needs and
leaves placement to it, instead of growing a scheduler of its own:

- a `cuda` case asks for one GPU, an `xla` case for one TPU chip, a `cpu` case for the node's
  `attnbench_cpu` resource (one per node, so two CPU cases never share a host's cores) and the
  CPUs it pins; `--ray-resource` adds user-defined resources to target a machine type. A
  backend may declare its own request as a class attribute `ray_resources`.
- Inside the task the local executor runs the case exactly as on one machine: a fresh worker
  process for the timing, another for the memory, with the timeout and memory guard.
- The task is a streaming generator: it first yields the node it landed on, then the outcome,
  so a case whose node dies is attributed to that node.
- The Runner keeps at most one case of each scaling curve in flight (lengths in increasing
  order), so "skip longer lengths after oom/timeout" works as locally; curves run in parallel.
  Each curve prefers the node its previous length ran on (soft affinity), so a scaling curve
  is measured on one machine unless that machine dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import types
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from attnbench.core import interrupts
from attnbench.core.cases import Case
from attnbench.core.errors import UserError
from attnbench.core.layout import PACKAGE, SUBPACKAGE_FOLDERS, lay_out_package
from attnbench.core.nodes import describe_node
from attnbench.core.registry import BACKENDS, PLUGINS_ENV, get_backend, get_workload, load_plugins
from attnbench.core.settings import RunSettings
from attnbench.engine.executors.base import ConcurrentExecutor, Outcome
from attnbench.engine.executors.local import LocalExecutor
from attnbench.engine.first_call import first_call_limit

CPU_RESOURCE = "attnbench_cpu"  # one per node: a CPU case has the host's cores to itself
INSTALL_HINT = "pip install 'attnbench[ray]' (or pip install 'ray[default]')"
# What each built-in kind of backend asks of a node. Backends not named here run on the host
# CPU (e.g. ONNX Runtime's CPU provider), so they take the CPU lock like `cpu`.
BACKEND_RESOURCES: dict[str, dict[str, float]] = {
    "cpu": {"CPU": 1, CPU_RESOURCE: 1},
    "cuda": {"CPU": 1, "GPU": 1},
    "xla": {"CPU": 1, "TPU": 1},
}
HOST_RESOURCES: dict[str, float] = {"CPU": 1, CPU_RESOURCE: 1}
POLL_S = 2.0  # how often the driver looks at the cluster's nodes while waiting
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20  # outcomes are small JSON-like objects
# Environment that Ray sets per task to give it its devices; the fork server must match it.
DEVICE_ENV = ("CUDA_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS", "TPU_CHIPS_PER_HOST_BOUNDS", "TPU_HOST_BOUNDS")


@dataclass(frozen=True)
class RaySpec:
    """A resource a user adds to cases: all of them, or those of one backend."""

    name: str
    amount: float
    backend: str | None = None

    @classmethod
    def parse(cls, text: str) -> RaySpec:
        """`[BACKEND:]NAME=AMOUNT`, e.g. `h100=1`, `cuda:accelerator_type:H100=0.01`."""
        load_plugins()
        name, sep, amount_text = text.rpartition("=")
        if not sep or not name:
            raise UserError(f"--ray-resource {text!r}: expected [BACKEND:]NAME=AMOUNT, e.g. cuda:h100=1")
        try:
            amount = float(amount_text)
        except ValueError:
            raise UserError(f"--ray-resource {text!r}: the amount {amount_text!r} is not a number") from None
        if amount <= 0:
            raise UserError(f"--ray-resource {text!r}: the amount must be positive")
        backend, colon, rest = name.partition(":")
        if colon and backend in BACKENDS and rest:
            return cls(rest, amount, backend)
        return cls(name, amount)

    def __str__(self) -> str:
        return f"{self.backend + ':' if self.backend else ''}{self.name}={self.amount:g}"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS if set, else a local cluster started for the run
    resources: tuple[RaySpec, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "resources": [str(r) for r in self.resources]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RayOptions:
        return cls(d.get("address"), tuple(RaySpec.parse(r) for r in d.get("resources", ())))


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


def request_for(case: Case, extra: tuple[RaySpec, ...] = ()) -> dict[str, float]:
    """The resources one case asks of a node."""
    declared = getattr(get_backend(case.backend), "ray_resources", None)
    request = dict(declared if declared is not None else BACKEND_RESOURCES.get(case.backend, HOST_RESOURCES))
    if CPU_RESOURCE in request and case.threads:
        request["CPU"] = float(case.threads)  # honest accounting: the case pins this many threads
    for spec in extra:
        if spec.backend in (None, case.backend):
            request[spec.name] = spec.amount
    return request


def fits(request: dict[str, float], offered: dict[str, float]) -> bool:
    return all(offered.get(k, 0.0) >= v for k, v in request.items() if v > 0)


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(
        f"{k}={v / 2**30:.1f}GiB" if k.endswith("memory") else f"{k}={v:g}" for k, v in sorted(resources.items())
    )


def _missing(request: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """The requested resources that no single node has enough of."""
    return [k for k, v in sorted(request.items()) if v > 0 and not any(n.get(k, 0.0) >= v for n in nodes)]


def _hint(missing: list[str]) -> str:
    if CPU_RESOURCE in missing:
        return (
            f"; a CPU node offers it once started with `ray start ... --resources='{{\"{CPU_RESOURCE}\": 1}}'`, "
            "which lets one case at a time use its cores"
        )
    return ""


# ----------------------------------------------------------------------------- on the node

_forkserver_env: dict[str, str] | None = None


def _device_env() -> dict[str, str]:
    return {k: os.environ[k] for k in DEVICE_ENV if k in os.environ}


def _match_forkserver_env() -> None:
    """Restart the fork server when Ray gave this worker process other devices.

    Ray reuses worker processes across tasks and sets CUDA_VISIBLE_DEVICES (or the TPU
    equivalents) per task; the fork server, and every case worker it forks, keeps the
    environment it started with, so a stale one would put the case on another task's GPU.
    """
    global _forkserver_env
    env = _device_env()
    if _forkserver_env is not None and env != _forkserver_env:
        from multiprocessing import forkserver

        stop = getattr(forkserver._forkserver, "_stop", None)
        if stop is not None:
            stop()
    _forkserver_env = env


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Keep multiprocessing from re-importing the Ray worker's main script in each case worker.

    A new process re-imports the parent's __main__ before it runs; in a Ray worker that is
    Ray's default_worker.py, which imports Ray: measured here, 0.7 s per process instead of
    the 20-30 ms a case worker costs under `bench`. The cases never use __main__.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def run_here(case: Case, settings: RunSettings, node: dict[str, Any]) -> Outcome:
    """One case on this node, measured by the local executor, after this node's own checks."""
    from attnbench.engine.memory_fit import memory_refusal

    if settings.plugins:
        os.environ[PLUGINS_ENV] = settings.plugins
    load_plugins()
    avail = get_backend(case.backend).availability()
    if not avail.available:
        reason = avail.reason or "unavailable"
        return Outcome("unsupported", f"backend {case.backend} is not available on node {node['id']}: {reason}")
    refused = memory_refusal(case)
    if refused:
        return Outcome("skipped", f"on node {node['id']}: {refused}")
    if settings.memory_limit_bytes is None:
        # The driver's memory says nothing about this node's: guard with the node's own.
        settings = dataclasses.replace(settings, memory_limit_bytes=int(0.9 * psutil.virtual_memory().available))
    _match_forkserver_env()
    executor = LocalExecutor(settings)
    with _without_main_module():
        fork_server_s = executor.warm()
        started = time.time()
        try:
            outcome = executor.run(case)
        except KeyboardInterrupt:  # ray.cancel: stop the case's worker before going
            executor.abandon()
            raise
    # Wall-clock span on the node, so overlapping cases on one device would show.
    outcome.worker.update(started_unix=started, ended_unix=time.time())
    outcome.worker["fork_server_s"] = fork_server_s
    outcome.worker["memory_limit_bytes"] = settings.memory_limit_bytes
    return outcome


def case_task(case: Case, settings: RunSettings) -> Iterator[tuple[str, Any]]:
    """The Ray task: say where it runs, then run the case there."""
    import ray

    ctx = ray.get_runtime_context()
    accelerators = {k: list(v) for k, v in ctx.get_accelerator_ids().items() if v}
    node = describe_node(ctx.get_node_id(), ray.util.get_node_ip_address(), accelerators)
    yield ("started", node)
    outcome = run_here(case, settings, node)
    outcome.node = node
    yield ("done", outcome)


# ----------------------------------------------------------------------------- on the driver


@dataclass
class _Flight:
    case: Case
    curve: tuple
    submitted: float
    deadline_s: float  # the stuck-task guard: the timeout rule's ceiling for this case, plus a margin
    node: dict[str, Any] | None = None  # known once the task has started
    started: float | None = None


def _installed(location: str | Path) -> bool:
    """Installed code: nodes are expected to have the same environment."""
    return "site-packages" in Path(location).parts or "dist-packages" in Path(location).parts


def _package_dir(scratch: Path) -> str | None:
    """The driver's attnbench as one folder named attnbench (Ray names a py_module after its
    folder), or None when it is installed.

    From a checkout (an editable install) the package spans three folders: harness/ is
    attnbench, and workloads/ and backends/ its subpackages. Then scratch/attnbench is made
    of links to them, which Ray follows when it packs the folder.
    """
    root = Path(importlib.import_module(PACKAGE).__path__[0])
    if _installed(root):
        return None
    parts = {name: Path(importlib.import_module(f"{PACKAGE}.{name}").__path__[0]) for name in SUBPACKAGE_FOLDERS}
    if root.name == PACKAGE and all(folder == root / name for name, folder in parts.items()):
        return str(root)  # laid out as installed already (e.g. an import root made by bench ab)
    return str(lay_out_package(root, parts, scratch / PACKAGE))


def _code_dirs(plugins: str, scratch: Path) -> list[str]:
    """Folders shipped to every node: attnbench, and plugin packages that are local files."""
    package = _package_dir(scratch)
    dirs: list[str] = [package] if package else []
    for top in dict.fromkeys(m.strip().split(".")[0] for m in plugins.split(",") if m.strip()):
        if top == PACKAGE:
            continue  # a plugin inside attnbench travels with it
        spec = importlib.util.find_spec(top)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if spec and not locations and spec.origin:
            locations = [spec.origin]  # a single-file module
        for loc in locations:
            if not _installed(loc) and loc not in dirs:
                dirs.append(loc)
    return dirs


LOOPBACK = "127.0.0.1"
TOKEN_AUTH_SINCE = (2, 52)  # the first Ray with RAY_AUTH_MODE=token


def _ray_version() -> tuple[int, ...]:
    """The installed Ray's version as numbers, read without importing Ray; () if unknown."""
    try:
        text = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return ()
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _listening_addresses() -> list[str]:
    """The addresses the processes of the run's local cluster listen on (children of this
    process), e.g. "::" for every interface: what run.json says about who could connect."""
    found: set[str] = set()
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr:
                    found.add(conn.laddr.ip)
    return sorted(found)


def _configure_local_auth(ray_loaded: bool) -> str:
    """Token authentication for a cluster this run starts itself, with nothing to set up.

    Ray 2.52+ secures a cluster with a shared token (RAY_AUTH_MODE=token). For a local
    cluster the run makes its own random token and hands it to the processes it starts
    through the environment, so nothing is written to ~/.ray and nothing else can join.
    An explicit RAY_AUTH_MODE from the user is left alone.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return os.environ["RAY_AUTH_MODE"]
    version = _ray_version()
    if version < TOKEN_AUTH_SINCE:  # the variable would be ignored: claim nothing
        shown = ".".join(map(str, version)) or "unknown"
        return f"none (Ray {shown} predates token authentication)"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if ray_loaded:  # Ray reads its config at import; have it read the environment again
        with contextlib.suppress(Exception):
            from ray._raylet import Config

            Config.initialize("")
    return "token (a random token made for this run)"


class RayExecutor(ConcurrentExecutor):
    """Runs cases as Ray tasks. The Runner submits the next case of every curve and records
    outcomes as they finish (see attnbench.engine.executors.base.ConcurrentExecutor)."""

    name = "ray"

    def __init__(self, settings: RunSettings, options: RayOptions) -> None:
        super().__init__()
        self.settings = settings
        self.options = options
        self._ray: Any = None
        self._owns_ray = False
        self._local_cluster = False
        self._auth = None
        self._task: Any = None
        self._nodes: dict[str, dict[str, Any]] = {}  # alive Ray node id -> node summary
        self._flights: dict[Any, _Flight] = {}
        self._finished: deque[tuple[Case, Outcome]] = deque()
        self._curve_node: dict[tuple, str] = {}  # curve -> Ray node id of its last case
        self._last_poll = 0.0
        self._scratch: Path | None = None
        if importlib.util.find_spec("ray") is None:  # say so before any folder is made
            import_ray()

    # --- set-up ---------------------------------------------------------------------------

    def warm(self) -> float:
        """Connect to the cluster (or start a local one), ship the code, read the nodes."""
        t0 = time.perf_counter()
        address = self.options.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            self._auth = _configure_local_auth("ray" in sys.modules)
        ray = import_ray()
        self._ray = ray
        self._scratch = Path(tempfile.mkdtemp(prefix="attnbench-ray-"))  # the shipped package's links
        runtime_env = {"py_modules": _code_dirs(self.settings.plugins, self._scratch)}
        if ray.is_initialized():  # a caller (e.g. a test) connected already: use that cluster
            pass
        else:
            common = dict(runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING)
            try:
                if address is None:
                    ray.init(
                        resources={CPU_RESOURCE: 1},
                        include_dashboard=False,
                        # A cluster for this run alone, addressed on loopback. Ray (2.60 checked)
                        # still has its GCS and raylet listen on every interface whatever this
                        # says, so the run's token is what keeps other hosts out.
                        _node_ip_address=LOOPBACK,
                        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                        **common,
                    )
                    self._local_cluster = True
                else:
                    ray.init(address=address, **common)
            except getattr(ray.exceptions, "AuthenticationError", ()) as exc:  # Ray 2.52+
                raise UserError(
                    f"the Ray cluster at {address} refused this client's token ({exc}); set "
                    "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to a file holding the cluster's token "
                    "(`ray get-auth-token` on the head node prints it)"
                ) from None
            except (ConnectionError, TimeoutError) as exc:
                auth = (
                    ""
                    if os.environ.get("RAY_AUTH_MODE") == "token"
                    else "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH "
                    "to a file holding its token (`ray get-auth-token` on the head node prints it)"
                )
                raise UserError(
                    f"cannot connect to a Ray cluster at {address}: {exc}; check --ray-address (host:port of the "
                    f"head's GCS, as printed by `ray start --head`){auth}"
                ) from None
            self._owns_ray = True
        self._task = ray.remote(case_task)
        self._refresh_nodes()
        return time.perf_counter() - t0

    def describe(self) -> dict[str, Any]:
        """What run.json records of the cluster, as it was when the run started."""
        ray = self._ray
        return {
            "address": self.options.address or os.environ.get("RAY_ADDRESS") or "local cluster started for the run",
            "local_cluster": self._local_cluster,
            "ray_version": ray.__version__,
            "auth": self._auth or os.environ.get("RAY_AUTH_MODE", "as the cluster is configured"),
            "dashboard": False if self._local_cluster else "as the cluster is configured",
            "resources": [str(r) for r in self.options.resources],
            "cluster_resources": ray.cluster_resources(),
            "nodes_at_start": [
                {"ray_node_id": n["id"], "ip": n["ip"], "resources": n["resources"]} for n in self._nodes.values()
            ],
            "code": "attnbench (and local plugin packages) shipped as runtime_env py_modules, unless installed",
            # Said plainly: Ray's own servers may listen beyond loopback whatever the run asks.
            "listening": _listening_addresses() if self._local_cluster else "as the cluster is configured",
        }

    def close(self) -> None:
        if self._owns_ray and self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # --- what can run where ---------------------------------------------------------------

    def _refresh_nodes(self) -> set[str]:
        """Re-read the alive nodes; returns the Ray node ids that have gone since the last look."""
        alive = {
            n["NodeID"]: {"id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "resources": dict(n["Resources"])}
            for n in self._ray.nodes()
            if n.get("Alive")
        }
        gone = set(self._nodes) - set(alive)
        self._nodes = alive
        self._last_poll = time.monotonic()
        return gone

    def cannot_run(self, case: Case) -> str | None:
        """Why no node of the cluster can run the case, or None."""
        request = request_for(case, self.options.resources)
        if any(fits(request, n["resources"]) for n in self._nodes.values()):
            return None
        offered = "; ".join(
            f"{n['id'][:8]}: {_fmt({k: v for k, v in n['resources'].items() if not k.startswith('node:')})}"
            for n in self._nodes.values()
        )
        missing = _missing(request, [n["resources"] for n in self._nodes.values()])
        lacking = f"; no node has enough {', '.join(missing)}" if missing else ""
        return (
            f"no node of the Ray cluster offers what a {case.backend} case needs ({_fmt(request)}){lacking}"
            f"{_hint(missing)}. Nodes: {offered or 'none alive'}"
        )

    # --- running --------------------------------------------------------------------------

    def submit(self, case: Case) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        request = request_for(case, self.options.resources)
        curve = case.group_key(get_workload(case.variant).derived_params)
        options: dict[str, Any] = {
            "num_returns": "streaming",  # first where it started, then the outcome
            "max_retries": 0,  # a case whose node died is recorded, not measured again elsewhere
            "num_cpus": request.pop("CPU", 0),
            "num_gpus": request.pop("GPU", 0),
            "resources": request,
        }
        node_id = self._curve_node.get(curve)
        if node_id in self._nodes:
            # Soft: wait for the curve's node while it is alive; go elsewhere only if it dies.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
        gen = self._task.options(**options).remote(case, self.settings)
        # The longest the case's workers (time, memory, profile) may legitimately take under the
        # timeout rule, slow cases and a long first call included (the driver's own calibration
        # stands in for the node's: a guard, not the limit), then a margin for the task's own start.
        first = first_call_limit(self.settings.case_timeout(), case)
        deadline = self.settings.case_timeout_ceiling(first) + 120
        self._flights[gen] = _Flight(case, curve, time.perf_counter(), deadline)

    def next_finished(self) -> tuple[Case, Outcome]:
        """Block until a submitted case has an outcome; outcomes come in the order cases end."""
        ray = self._ray
        while not self._finished:
            if not self._flights:
                raise RuntimeError("next_finished() with no case in flight")
            interrupts.check()  # a Ctrl-C swallowed where it landed (torch's import swallowed one) stops the run
            ready, _ = ray.wait(list(self._flights), num_returns=1, timeout=POLL_S)
            for gen in ready:
                self._receive(gen)
            if time.monotonic() - self._last_poll >= POLL_S:
                self._check_cluster()
        return self._finished.popleft()

    def _receive(self, gen: Any) -> None:
        ray = self._ray
        flight = self._flights[gen]
        try:
            kind, payload = ray.get(next(gen))
        except StopIteration:
            self._finish(gen, Outcome("error", "the case's Ray task ended without a result"))
            return
        except ray.exceptions.RayError as exc:
            self._finish(gen, self._failure(flight, exc))
            return
        if kind == "started":
            flight.node, flight.started = payload, time.perf_counter()
            self._curve_node[flight.curve] = payload["ray_node_id"]
            return
        outcome: Outcome = payload
        outcome.worker["queued_s"] = (flight.started or flight.submitted) - flight.submitted
        self._finish(gen, outcome)

    def _finish(self, gen: Any, outcome: Outcome) -> None:
        flight = self._flights.pop(gen)
        if outcome.node is None and flight.node is not None:
            outcome.node = flight.node
        self._finished.append((flight.case, outcome))

    def _failure(self, flight: _Flight, exc: Exception) -> Outcome:
        """The outcome of a case whose task did not return: its node or Ray worker died, or Ray refused it."""
        ray = self._ray
        where = f"node {flight.node['id']}" if flight.node else "its node"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ray.exceptions.NodeDiedError):
            return Outcome("error", f"node died: {where} left the cluster mid-case ({first_line})")
        if isinstance(exc, ray.exceptions.OutOfMemoryError):
            return Outcome("oom", f"Ray's memory monitor on {where} stopped the case: {first_line}")
        if isinstance(exc, ray.exceptions.WorkerCrashedError):
            return Outcome("error", f"the Ray worker running the case on {where} died: {first_line}")
        if isinstance(exc, ray.exceptions.RuntimeEnvSetupError):
            return Outcome("error", f"Ray could not install the suite's code on {where}: {first_line}")
        if isinstance(exc, ray.exceptions.TaskCancelledError):
            return Outcome("error", f"the case's Ray task was cancelled on {where}")
        return Outcome("error", f"the case's Ray task failed on {where}: {first_line}", traceback=str(exc))

    def _check_cluster(self) -> None:
        """After nodes leave, cases that no remaining node can run are stopped and say why."""
        gone = self._refresh_nodes()
        now = time.perf_counter()
        for gen, flight in list(self._flights.items()):
            if flight.started is not None:
                deadline = flight.deadline_s
                if now - flight.started > deadline:
                    # The local executor inside the task bounds each phase; this only fires
                    # when the task itself is stuck (e.g. a node that stopped answering).
                    self._ray.cancel(gen, force=True)
                    where = flight.node["id"] if flight.node else "?"
                    self._finish(gen, Outcome("timeout", f"no result from node {where} within {deadline:g} s"))
                continue
            if gone and self.cannot_run(flight.case):
                self._ray.cancel(gen, force=True)
                died = ", ".join(g[:8] for g in gone)
                self._finish(gen, Outcome("unsupported", f"after node(s) {died} died, {self.cannot_run(flight.case)}"))

    def run(self, case: Case) -> Outcome:
        """One case, start to end (the Runner uses submit/next_finished to run several at once)."""
        if self._flights or self._finished:
            raise RuntimeError("run() while other cases are in flight; use submit() and next_finished()")
        self.submit(case)
        return self.next_finished()[1]

    def abandon(self) -> None:
        """Ctrl-C: cancel every case in flight (each task stops its case worker on the way out)."""
        if self._ray is None:
            return
        for gen in list(self._flights):
            with contextlib.suppress(Exception):
                self._ray.cancel(gen)
        self._flights.clear()
