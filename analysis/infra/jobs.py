"""Many independent jobs (one per model) on an existing engine: submitit, or this process.

`run_jobs(function, items, settings)` calls `function(item)` for each item and returns what each call
returned, or the error that ended it, keyed by the item's name:

    inprocess  one after another in this process (the default: no engine, no extra process)
    local      submitit's LocalExecutor: every job a process of its own on this machine, all at once
    slurm      submitit's AutoExecutor on a SLURM cluster (partition, GPUs, time and memory per job);
               submitit is imported, and the cluster contacted, only when this is asked for

A job that fails or is killed raises nothing here: its outcome records the error, the other jobs go
on, and whatever the job writes must be complete or absent (its caller stages it).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.errors import UsageError

EXECUTORS = ("inprocess", "local", "slurm")


@dataclass(frozen=True)
class JobSettings:
    """Where and how jobs run: `executor` (one of `EXECUTORS`), submitit's log folder (`folder`), and per job:
    `timeout_min`, `cpus` (threads), and on SLURM `partition`, `gpus` and `mem_gb` (None: the cluster's default)."""

    executor: str = "inprocess"
    folder: Path = Path("jobs")
    timeout_min: int = 120
    cpus: int = 1
    partition: str | None = None
    gpus: int = 0
    mem_gb: int | None = None


@dataclass(frozen=True)
class Outcome:
    """One job's end: `value` (what the function returned) or `error` (its message), and submitit's `job_id`."""

    value: Any = None
    error: str | None = None
    job_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def executor_for(settings: JobSettings):
    """The submitit executor `settings` asks for, its parameters set (not for "inprocess")."""
    try:
        import submitit
    except ImportError:
        raise UsageError(f"--executor {settings.executor} runs jobs through submitit, which is not installed. "
                         "Install it (pip install submitit) or use --executor inprocess.") from None
    if settings.executor == "local":
        executor = submitit.LocalExecutor(folder=settings.folder)
        executor.update_parameters(timeout_min=settings.timeout_min)
        return executor
    try:
        executor = submitit.AutoExecutor(folder=settings.folder, cluster="slurm")
    except RuntimeError as err:  # submitit's "Could not detect srun"
        raise UsageError(f"--executor slurm sends each model to a SLURM cluster, but this machine is not on one "
                         f"({err}). Run the command on the cluster's login node, or use --executor local.") from None
    slurm = {"slurm_partition": settings.partition, "slurm_mem": f"{settings.mem_gb}G" if settings.mem_gb else None}
    executor.update_parameters(timeout_min=settings.timeout_min, cpus_per_task=settings.cpus,
                               gpus_per_node=settings.gpus, **{k: v for k, v in slurm.items() if v is not None})
    return executor


def check_engine(settings: JobSettings):
    """The submitit executor `settings` asks for (None in process), or a `UsageError` now, before any work, when
    that engine cannot be had here."""
    if settings.executor not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, not {settings.executor!r}.")
    return None if settings.executor == "inprocess" else executor_for(settings)


def run_jobs(function: Callable[[Any], Any], items: Mapping[str, Any], settings: JobSettings = JobSettings()
             ) -> dict[str, Outcome]:
    """{name: Outcome} of `function(item)` for each (name, item) of `items`, run as `settings.executor` says.

    `function` and the items must pickle (a module-level function, plain values) for "local" and "slurm".
    A `UsageError` stops everything in process (bad input); any other error ends only its own job.
    """
    executor = check_engine(settings)
    if executor is None:
        outcomes = {}
        for name, item in items.items():
            try:
                outcomes[name] = Outcome(value=function(item))
            except UsageError:
                raise
            except Exception as err:  # one model's failure must not lose the others
                traceback.print_exc()
                outcomes[name] = Outcome(error=f"{type(err).__name__}: {err}")
        return outcomes
    with executor.batch():
        jobs = {name: executor.submit(function, item) for name, item in items.items()}
    outcomes = {}
    for name, job in jobs.items():
        try:
            outcomes[name] = Outcome(value=job.result(), job_id=str(job.job_id))
        except Exception as err:  # submitit's FailedJobState, UncompletedJobError (killed), ...
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            outcomes[name] = Outcome(error=f"{type(err).__name__}: {first_line}", job_id=str(job.job_id))
    return outcomes
