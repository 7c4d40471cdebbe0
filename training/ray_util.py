"""Joining or starting Ray, shared by the jobs (jobs/runner.py re-exports it) and the training
launchers below them: training/ never imports from jobs/."""

from __future__ import annotations


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # With no address, ray.init() joins RAY_ADDRESS or a job's cluster when set (`ray job
    # submit`), and otherwise starts an embedded local Ray: the same code runs everywhere.
    ray.init(address=address or None, log_to_driver=False, include_dashboard=False if not address else None)
