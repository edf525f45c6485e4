"""The private Ray Train 2.60 symbols `mfdiffuser/workers/trainer.py` builds on, as it uses them.

Ray Train has no public hook for a failure policy or for a torch rendezvous other than a TCPStore
(see the comment at the trainer's imports). A Ray upgrade that removes or changes one of these
fails here, naming the symbol, instead of as a hang or a retried error in the integration tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from ray.train import FailureConfig, WorkerGroupError
from ray.train.torch import TorchConfig, TorchTrainer

from mfdiffuser.workers.trainer import FailFastPolicy, unrecoverable


def _pinned(symbol: str, check: Callable[[], Any]) -> None:
    try:
        ok = check()
    except (AttributeError, ImportError, TypeError, ValueError) as err:
        pytest.fail(f"Ray private API {symbol} changed ({type(err).__name__}: {err})")
    assert ok, f"Ray private API {symbol} changed: see mfdiffuser/workers/trainer.py"


def _params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _takes_kwargs(fn: Callable[..., Any]) -> bool:
    kinds = [p.kind for p in inspect.signature(fn).parameters.values()]
    return inspect.Parameter.VAR_KEYWORD in kinds


def test_failure_policy_hook() -> None:
    from ray.train.v2._internal.execution.failure_handling import (
        DefaultFailurePolicy,
        FailureDecision,
    )

    # fit() builds the default policy and hands it to this method as `failure_policy`.
    _pinned(
        "TorchTrainer._initialize_and_run_controller(failure_policy=...)",
        lambda: (
            "failure_policy=create_failure_policy("
            in inspect.getsource(TorchTrainer.fit).replace(" ", "")
            and _takes_kwargs(TorchTrainer._initialize_and_run_controller)
        ),
    )
    _pinned(
        "DefaultFailurePolicy(failure_config).make_decision(training_failed_error)",
        lambda: (
            _params(DefaultFailurePolicy.__init__)[1:] == ["failure_config"]
            and _params(DefaultFailurePolicy.make_decision)[1:] == ["training_failed_error"]
        ),
    )
    _pinned("FailureDecision.RAISE", lambda: FailureDecision.RAISE)
    assert isinstance(FailFastPolicy(FailureConfig(max_failures=2)), DefaultFailurePolicy)


def test_worker_errors_carry_the_error_raised() -> None:
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    bad = ValueError("a bad value")
    _pinned(
        "UserExceptionWithTraceback(exc, traceback_str)._base_exc",
        lambda: UserExceptionWithTraceback(bad, traceback_str="")._base_exc is bad,
    )
    wrapped = UserExceptionWithTraceback(bad, traceback_str="")
    _pinned(
        "WorkerGroupError(error_message, worker_failures).worker_failures",
        lambda: unrecoverable(WorkerGroupError("failed", {0: wrapped})) is bad,
    )


def test_torch_backend() -> None:
    from ray.train.torch.config import _TorchBackend

    _pinned("TorchConfig.backend_cls is _TorchBackend", lambda: TorchConfig().backend_cls)
    assert TorchConfig().backend_cls is _TorchBackend, "Ray private API _TorchBackend moved"
    for hook in ("on_start", "on_shutdown"):
        _pinned(
            f"_TorchBackend.{hook}(worker_group, backend_config)",
            lambda hook=hook: (
                _params(getattr(_TorchBackend, hook))[1:] == ["worker_group", "backend_config"]
            ),
        )


def test_report_log_is_the_logger_the_trainer_quiets() -> None:
    """`quiet_report_log` raises the level of the logger Ray Train's report call logs through."""
    import logging

    from ray.train.v2._internal.execution import context

    from mfdiffuser.workers.trainer import quiet_report_log

    source = inspect.getsource(context)
    _pinned(
        "ray.train.v2._internal.execution.context logger",
        lambda: "logging.getLogger(__file__)" in source and "Reporting training result" in source,
    )
    logger = logging.getLogger(context.__file__)
    level = logger.level
    try:
        quiet_report_log()
        assert not logger.isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(level)


def test_data_config_internals_the_episode_split_uses() -> None:
    """`EpisodeSplit.configure` (the ray_data path) reads DataConfig's per-dataset execution
    options and shard-locality switch, as DataConfig.configure itself does in 2.60."""
    from ray.train import DataConfig

    config = DataConfig()
    _pinned(
        "DataConfig._resolve_execution_options",
        lambda: _params(config._resolve_execution_options) == ["dataset_name"],
    )
    _pinned(
        "DataConfig._enable_shard_locality",
        lambda: config._enable_shard_locality is True,
    )
    _pinned(
        "DataConfig.configure",
        lambda: (
            _params(DataConfig.configure)[:5]
            == ["self", "datasets", "world_size", "worker_handles", "worker_node_ids"]
        ),
    )
