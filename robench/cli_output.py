"""What the robench command line prints: consoles, progress displays, the results table and the Ctrl-C
message. The commands in cli.py call these; nothing here computes a result."""

from __future__ import annotations

import json
import os
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .config import split_flags
from .text import visible

_WIDTH = None if os.environ.get("COLUMNS") else 120  # rich assumes 80 columns when output is not a terminal
out = Console(highlight=False, width=None if os.isatty(1) else _WIDTH)
err = Console(stderr=True, highlight=False, width=None if os.isatty(2) else _WIDTH)


def clean(value) -> str:
    """Text from a file (a model's name, a path, metadata) with every control and bidi or other format
    character shown as an escape (``text.visible``), so nothing a stranger writes can move the cursor, clear
    the screen, restyle the terminal or reorder what is shown; robench's own line breaks stay."""
    return visible(value, keep_newlines=True)


def safe(value) -> Text:
    """A table cell or line of text from a file: printed as it is, never read as rich markup."""
    return Text(clean(value))


def esc(value) -> str:
    """Text from a file inside a string that holds rich markup of robench's own."""
    return escape(clean(value))


WHERE: dict = {}  # the runs a command reported progress on and that have not ended, for the stop message


def track(ev: dict) -> None:
    if ev.get("event") in ("start", "batch") and "run_id" in ev:
        WHERE.setdefault("runs", {}).setdefault(ev["run_id"], {}).update(
            {k: ev[k] for k in ("model", "run_id", "store", "done", "total") if k in ev}, stage=None
        )
    elif ev.get("event") == "stage" and ev.get("run_id") in WHERE.get("runs", {}):
        WHERE["runs"][ev["run_id"]]["stage"] = ev["stage"]
    elif ev.get("event") == "end" and "run_id" in ev:
        WHERE.setdefault("runs", {}).pop(ev["run_id"], None)
        WHERE["ended"] = WHERE.get("ended", 0) + 1


def interrupted() -> str:
    listed = list(WHERE.get("runs", {}).values())
    # a run with every example stored is whole in the store, though not yet closed (transfer closes its
    # runs after the whole matrix): only the others stopped part-way
    runs = [w for w in listed if w.get("done", 0) < w.get("total", 1) or w.get("stage")]
    if not runs:
        if WHERE.get("ended") or listed:
            return (
                "Interrupted between runs; every finished run is saved in the store, so run the same command "
                "again to continue."
            )
        return "Interrupted before any run started, so nothing was stored; run the same command again to start it."
    where = "; ".join(
        f"{clean(w['model'])} stopped at {w['done']} of {w['total']} examples (run {w['run_id']}"
        + (
            f", during {w['stage']}: that batch reruns, keeping the AutoAttack members that finished on it"
            if w.get("stage")
            else ""
        )
        + ")"
        for w in runs
    )
    return (
        f"Interrupted: {where}; every finished batch is saved in {runs[0].get('store', 'the store')}, so run "
        "the same command again to continue from there."
    )


def num(v) -> str:
    return "-" if v != v else f"{v:.2f}"


class TrainProgress:
    """A bar per epoch (batches, running loss) and a line per finished epoch."""

    def update(self, ev: dict):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
            self.task = None
        elif ev["event"] == "batch":
            if self.task is None:
                self.task = self.progress.add_task(f"epoch {ev['epoch']}/{self.epochs}", total=ev["batches"], loss="-")
            self.progress.update(self.task, completed=ev["batch"], loss=f"{ev['loss']:.3f}")
        elif ev["event"] == "epoch":
            self.progress.remove_task(self.task)
            self.task = None
            err.print(
                f"epoch {ev['epoch']}/{ev['epochs']}  loss {ev['loss']:.4f}  train acc {ev['train_acc']:.2f}% "
                f"({ev['train_kind']})  val clean {ev['val_clean_acc']:.2f}%  val PGD {ev['val_pgd_acc']:.2f}%"
                f"  {ev['seconds']:.0f} s"
            )
            if ev["epoch"] == ev["epochs"]:
                self.progress.stop()


def pct(acc, lo, hi) -> str:
    return f"{acc:.1f} [{lo:.1f}, {hi:.1f}]"


