"""The progress displays of the robench command line: live bars on a terminal, plain lines in a log. The
commands in cli.py pass ``update`` as the progress callback; nothing here computes a result."""

from __future__ import annotations

import os
import time

from rich.markup import escape

from .cli_output import clean, clean_only, err, headline, track

PLAIN_EVERY = 25.0  # seconds: the longest a plain progress log stays silent while a run goes on (under 30)


def plain_progress() -> bool:
    """Progress as plain lines (a log, CI) rather than live bars: when stderr is not a terminal, unless
    ROBENCH_PROGRESS says ``bars`` or ``lines``."""
    mode = os.environ.get("ROBENCH_PROGRESS", "auto").strip().lower()
    return mode == "lines" or (mode != "bars" and not err.is_terminal)


class EvalProgress:
    """Progress of evaluations. On a terminal, one rich progress bar per checkpoint x attack set: examples
    done, robust so far (in %), the attack (or cascade member) running now on how many of the batch's
    examples, time elapsed, and an ETA from robench's own rate over this run (rich's estimate looks back 30 s
    only, so a batch that takes longer never got one). Elsewhere (``plain``: a CI log), plain lines: one as
    each run starts and ends, and the state of the running one at least every ``PLAIN_EVERY`` seconds, also
    in the middle of a long batch."""

    def __init__(self, plain: bool | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.plain = plain_progress() if plain is None else plain
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[robust]}"),
            TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=err,
            transient=False,
            disable=self.plain,
        )
        self.tasks: dict = {}
        self.robust: dict = {}
        self.word: dict = {}
        self.clock: dict = {}
        self.state: dict = {}  # plain mode: run id -> what its next line says
        self.last = self.began = time.monotonic()
        self._stop = None

    def __enter__(self):
        if self.plain:
            import threading

            self._stop = threading.Event()
            threading.Thread(target=self._heartbeat, daemon=True).start()
            return self
        return self  # the bars start with the first run: an error before it prints no empty display

    def __exit__(self, *exc):
        if self.plain:
            self._stop.set()
        elif self.progress.live.is_started:
            self.progress.stop()
        return False

    def _say(self, text: str) -> None:
        err.print(text, markup=False, soft_wrap=True)
        self.last = time.monotonic()

    def _heartbeat(self):
        while not self._stop.wait(1.0):
            quiet = time.monotonic() - self.last
            if quiet >= PLAIN_EVERY and self.state:
                self._say(self._line(list(self.state)[-1]))
            elif quiet >= PLAIN_EVERY:  # between runs (the checklist's checks): say the work goes on
                self._say(f"... still working ({int(time.monotonic() - self.began)} s so far)")

    def _line(self, rid) -> str:
        st = self.state[rid]
        seconds = int(time.monotonic() - st["since"])
        stage = f", {st['stage']}" if st.get("stage") else ""
        return (
            f"{st['label']}: {st['done']}/{st['total']} examples, {self._so_far(rid, st['done'])}{stage}"
            f"  {seconds // 60}:{seconds % 60:02d}"
        )

    def _so_far(self, rid, done: int) -> str:
        """Robust (or clean) accuracy over the examples done so far, in %, as the end result reads."""
        return f"{self.word[rid]} {100 * self.robust[rid] / done:.1f}%" if done else f"{self.word[rid]} -"

    def print(self, text: str) -> None:
        if self.plain:
            self._say(text)
        elif self.progress.live.is_started:
            self.progress.console.print(text, markup=False)
        else:  # no bar yet (the checklist's checks print lines only): no display to start and stop
            err.print(text, markup=False)

    def update(self, ev: dict):
        track(ev)
        if ev["event"] == "unit":  # a finished checkpoint x run from a worker process (--jobs)
            last = ev["rows"][-1]
            self.print(
                f"[{ev['done']}/{ev['total']}] {clean(last['model'])}: {last['attacks']} "
                f"(n={last['n']})  {headline(last)}  {ev['seconds']:.0f} s"
            )
            return
        if ev["event"] == "plan":  # a suite spread over worker processes: every task's state, up front
            self.print(
                f"{ev['total']} tasks: {ev['stored']} already in the store, {len(ev['waiting'])} to run on "
                f"{ev['jobs']} workers"
                + (
                    ": " + "; ".join(clean(w) for w in ev["waiting"][:12]) + (" ..." if len(ev["waiting"]) > 12 else "")
                    if ev["waiting"]
                    else "."
                )
            )
            return
        if ev["event"] == "craft":
            how = "read from the cache" if ev["cached"] else f"crafted in {ev['seconds']:.1f} s"
            self.print(f"Transfer examples from {clean(ev['source'])} at eps {ev['eps']}: {how}")
            return
        if ev["event"] == "check":
            self.print(
                f"{clean(ev['model'])}: {ev['attack']} at eps {ev['eps']}: {ev['robust']}/{ev['n']}"
                f" robust  {ev['seconds']:.0f} s"
            )
            return
        rid = ev["run_id"]
        if ev["event"] == "start":
            note = " (from store)" if ev["cached"] else " (resumed)" if ev["resumed"] else ""
            self.robust[rid] = ev.get("robust", 0)
            self.word[rid] = "clean" if clean_only(ev["attacks"]) else "robust"
            self.clock[rid] = (time.monotonic(), ev["done"], ev["total"])
            label = clean(f"{ev['model']}: {'+'.join(ev['attacks'])}{note}")
            if self.plain:
                if not ev["cached"]:
                    self.state[rid] = {
                        "label": label,
                        "done": ev["done"],
                        "total": ev["total"],
                        "since": time.monotonic(),
                    }
                    self._say(f"{label}: started, {ev['done']} of {ev['total']} examples done")
                return
            if not self.progress.live.is_started:
                self.progress.start()
            self.tasks[rid] = self.progress.add_task(
                escape(label),
                total=ev["total"],
                completed=ev["done"],
                robust=self._so_far(rid, ev["done"]),
                stage="",
                eta="" if ev["cached"] else "ETA after a batch",
            )
        elif ev["event"] == "stage":
            stage = clean(f"{ev['stage']} on {ev['robust']} of {ev['attacked']}")
            if rid in self.state:
                self.state[rid]["stage"] = stage
            if not self.plain:
                self.progress.update(self.tasks[rid], stage=escape(stage))
        elif ev["event"] == "batch":
            self.robust[rid] += ev["robust"]
            if rid in self.state:
                self.state[rid].update(done=ev["done"], stage=None)
                if (
                    ev["done"] < ev.get("total", self.state[rid]["total"])
                    and time.monotonic() - self.last >= PLAIN_EVERY / 2
                ):
                    self._say(self._line(rid))
            if not self.plain:
                self.progress.update(
                    self.tasks[rid],
                    completed=ev["done"],
                    robust=self._so_far(rid, ev["done"]),
                    eta=eta(self.clock[rid], ev["done"]),
                )
        elif ev["event"] == "end":
            last = ev["rows"][-1] if ev["rows"] else None
            st = self.state.pop(rid, None)
            if self.plain and last:
                took = f"  {int(time.monotonic() - st['since'])} s" if st else ""
                label = st["label"] if st else clean(f"{last['model']}: {last['attacks']} (from store)")
                self._say(f"{label}: {last['n']}/{last['n']} examples, {headline(last)}{took}")
            elif last:
                self.progress.update(self.tasks[rid], completed=last["n"], robust=headline(last), stage="", eta="")


