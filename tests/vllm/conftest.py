"""Real vLLM for the engine integration tests: two replicas of a tiny random-weight model, started once.

Skipped, with the commands that enable them, when the vLLM venv is missing; failed instead when ``CI`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vllm.engine_process import HOW_TO_ENABLE, VllmProcess, build_tiny_model, engine_python


@pytest.fixture(scope="session")
def vllm_python() -> str:
    python = engine_python()
    if python is None:
        if os.environ.get("CI"):
            pytest.fail(HOW_TO_ENABLE)
        pytest.skip(HOW_TO_ENABLE)
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(vllm_python, tmp_path_factory.mktemp("vllm") / "tiny")


@pytest.fixture(scope="session")
def vllm_replicas(vllm_python: str, tiny_model: Path) -> Iterator[list[VllmProcess]]:
    """Two servers, started together. The first serves every test; the second is the one a test kills."""
    logs = tiny_model.parent
    replicas: list[VllmProcess] = []
    try:
        for i in range(2):
            replicas.append(VllmProcess(vllm_python, tiny_model, logs / f"vllm-{i}.log"))
        for replica in replicas:
            replica.wait_ready()
        print(f"\nvLLM replicas ready after {[round(r.ready_after_s or 0, 1) for r in replicas]} s")
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_replicas: list[VllmProcess]) -> VllmProcess:
    """The first replica, pinned (``VllmProcess.pin``): in a full run the second has been killed by then (the
    test that kills it runs first); run alone, a test has both, the second unpinned."""
    server = vllm_replicas[0]
    server.pin()
    return server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test that kills the second replica runs first of the vLLM tests; the others need only the first. Two
    vLLM servers on two cores starve each other and the tests' own process for seconds at a time (measured: a
    10 ms sleep in the client woke 0.7-3 s late, and answers arrived whole, headers included, 1.7-3 s after they
    were asked for; with one server their headers came in 25-50 ms and their tokens streamed, in four tries of
    four, though the client still stalled up to 0.9 s at times)."""
    first = next((n for n, item in enumerate(items) if item.nodeid.startswith("tests/vllm/")), None)
    if first is None:
        return
    killing = [item for item in items if item.nodeid.startswith("tests/vllm/test_replica_killed.py")]
    rest = [item for item in items if item not in killing]
    rest[first:first] = killing
    items[:] = rest