def results_table(df) -> Table:
    """The results, with each distinct flag as a numbered note under the table."""
    notes: list[str] = []
    t = Table("model", "norm", "eps", "attacks", "n", "clean % [95% CI]", "robust % [95% CI]", "flags")
    for r in df.itertuples():
        marks = []
        for flag in split_flags(r.flags):
            if flag not in notes:
                notes.append(flag)
            marks.append(f"[{notes.index(flag) + 1}]")
        t.add_row(
            safe(r.model),
            r.norm,
            safe(r.eps),
            safe(r.attacks),
            str(r.n),
            pct(r.clean_acc, r.clean_ci_low, r.clean_ci_high),
            pct(r.robust_acc, r.robust_ci_low, r.robust_ci_high),
            " ".join(marks) or "-",
        )
    t.caption = "\n".join(f"\\[{i}] {esc(n)}" for i, n in enumerate(notes, 1)) or None
    t.caption_justify = "left"
    return t


class EvalProgress:
    """One rich progress bar per checkpoint x attack set: examples done, robust so far, the attack (or
    cascade member) running now on how many of the batch's examples, time elapsed, and an ETA from
    robench's own rate over this run (rich's estimate looks back 30 s only, so a batch that takes longer
    never got one)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
        )
        self.tasks, self.robust, self.word, self.clock = {}, {}, {}, {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, ev: dict):
        track(ev)
        if ev["event"] == "unit":  # a finished checkpoint x run from a worker process (--jobs)
            last = ev["rows"][-1]
            self.progress.console.print(
                f"[{ev['done']}/{ev['total']}] {clean(last['model'])}: {last['attacks']} "
                f"(n={last['n']})  {headline(last)}  {ev['seconds']:.0f} s",
                markup=False,
            )
            return
        if ev["event"] == "plan":  # a suite spread over worker processes: every task's state, up front
            self.progress.console.print(
                f"{ev['total']} tasks: {ev['stored']} already in the store, {len(ev['waiting'])} to run on "
                f"{ev['jobs']} workers"
                + (
                    ": " + "; ".join(clean(w) for w in ev["waiting"][:12]) + (" ..." if len(ev["waiting"]) > 12 else "")
                    if ev["waiting"]
                    else "."
                ),
                markup=False,
            )
            return
        if ev["event"] == "craft":
            how = "read from the cache" if ev["cached"] else f"crafted in {ev['seconds']:.1f} s"
            self.progress.console.print(
                f"Transfer examples from {clean(ev['source'])} at eps {ev['eps']}: {how}", markup=False
            )
            return
        if ev["event"] == "check":
            self.progress.console.print(
                f"{clean(ev['model'])}: {ev['attack']} at eps {ev['eps']}: {ev['robust']}/{ev['n']}"
                f" robust  {ev['seconds']:.0f} s",
                markup=False,
            )
            return
        rid = ev["run_id"]
        if ev["event"] == "start":
            note = " (from store)" if ev["cached"] else " (resumed)" if ev["resumed"] else ""
            self.robust[rid] = ev.get("robust", 0)
            self.word[rid] = "clean" if clean_only(ev["attacks"]) else "robust"
            self.clock[rid] = (time.monotonic(), ev["done"], ev["total"])
            shown = f"{self.word[rid]} {self.robust[rid]}" if ev["done"] else f"{self.word[rid]} -"
            self.tasks[rid] = self.progress.add_task(
                esc(f"{ev['model']}: {'+'.join(ev['attacks'])}{note}"),
                total=ev["total"],
                completed=ev["done"],
                robust=shown,
                stage="",
                eta="" if ev["cached"] else "ETA after a batch",
            )
        elif ev["event"] == "stage":
            self.progress.update(self.tasks[rid], stage=esc(f"{ev['stage']} on {ev['robust']} of {ev['attacked']}"))
        elif ev["event"] == "batch":
            self.robust[rid] += ev["robust"]
            self.progress.update(
                self.tasks[rid],
                completed=ev["done"],
                robust=f"{self.word[rid]} {self.robust[rid]}",
                eta=eta(self.clock[rid], ev["done"]),
            )
        elif ev["event"] == "end":
            last = ev["rows"][-1] if ev["rows"] else None
            if last:
                self.progress.update(self.tasks[rid], completed=last["n"], robust=headline(last), stage="", eta="")


def eta(clock: tuple[float, int, int], done: int) -> str:
    """Time left at the rate of this run so far in this process (examples per second since it started)."""
    start, done0, total = clock
    rate = (done - done0) / max(time.monotonic() - start, 1e-9)
    if rate <= 0 or done >= total:
        return ""
    left = int((total - done) / rate)
    return f"ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


def clean_only(attacks: str | list[str]) -> bool:
    """Whether a run's attacks ("pgd+fgsm" or a list) are `--attack none`: clean accuracy only."""
    return (attacks.split("+") if isinstance(attacks, str) else list(attacks)) in ([], [""], ["none"])


