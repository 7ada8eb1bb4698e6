"""S3Diff's weights, as the driver reaches them: three function stages under ``workers/``.

    find      where the weights are (a path lookup, no torch): the default model
    command   ``run_pipeline.py weights check|convert|download``
    check     every problem of the weights a job will load, before any work

The driver names them and runs them through ``pipeline.runner.stage`` (``run_here``, or
a Ray task of the same stage), so it imports no worker code. The check runs where the
workers run, since they need the weights there: in this process when the workers are on
this machine (before a private Ray starts, so a refusal costs no Ray start), else as a
task on the cluster once it is up (:func:`workers_here` decides).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from pipeline.runner import stopping
from pipeline.runner.stage import Stage, call_by_name, run_here

if TYPE_CHECKING:
    from pipeline.config import JobConfig
    from pipeline.regions.planned import Plan

K = TypeVar("K")

# (model.weights) -> where S3Diff's weights are, or None
FIND_WEIGHTS = Stage("find weights", "workers.s3diff.locations:find_weights")
# (argv) -> exit code
WEIGHTS_COMMAND = Stage("weights command", "workers.s3diff.command:main")
# (model.weights) -> the problems of the weights ([] when usable)
WEIGHTS_CHECK = Stage("weights check", "workers.s3diff.preflight:weights_problems")


def find_weights(explicit: str | None) -> str | None:
    """Where S3Diff's weights are as this machine finds them (``explicit``,
    ``$S3DIFF_WEIGHTS``, the caches), or None."""
    return run_here(FIND_WEIGHTS, explicit)


def weights_command(argv: Sequence[str]) -> int:
    """The ``weights`` subcommand; its exit code."""
    return run_here(WEIGHTS_COMMAND, list(argv))


def workers_here(cfg: JobConfig) -> bool:
    """Whether the workers run on this machine (``run.runner=local`` or a private local
    Ray), so that checks of their files can run in this process before Ray starts."""
    from pipeline.runner.cluster import join_address

    return cfg.run.runner == "local" or join_address(cfg.run.address) is None


def weights_problems(cfg: JobConfig, cancel: stopping.CancelToken | None = None) -> list[str]:
    """The weights check, run where the workers run: in this process when that is this
    machine (it imports torch here), else as a task on the cluster, which must be up."""
    weights = cfg.model.weights
    if workers_here(cfg):
        return run_here(WEIGHTS_CHECK, weights)
    import ray

    from pipeline.runner.ray_executor import wait_all

    task = ray.remote(num_cpus=WEIGHTS_CHECK.cpus, max_retries=2)(call_by_name)
    return wait_all([task.remote(WEIGHTS_CHECK.target, weights)], cancel)[0]


def weights_refusals(
    plans: Mapping[K, Plan], cancel: stopping.CancelToken | None = None
) -> dict[K, str]:
    """The one-line refusal of each plan whose model's weights are not usable; each
    model config is checked once."""
    from pipeline.errors import UserError

    verdicts: dict[str, str | None] = {}
    refused: dict[K, str] = {}
    for key, plan in plans.items():
        if not plan.model.needs_weights:
            continue
        model = repr(plan.config.model)
        if model not in verdicts:
            try:
                verdicts[model] = _refusal(weights_problems(plan.config, cancel))
            except UserError as exc:
                verdicts[model] = str(exc)
        if verdicts[model]:
            refused[key] = verdicts[model]
    return refused


def _refusal(problems: list[str]) -> str | None:
    if not problems:
        return None
    more = (
        f" (and {len(problems) - 1} more: run_pipeline.py weights check)"
        if len(problems) > 1
        else ""
    )
    return f"S3Diff weights are not usable: {problems[0]}{more}"
