"""The Ray executor's choices that need no cluster: resource requests, flags, and a missing Ray.

Fast, so they run by default; the cluster tests are in test_ray_executor.py (marker `ray`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from attnbench.cli.main import main
from attnbench.core.cases import Case
from attnbench.core.errors import UserError
from attnbench.engine.executors.ray import CPU_RESOURCE, RayOptions, RaySpec, fits, request_for


def case(backend: str, threads: int | None = None) -> Case:
    return Case("full.sdpa", (("causal", True),), "core", backend, "float32", "forward", 1, 1, 8, 64, threads)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h100=1", RaySpec("h100", 1.0)),
        ("cuda:h100=1", RaySpec("h100", 1.0, "cuda")),
        ("cuda:accelerator_type:H100=0.01", RaySpec("accelerator_type:H100", 0.01, "cuda")),
        ("accelerator_type:H100=0.01", RaySpec("accelerator_type:H100", 0.01)),  # not a backend: part of the name
    ],
)
def test_resource_spec_parses(text: str, expected: RaySpec) -> None:
    assert RaySpec.parse(text) == expected
    assert RaySpec.parse(str(expected)) == expected  # what run.json stores reads back the same


@pytest.mark.parametrize("text", ["h100", "=1", "h100=many", "h100=0", "cuda:h100=-1"])
def test_bad_resource_spec_is_a_user_error(text: str) -> None:
    with pytest.raises(UserError, match="--ray-resource"):
        RaySpec.parse(text)


def test_requests_by_backend() -> None:
    assert request_for(case("cpu")) == {"CPU": 1, CPU_RESOURCE: 1}
    assert request_for(case("cpu", threads=8)) == {"CPU": 8, CPU_RESOURCE: 1}  # the threads it pins
    assert request_for(case("cuda")) == {"CPU": 1, "GPU": 1}
    assert request_for(case("xla")) == {"CPU": 1, "TPU": 1}
    # A backend without a device of its own runs on the host CPU, so it takes the CPU lock.
    assert request_for(case("onnxruntime")) == {"CPU": 1, CPU_RESOURCE: 1}


def test_user_resources_target_a_machine_type() -> None:
    extra = (RaySpec("h100", 1.0, "cuda"), RaySpec("nightly", 0.5))
    assert request_for(case("cuda"), extra) == {"CPU": 1, "GPU": 1, "h100": 1.0, "nightly": 0.5}
    assert request_for(case("cpu"), extra) == {"CPU": 1, CPU_RESOURCE: 1, "nightly": 0.5}


def test_fits() -> None:
    node = {"CPU": 16.0, "GPU": 8.0, CPU_RESOURCE: 1.0, "accelerator_type:H100": 1.0}
    assert fits({"CPU": 1, "GPU": 1}, node)
    assert fits({"CPU": 1, "GPU": 1, "accelerator_type:H100": 0.01}, node)
    assert not fits({"CPU": 1, "TPU": 1}, node)
    assert not fits({"CPU": 32, CPU_RESOURCE: 1}, node)


def test_options_round_trip() -> None:
    options = RayOptions("10.0.0.1:6379", (RaySpec("h100", 1.0, "cuda"),))
    assert RayOptions.from_json(options.to_json()) == options


MISTAKES = [
    (["--ray-address", "10.0.0.1:6379"], "add --executor ray"),
    (["--executor", "local", "--ray-resource", "h100=1"], "not --executor local"),
    (["--executor", "ray", "--ray-resource", "h100"], "expected [BACKEND:]NAME=AMOUNT"),
]


@pytest.mark.parametrize(("args", "message"), MISTAKES)
def test_flag_mistakes_are_one_line_before_any_folder(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_without_ray_says_how_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what the interpreter sees where Ray is not installed
    out = tmp_path / "run"
    assert main(["run", "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'attnbench[ray]'" in err and err.count("\n") == 1, err
    assert not out.exists()  # said before any run folder is made


def test_ray_executor_is_a_concurrent_executor_and_local_is_not() -> None:
    """The Runner tells them apart by type (no duck typing): Ray runs cases side by side."""
    from attnbench.core.settings import RunSettings
    from attnbench.engine.executors.base import ConcurrentExecutor, Executor
    from attnbench.engine.executors.local import LocalExecutor
    from attnbench.engine.executors.ray import RayExecutor

    ray_executor = RayExecutor(RunSettings(), RayOptions())
    local = LocalExecutor(RunSettings())
    assert isinstance(ray_executor, ConcurrentExecutor) and ray_executor.name == "ray"
    assert isinstance(local, Executor) and not isinstance(local, ConcurrentExecutor)
    assert local.describe() is None  # run.json records nothing more of this machine's executor


def test_ray_ships_the_checkout_as_one_attnbench_package(tmp_path: Path) -> None:
    """Ray names a shipped folder's module after the folder: a checkout's three folders (harness/
    is attnbench; workloads/, backends/ its subpackages) go as one folder named attnbench."""
    import attnbench
    from attnbench.engine.executors.ray import _code_dirs

    dirs = _code_dirs("tests.plugins.slowdown", tmp_path)
    tests_dir = str(Path(__file__).resolve().parent)
    if "site-packages" in Path(attnbench.__path__[0]).parts:  # installed: the nodes have it too
        assert dirs == [tests_dir]
        return
    package, plugins = Path(dirs[0]), dirs[1:]
    assert package.name == "attnbench" and plugins == [tests_dir]
    for module in ("__init__.py", "core/record.py", "engine/runner.py", "workloads/base.py", "backends/base.py"):
        assert (package / module).is_file(), module


@pytest.mark.parametrize(
    ("version", "claims_token"), [("2.60.0", True), ("2.52.0rc1", True), ("2.51.2", False), ("2.9.3", False)]
)
def test_token_auth_is_claimed_only_where_ray_has_it(
    version: str, claims_token: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before Ray 2.52 RAY_AUTH_MODE is ignored: a run must not record "token" for an open cluster.
    import importlib.metadata
    import os

    from attnbench.engine.executors import ray as ray_executor

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    monkeypatch.setattr(os, "environ", env)  # what it sets must not reach later tests
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: version)
    auth = ray_executor._configure_local_auth(ray_loaded=False)
    assert auth.startswith("token") is claims_token
    assert ("RAY_AUTH_MODE" in env) is claims_token
    if not claims_token:
        assert f"Ray {version.split('rc')[0]}" in auth and "predates token authentication" in auth
