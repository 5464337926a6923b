"""Several evaluations in one call: one after the other, or spread over worker processes (``--jobs``),
whose progress is relayed to the caller and which are all stopped at once on a failure or a signal."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from ..config import EvalConfig
from ..errors import RobenchError
from . import distributed
from .evaluate import evaluate


def evaluate_many(
    tasks: list[EvalConfig], jobs: int = 1, progress: Callable[[dict], None] | None = None
) -> pd.DataFrame:
    """Several evaluations (each its checked settings), one after the other, or with ``jobs`` > 1
    as checkpoint x task units spread over that many processes (each with its share of the CPU threads).
    The results do not depend on ``jobs``: every example's attack is seeded by the example alone."""
    if jobs > 1 and distributed.current().world > 1:
        raise RobenchError("--jobs cannot be combined with torchrun; let torchrun's processes share the work.")
    if jobs <= 1:
        frames = [evaluate(t, progress=progress) for t in tasks]
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        units = [dataclasses.replace(t, checkpoints=[c]) for t in tasks for c in t.checkpoints]
        threads = max(1, torch.get_num_threads() // jobs)
        notify = progress or (lambda event: None)
        memo: dict = {}  # each dataset and checkpoint loaded once, however many units name it
        frames = [evaluate(u, cached_only=True, memo=memo) for u in units]  # what the store holds needs no worker
        todo = [i for i, f in enumerate(frames) if f is None]
        notify(
            {
                "event": "plan",
                "total": len(units),
                "stored": len(units) - len(todo),
                "jobs": jobs,
                "waiting": [f"{_name(units[i].checkpoints[0])}: {'+'.join(map(str, units[i].attacks))}" for i in todo],
            }
        )
        ctx = mp.get_context("spawn")
        events = ctx.Queue()  # the workers' progress (start, stage, batch, end of each run), shown as it comes
        pool = cf.ProcessPoolExecutor(
            min(jobs, max(1, len(todo))),
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(threads, os.getpid(), events),
        )
        try:
            futures = {pool.submit(_unit, units[i]): i for i in todo}
            pending, done = set(futures), 0
            while pending:
                finished, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                _relay(events, notify)
                for fut in finished:
                    i, done = futures[fut], done + 1
                    frames[i], seconds = fut.result()
                    notify(
                        {
                            "event": "unit",
                            "done": done,
                            "total": len(todo),
                            "seconds": seconds,
                            "rows": frames[i].to_dict(orient="records"),
                        }
                    )
        except BaseException:
            _relay(events, notify)
            # a failure, Ctrl-C or SIGTERM stops every worker now (each batch they finished is stored)
            # instead of waiting for their units to finish
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    outcomes = [f.attrs.pop("outcomes") for f in frames]  # pandas compares attrs when concatenating
    df = pd.concat(frames, ignore_index=True)
    df.attrs["outcomes"] = pd.concat(outcomes, ignore_index=True)
    return df


_EVENTS = None  # in a worker process: the queue its progress goes to


def _name(item) -> str:
    return getattr(item, "name", None) or Path(str(item)).stem


def _relay(events, notify) -> None:
    import queue

    while True:
        try:
            notify(events.get_nowait())
        except queue.Empty:
            return
        except (EOFError, OSError):  # the queue's pipe is gone with a terminated worker
            return


def _worker_init(threads: int, parent: int, events=None) -> None:
    """A worker: its share of the threads, its progress sent to the parent, and it ends itself if the parent
    process is gone (killed with SIGKILL, which no handler sees), so no orphan keeps attacking."""
    import threading

    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(threads)

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _unit(cfg: EvalConfig) -> tuple[pd.DataFrame, float]:
    tic = time.perf_counter()
    send = (
        (lambda ev: _EVENTS.put(ev) if ev.get("event") in ("start", "stage", "batch", "end") else None)
        if _EVENTS
        else None
    )
    df = evaluate(cfg, progress=send)
    return df, time.perf_counter() - tic
