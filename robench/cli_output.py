"""What the robench command line prints: consoles, progress displays, the results table and the Ctrl-C
message. The commands in cli.py call these; nothing here computes a result."""

from __future__ import annotations

import json
import os

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
    if WHERE.get("discarded"):  # `robench check` re-evaluates in a temporary store, deleted as it stops
        at = "; ".join(
            f"{clean(w['model'])} at {w['done']} of {w['total']} examples"
            + (f", during {clean(w['stage'])}" if w.get("stage") else "")
            for w in runs
        )
        return (
            f"Interrupted{': ' + at if at else ''}. {WHERE['discarded']} keeps nothing of a stopped "
            "re-evaluation (it runs in a temporary store), so the same command starts it over."
        )
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
            (
                f", during {clean(w['stage'])}: that batch reruns"
                + (
                    ", keeping the AutoAttack members that finished on it"
                    if w["stage"].startswith("autoattack")
                    else ""
                )
            )
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
        # more than two targets: columns by number, named in the caption, so that no name is cut to "lenet5…"
        numbered = len(targets) > 2
        t = Table(
            title=f"Transfer: robust accuracy % [95% CI] and attack success "
            f"rate at {block.norm.iloc[0]} eps {eps_text} (n={block.n.iloc[0]})",
        )
        t.add_column("source \\ target", overflow="fold")
        for i, name in enumerate(targets, 1):
            t.add_column(f"[{i}]" if numbered else esc(name), overflow="fold")
        for src, rows in block.groupby("source", sort=False):
            cells = {
                r.target: (
                    f"{pct(r.robust_acc, r.robust_ci_low, r.robust_ci_high)}\nsuccess {r.success_rate:.1f}%"
                    + (" (white-box)" if r.white_box else "")
                )
                for r in rows.itertuples()
            }
            label = f"[{targets.index(src) + 1}] {src}" if numbered and src in targets else src
            t.add_row(safe(label), *[safe(cells.get(x, "-")) for x in targets])
        t.caption = f"Attack: {json.loads(block.budget.iloc[0])[0]['attack']['name']} " + ", ".join(
            f"{k}={v}" for k, v in json.loads(block.budget.iloc[0])[0]["attack"].items() if k not in ("name", "version")
        )
        if numbered:
            t.caption = (
                "Targets: " + "; ".join(f"\\[{i}] {esc(x)}" for i, x in enumerate(targets, 1)) + "\n" + t.caption
            )
        t.caption_justify = "left"
        out.print(t)


def leaderboard_tables(boards: dict) -> None:
    """Each leaderboard at each eps it shows."""
    from .reporting.leaderboard import fewer_examples, fewer_note, shown_eps, weaker_attacks_only

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
            fewer = fewer_examples(block)
            if fewer:
                t.caption += " " + fewer_note(block)
            t.caption_justify = "left"
            for r in block.itertuples():
                t.add_row(
                    f"{r.rank} ‡" if r.model_id in fewer else str(r.rank),
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


def reran_lines(plan: list[dict]) -> list[str]:
    """What `robench check` re-ran for each model, what it compared, and why anything differs from the
    baseline's runs."""
    lines, models = [], list(dict.fromkeys(p["model_id"] for p in plan))
    for mid in models:
        runs = [p for p in plan if p["model_id"] == mid]
        done = "; ".join(
            f"{p['attacks']} on n={p['n']}"
            + (f" (the first of the baseline's {p['baseline_n']})" if p["baseline_n"] > p["n"] else "")
            + f" at eps {', '.join(p['eps'])}"
            + (f" for the baseline's {p['baseline_attacks']} ({p['why']})" if p["why"] else "")
            for p in runs
        )
        compared = runs[0].get("compared") or []
        line = f"Re-ran {mid}: {done}. Compared: {', '.join(compared) or 'nothing'}"
        missing = runs[0].get("not_compared")
        if missing:
            line += f"; not compared: {', '.join(missing)}, which no re-run gives"
        lines.append(line + ".")
    return lines


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