def headline(row: dict) -> str:
    """A finished run's result in a few words: clean accuracy for `--attack none`, else robust accuracy."""
    if clean_only(row["attacks"]):
        return f"clean {row['clean_acc']:.1f}%"
    return f"robust {row['robust_acc']:.1f}% at eps {row['eps']}"


def short(v) -> str:
    if isinstance(v, list):
        head = ", ".join(f"{x:.4g}" for x in v[:8])
        return f"[{head}{', ...' if len(v) > 8 else ''}]"
    return f"{v:.4g}"


def info_table(d: dict) -> None:
    """A checkpoint's metadata, recipe and learned activation parameters."""
    meta = d["meta"]
    t = Table(show_header=False, box=None)
    t.add_row("file", safe(d["path"]))
    t.add_row("sha256", d["sha256"])
    t.add_row("format", d["format"])
    t.add_row("parameters", f"{d['parameters']:,}")
    for key in ("name", "arch", "activation", "dataset", "num_classes", "input_shape", "mean", "std", "notes"):
        if meta.get(key) is not None:
            t.add_row(key, safe(meta[key]))
    for key, val in (meta.get("recipe") or {}).items():
        t.add_row(safe(f"recipe.{key}"), safe(val))
    out.print(t)
    for a in d["activations"]:
        vals = "; ".join(f"{k}={short(v)}" for k, v in a["values"].items())
        out.print(clean(f"  {a['module']}: {a['activation']} (share={a['share']}) {vals}"), markup=False)
    if d.get("runs"):
        t = Table("run", "attacks", "eps", "n", "computed by", "origin", title="Runs in the store")
        for r in d["runs"]:
            t.add_row(
                str(r["run_id"]),
                safe(r["attacks"]),
                safe(r["eps"]),
                str(r["n"]),
                safe(r["computed_by"]),
                safe(r["origin"]),
            )
        out.print(t)


def transfer_tables(df) -> None:
    """One source x target matrix per eps: robust accuracy with its interval and the attack success rate."""
    for eps_text, block in df.groupby("eps", sort=False):
        targets = list(dict.fromkeys(block.target))
        t = Table(
            "source \\ target",
            *map(esc, targets),
            title=f"Transfer: robust accuracy % [95% CI] and attack success "
            f"rate at {block.norm.iloc[0]} eps {eps_text} (n={block.n.iloc[0]})",
        )
        for src, rows in block.groupby("source", sort=False):
            cells = {
                r.target: (
                    f"{pct(r.robust_acc, r.robust_ci_low, r.robust_ci_high)}\nsuccess {r.success_rate:.1f}%"
                    + (" (white-box)" if r.white_box else "")
                )
                for r in rows.itertuples()
            }
            t.add_row(safe(src), *[safe(cells.get(x, "-")) for x in targets])
        t.caption = f"Attack: {json.loads(block.budget.iloc[0])[0]['attack']['name']} " + ", ".join(
            f"{k}={v}" for k, v in json.loads(block.budget.iloc[0])[0]["attack"].items() if k not in ("name", "version")
        )
        t.caption_justify = "left"
        out.print(t)