def eta(clock: tuple[float, int, int], done: int) -> str:
    """Time left at the rate of this run so far in this process (examples per second since it started)."""
    start, done0, total = clock
    rate = (done - done0) / max(time.monotonic() - start, 1e-9)
    if rate <= 0 or done >= total:
        return ""
    left = int((total - done) / rate)
    return f"ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


class TrainProgress:
    """A bar per epoch (batches, running loss) and a line per finished epoch."""

    def update(self, ev: dict):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

        if ev["event"] == "member":
            err.print(f"[bold]{ev['file']}[/] ({ev['group']})")
        elif ev["event"] == "start":
            self.epochs = ev["epochs"]
            err.print(f"Training on {ev['train']} images, validating on {ev['val']}, device {ev['device']}")
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.progress.start()
            self.task: TaskID | None = None
        elif ev["event"] == "batch":
            if self.task is None:
                self.task = self.progress.add_task(f"epoch {ev['epoch']}/{self.epochs}", total=ev["batches"], loss="-")
            self.progress.update(self.task, completed=ev["batch"], loss=f"{ev['loss']:.3f}")
        elif ev["event"] == "epoch":
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = None
            err.print(
                f"epoch {ev['epoch']}/{ev['epochs']}  loss {ev['loss']:.4f}  train acc {ev['train_acc']:.2f}% "
                f"({ev['train_kind']})  val clean {ev['val_clean_acc']:.2f}%  val PGD {ev['val_pgd_acc']:.2f}%"
                f"  {ev['seconds']:.0f} s"
            )
            if ev["epoch"] == ev["epochs"]:
                self.progress.stop()
