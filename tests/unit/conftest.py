"""The unit tier: plain logic and real model code in this process, never Ray. A test here that
starts Ray, or asks for the session's, fails at once: it belongs in tests/service or tests/e2e."""
from __future__ import annotations

import pytest

NO_RAY = "a unit test may not start Ray; move it to tests/service or tests/e2e"


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError(NO_RAY)

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def ray_cluster():
    raise AssertionError(NO_RAY)