def leaderboard_tables(boards: dict) -> None:
    """Each leaderboard at each eps it shows."""
    from .reporting.leaderboard import shown_eps, weaker_attacks_only

    for (dataset, norm), df in boards.items():
        for eps in shown_eps(df):
            block = df[df.eps == eps]
            t = Table("rank", title=f"{dataset} {norm} eps {eps}")
            t.add_column("model", overflow="fold", min_width=max(len(m) for m in block.model_id))
            for head in ("training", "clean", "AutoAttack", "PGD", "transfer", "best known", "n", "flagged"):
                t.add_column(head)
            t.caption = "Accuracies in %; best known is the per-example worst case."
            if any(weaker_attacks_only(r) for r in block.itertuples()):
                t.caption += " † no AutoAttack at this eps: the best known rests on weaker attacks."
            t.caption_justify = "left"
            for r in block.itertuples():
                t.add_row(
                    str(r.rank),
                    safe(r.model_id),
                    safe(r.training_method),
                    num(r.clean_acc),
                    num(r.autoattack_acc),
                    num(r.pgd_acc),
                    num(r.transfer_acc),
                    num(r.best_known_acc) + (" †" if weaker_attacks_only(r) else ""),
                    str(r.n),
                    "yes" if r.unreliable else "no",
                )
            out.print(t)


def unpaired_warning(res: dict) -> str:
    """What `robench check` says when some comparisons could not be paired example by example."""
    n, total = res["unpaired"], len(res["table"])
    if res["archive_beside"]:
        why = f"neither the store nor {res['archive_beside']} holds the baseline's per-example outcomes for them"
    else:
        why = "the store holds no per-example outcomes of the baseline for them, and no results/ lies beside it"
    return (
        f"Warning: {n} of {total} comparisons are unpaired (Fisher's test on the counts): {why}. Such a test "
        "misses drops that the paired one finds; pass --store with the store that computed the baseline, or "
        "keep its exported results/ beside the CSV."
    )


def check_table(table, baseline, tolerance: float, alpha: float) -> Table:
    """robench check's comparison, model by model."""
    t = Table(
        "model",
        "eps",
        "metric",
        "baseline %",
        "now %",
        "n",
        "change",
        "95% CI",
        "p",
        "verdict",
        title=f"robench check against {esc(baseline)} (tolerance {tolerance} points, alpha {alpha})",
    )
    for r in table.itertuples():
        verdict = "[bold red]FAIL[/]" if r.verdict == "fail" else "[green]pass[/]"
        n = str(r.now_n) if r.now_n == r.baseline_n else f"{r.baseline_n}/{r.now_n}"
        t.add_row(
            safe(r.model_id + (" (changed)" if r.checkpoint == "changed" else "")),
            safe(r.eps),
            r.metric,
            f"{r.baseline:.2f}",
            f"{r.now:.2f}",
            n,
            f"{r.change:+.2f}",
            r.ci95,
            f"{r.p:.3g}",
            verdict,
        )
    tests = sorted(set(table.test)) if len(table) else []
    t.caption = ("Test: " + ", ".join(tests) + "; a model marked (changed) has a new sha256.") if tests else None
    t.caption_justify = "left"
    return t


def verify_table(runs: list[dict]) -> Table:
    """robench verify's result, run by run."""
    t = Table(
        "run",
        "model",
        "attacks",
        "batches re-run",
        "examples compared",
        "s",
        "mismatches",
        "note",
        title="robench verify",
    )
    for r in runs:
        if r["rerun"] or r["note"].startswith("not re-computed"):
            t.add_row(
                r["key"][:16],
                safe(r["model"]),
                safe(r["attacks"]),
                f"{r['rerun']} of {r['batches']}",
                str(r["examples"]),
                f"{r['seconds']:.1f}",
                str(len(r["mismatches"])),
                safe(r["note"]),
            )
    skipped = [r for r in runs if not r["rerun"] and not r["note"].startswith("not re-computed")]
    # (the note of a skipped run says why: unfinished, not selected, no checkpoint file)
    other = "1 other run was" if len(skipped) == 1 else f"{len(skipped)} other runs were"
    t.caption = f"{other} not sampled or cannot be re-computed here." if skipped else None
    t.caption_justify = "left"
    return t
