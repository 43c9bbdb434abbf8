"""The whole job in its own process, dying (``os._exit``) at a chosen stage of a run.

Used by ``tests/test_job_crash.py``: everything is the real job (``detector.cli.main``); the
wrappers below only add the exit, after the real call for the ``after_*`` points and instead
of it for the ``before_*`` points.

    python -m tests.job_crash_child POINT CLI-ARGS...

``POINT``: none, after_store_merge (new buckets stored), after_engine_state (the engine's
state saved), after_alerting (notices decided and sent, the run not yet recorded),
before_pipeline_state (the watermark/last-run record), before_outputs (the reports).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

KILLED = 137


def _after(owner: Any, name: str) -> None:
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        real(*args, **kw)
        os._exit(KILLED)

    setattr(owner, name, wrapper)


def _before(owner: Any, name: str, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        if when(*args, **kw):
            os._exit(KILLED)
        return real(*args, **kw)

    setattr(owner, name, wrapper)


def _install(point: str) -> None:
    buckets = importlib.import_module("detector.store.buckets")
    engine_state = importlib.import_module("detector.store.engine_state")
    notify = importlib.import_module("detector.notify")
    pipeline = importlib.import_module("detector.pipeline")
    backend = importlib.import_module("detector.store.backend")
    if point == "after_store_merge":
        _after(buckets.BucketStore, "merge")
    elif point == "after_engine_state":
        _after(engine_state, "save_engine_state")
    elif point == "after_alerting":
        _after(notify, "run_alerting")
    elif point == "before_pipeline_state":
        _before(backend.LocalBackend, "write", lambda _self, key, *a, **k: key == "pipeline.json")
    elif point == "before_outputs":
        _before(pipeline, "_write_outputs")
    elif point != "none":
        raise SystemExit(f"unknown crash point {point!r}")


def main(argv: list[str]) -> int:
    _install(argv[0])
    from detector.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
