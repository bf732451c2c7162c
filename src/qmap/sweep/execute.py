"""Run a sweep's points as Ray tasks, each one ordinary ``qmap run`` (:func:`qmap.pipeline.run`) into
``<out>/points/<point>/``.

- A point whose folder already holds a complete run of the same config fingerprint is skipped
  (:func:`qmap.runfolder.is_complete`); one with a partial run of the same config is continued (``--resume``).
- Ray reruns a task whose worker process died (``max_retries``); the rerun finds the point's partial run folder
  and resumes it. An error raised by the run itself (bad input, a bug) is not retried: the point is recorded as
  failed with the error's first line and the other points go on.
- Without ``address`` a local Ray instance is started in this process with every CPU of the machine (or
  ``num_cpus``); ``address`` (``auto``, ``ray://host:port``) joins an existing cluster instead. One point asks
  for the sweep's ``resources``, so ``num_cpus / resources.num_cpus`` points run at once on each node.
- The sweep report (:mod:`qmap.sweep.report`) is rewritten after every finished point.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, QmapError
from ..preflight import preflight
from ..runfolder import config_fingerprint, is_complete, read_marker
from .report import write_sweep_report
from .spec import Point, Sweep

log = logging.getLogger("qmap")
INSTALL_HINT = "qmap sweep runs its points on Ray, which is not installed here: pip install 'qmap[ray]'"
OBJECT_STORE_BYTES = 100 * 2**20  # points return small dicts; results travel through the run folders


def require_ray():
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it (there is no fallback scheduler)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def point_folder(out: Path, point: Point) -> Path:
    return out / "points" / point.name


@dataclass
class PlannedPoint:
    point: Point
    folder: Path
    fingerprint: str
    state: str  # "complete" (skipped) | "new" | "resume" (same config, unfinished) | "replace" (other config)


def plan(sweep: Sweep, out: Path, data: str | None = None, overwrite: bool = False) -> list[PlannedPoint]:
    """What each point needs, checked before anything runs: every point still to run goes through the same
    checks as ``qmap run`` (:func:`qmap.preflight.preflight`: config, method options, data root, checkpoint,
    layers, its folder); a folder holding a different config's run is refused unless ``overwrite`` (then that
    point is rerun from scratch), as is a folder that is not a run folder at all."""
    planned = []
    for point in sweep.points:
        folder, fp = point_folder(out, point), config_fingerprint(point.config)
        marker = read_marker(folder)
        if is_complete(folder, fp):
            state = "complete"
        elif marker is None:
            state = "new"
        elif marker.get("config_fingerprint") == fp:
            state = "resume"
        elif overwrite:
            state = "replace"
        else:
            raise ConfigError(f"point {point.name}: {folder} holds a run of a different config (the sweep file "
                              f"changed?): pass --overwrite to rerun such points, or use another --out")
        if state != "complete":
            preflight(point.config, data, out=folder, overwrite=state == "replace", resume=state == "resume")
        planned.append(PlannedPoint(point, folder, fp, state))
    return planned


def run_point(point: Point, folder: str, data: str | None, overwrite: bool, threads: float, version: str) -> dict:
    """Body of one Ray task: the point's ``qmap run`` in the worker process. Decides at start whether to resume,
    so a rerun after a killed worker continues the folder the killed attempt left."""
    import torch

    from ..pipeline import run

    if version != __version__:
        raise ConfigError(f"this Ray worker has qmap {__version__}, the sweep was started with qmap {version}: "
                          f"install the same qmap on every node")
    torch.set_num_threads(max(1, int(threads)))
    marker = read_marker(folder)
    resume = marker is not None and marker.get("config_fingerprint") == config_fingerprint(point.config)
    t0 = time.perf_counter()
    outcome = {"point": point.name, "pid": os.getpid(), "resumed": resume}
    try:
        run(point.config, folder, data=data, overwrite=overwrite and marker is not None and not resume,
            resume=resume, quiet=True)
        outcome["status"] = "complete"
    except QmapError as e:
        outcome.update(status="failed", error=str(e).splitlines()[0], exit_code=e.exit_code)
    outcome["wall_s"] = time.perf_counter() - t0
    return outcome


def start_ray(ray, address: str | None, num_cpus: int | None, quiet: bool) -> bool:
    """Connect to ``address`` or start a local instance; False when this process already had Ray running (the
    caller then leaves it running)."""
    if ray.is_initialized():
        return False
    common = {"logging_level": "WARNING", "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES, **common)
    return True


def run_sweep(sweep: Sweep, out: str | Path, address: str | None = None, num_cpus: int | None = None,
              data: str | None = None, overwrite: bool = False, quiet: bool = False) -> dict:
    """Run every point of ``sweep`` that is not complete yet; returns the sweep report (also ``<out>/sweep.json``).

    ``data``: the data root given to every point (default: each worker's ``$QMAP_DATA`` or config file)."""
    out = Path(out).resolve()
    data = str(Path(data).resolve()) if data else None
    planned = plan(sweep, out, data, overwrite)
    todo = [p for p in planned if p.state != "complete"]
    log.info(f"sweep {sweep.name}: {len(planned)} points, {len(planned) - len(todo)} complete already, "
        f"{len(todo)} to run → {out}")
    t0 = time.perf_counter()
    outcomes: dict[str, dict] = {}
    invocation = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "points_run": len(todo),
                  "points_skipped": len(planned) - len(todo)}
    if todo:
        ray = require_ray()
        owned = start_ray(ray, address, num_cpus, quiet)
        try:
            invocation["cluster_cpus"] = ray.cluster_resources().get("CPU")
            task = ray.remote(max_calls=1)(run_point)  # a fresh worker per point: its peak RSS is that point's
            opts = {**sweep.resources.ray_options(), "max_retries": sweep.max_retries, "retry_exceptions": False}
            refs = {task.options(name=f"qmap-point:{p.point.name}", **opts).remote(
                        p.point, str(p.folder), data, p.state == "replace", sweep.resources.num_cpus, __version__): p
                    for p in todo}
            while refs:
                (ref,), _ = ray.wait(list(refs), num_returns=1)
                p = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as e:  # a bug in the run, or retries used up
                    outcome = {"point": p.point.name, "status": "failed",
                               "error": (str(e).strip().splitlines() or [type(e).__name__])[-1]}
                outcomes[p.point.name] = outcome
                log.info(f"  [{len(outcomes)}/{len(todo)}] {p.point.name}: {outcome['status']}"
                    + (f" in {outcome['wall_s']:.0f} s" if "wall_s" in outcome else "")
                    + (f" — {outcome['error']}" if outcome.get("error") else ""))
                write_sweep_report(sweep, out, planned, outcomes, invocation | {"wall_s": time.perf_counter() - t0})
        finally:
            if owned:
                ray.shutdown()
    invocation["wall_s"] = time.perf_counter() - t0
    return write_sweep_report(sweep, out, planned, outcomes, invocation)
