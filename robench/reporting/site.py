"""The leaderboard as a static web site, written beside the CSVs by `robench leaderboard`: index.html (one
sortable, filterable table per dataset x threat model x eps), one page per model (model card, every stored run
with its full budget, its figures, its row and column of the transfer matrix, its gradient-masking checks)
and one page per activation comparison (the report's own section). Jinja2 templates and one small script and
style sheet shipped in the package: it works opened from disk, offline. The figures are the report's own
files; nothing is computed twice. Deterministic: the same store gives the same bytes."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from ..results.names import computed_by, csv_name, info_path, safe_name
from ..text import http_link, slug
from .glance import TABLE_HEAD
from .glance import change as glance_change
from .leaderboard import fewer_examples, fewer_note, headline_eps, measured, weaker_attacks_only
from .seeds import LABELS

METRIC_LABELS = [
    {"key": "clean", "name": "Clean"},
    {"key": "autoattack", "name": "AutoAttack"},
    {"key": "pgd", "name": "PGD"},
    {"key": "transfer", "name": "Transfer"},
    {"key": "best_known", "name": "Best known"},
]
STATIC = ("site.css", "site.js")


def _env():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("robench.reporting", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _markdown(lines: list[str], figures_prefix: str = ""):
    """The report's Markdown as HTML (tables included), its figures linked from ``figures_prefix``. Raw HTML
    in the text is shown as text, never parsed, and a link or image whose URL names a scheme other than
    http(s) is left without it: a name that slipped through unescaped still cannot add markup or script."""
    import markdown
    from markdown.treeprocessors import Treeprocessor
    from markupsafe import Markup

    class SafeLinks(Treeprocessor):
        def run(self, root):
            _strip_unsafe(root)

    text = "\n".join(lines)
    if figures_prefix:
        text = re.sub(r"\]\(([^)/:]+\.png)\)", rf"]({figures_prefix}\1)", text)
    md = markdown.Markdown(extensions=["tables"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    md.treeprocessors.register(SafeLinks(md), "safe_links", 0)
    return Markup(md.convert(text))


def _safe_url(url: str) -> bool:
    """A URL a page may use: http(s), or a relative path of the site's own."""
    return bool(http_link(url)) or not re.match(r"^\s*[A-Za-z][A-Za-z0-9+.-]*:|^\s*//", url or "")


def _strip_unsafe(root) -> None:
    for el in root.iter():
        for attr in ("href", "src"):
            if attr in el.attrib and not _safe_url(el.attrib[attr]):
                del el.attrib[attr]


def _cells(row) -> list[dict]:
    out = []
    for m in METRIC_LABELS:
        got = measured(row, m["key"])
        acc, n, ci = got if got else (None, 0, "")
        out.append(
            {
                "acc": f"{acc:.2f}" if got else "",
                "ci": ci,
                "n": n,
                "value": f"{acc:.2f}" if got else "",
                "weaker": m["key"] == "best_known" and weaker_attacks_only(row),
            }
        )
    return out


POOLED_METRICS = ("clean", "autoattack", "transfer", "best_known")


def _pooled_row(g, row: dict) -> dict:
    """One activation of a group as the index's per-activation view shows it: per metric, the mean over its
    training seeds with its interval and the change against ReLU (the group page's first table)."""
    cells = []
    for key in POOLED_METRICS:
        c = row["metrics"].get(key)
        if not c:
            cells.append({"value": "", "acc": "", "ci": "", "change": "", "significant": False})
            continue
        change = glance_change(c) if "diff" in c else ""
        cells.append(
            {
                "value": f"{c['mean']:.2f}",
                "acc": f"{c['mean']:.1f}",
                "ci": f"[{c['mean_low']:.1f}, {c['mean_high']:.1f}]",
                "change": change,
                "significant": "diff" in c and c["p"] < 0.05,
            }
        )
    act = row["activation"]
    return {
        "activation": act,
        "architecture": g.arch,
        "training": g.method or "",
        "seeds": len(row["seeds"]),
        "cells": cells,
        "verdict": row["answer"] or row["verdict"],  # the answer alone where there is one: the header asks
        "by": row["answered_by"],
        "note": row["note"],
        "search": " ".join([act, g.arch, g.method or "", row["verdict"]]).lower(),
    }


def _model_path(dataset: str, norm: str, mid: str) -> str:
    return f"models/{slug(dataset)}/{slug(norm)}/{mid}.html"


def _fmt(v) -> str:
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _values(a: dict) -> dict:
    values = a.get("values")
    return values if isinstance(values, dict) else {}


def _learned(record: dict | None):
    """The learned activation parameters the store recorded when the model was evaluated, or a sentence
    saying they were not recorded."""
    recorded = (record or {}).get("learned")
    if not isinstance(recorded, list):
        return "The store holds no record of this model's activations (it was evaluated before robench kept one)."
    return [
        {
            "module": str(a.get("module", "?")),
            "activation": str(a.get("activation", "?")),
            "share": str(a.get("share", "?")),
            "params": "; ".join(f"{k} = {_fmt(v)}" for k, v in _values(a).items()),
        }
        for a in recorded
        if isinstance(a, dict)
    ]


def _budget_rows(budget: list) -> list[dict]:
    """A run's attack budgets as rows a reader scans (attack, steps, restarts, step size, queries): one per
    attack, or per member of a cascade such as AutoAttack; a transfer attack's own budget, with its sources."""
    rows = []
    for b in budget if isinstance(budget, list) else []:
        if not isinstance(b, dict):
            continue
        if isinstance(b.get("attack"), dict):  # transfer: the attack crafted on the sources
            sources = ", ".join(str(x.get("model", "?")) for x in b.get("sources", []) if isinstance(x, dict))
            rows.append(_budget_row(f"{b['attack'].get('name', '?')} from {sources}", b["attack"]))
        elif isinstance(b.get("members"), dict):
            rows += [
                _budget_row(f"{b.get('name', '?')}: {k}", v) for k, v in b["members"].items() if isinstance(v, dict)
            ]
        else:
            rows.append(_budget_row(str(b.get("name", "?")), b))
    return rows


def _budget_row(attack: str, b: dict) -> dict:
    def get(*keys):
        return next((str(b[k]) for k in keys if b.get(k) is not None), "-")

    return {
        "attack": attack,
        "steps": get("steps", "iters", "iterations"),
        "restarts": get("restarts"),
        "step": get("step_size", "rel_step_size"),
        "queries": get("queries", "n_queries"),
    }


def _runs(res: pd.DataFrame) -> list[dict]:
    out = []
    for _, r in res.sort_values(["run_id", "eps_value"]).iterrows():
        budget = json.loads(r["budget"])
        out.append(
            {
                "run_id": int(r["run_id"]),
                "attacks": r["attacks"],
                "eps": r["eps"],
                "n": int(r["n"]),
                "clean": f"{r['clean_acc']:.2f} [{r['clean_ci_low']:.2f}, {r['clean_ci_high']:.2f}]",
                "robust": f"{r['robust_acc']:.2f} [{r['robust_ci_low']:.2f}, {r['robust_ci_high']:.2f}]"
                if r["attacks"] != "none"
                else "-",
                "budget": "\n".join(json.dumps(b, sort_keys=True) for b in budget) or "-",
                "budget_rows": _budget_rows(budget),
                "setting": f"{r['split']} split, {r['subset']} subset, seed {r['seed']}, batch {r['batch_size']}, "
                f"{r['dtype']}",
                "computed_by": computed_by(r),
            }
        )
    return out


def _transfer(part: dict, label: str) -> dict | None:
    matrix = part.get("transfer")
    if matrix is None or matrix.empty:
        return None
    g = part["group"]

    def pairs(cells) -> list[dict]:  # pairs without a run (models of different training seeds) are left out
        return [{"other": other, "acc": f"{v:.2f}"} for other, v in cells.dropna().items()]

    as_target = pairs(matrix[label]) if label in matrix.columns else []
    as_source = pairs(matrix.loc[label]) if label in matrix.index else []
    if not as_target and not as_source:
        return None
    return {"norm": g.norm, "eps": part["eps"], "slug": g.slug, "as_target": as_target, "as_source": as_source}


def write_site(out: Path, boards: dict, res: pd.DataFrame, checks: pd.DataFrame, parts: dict | None, write) -> None:
    """Write the site into ``out`` with ``write(path, text)`` (atomic, recorded as written)."""
    env = _env()
    group_parts = (parts or {}).get("groups", [])
    groups, member_of = [], {}
    for part in group_parts:
        g = part["group"]
        for mb in g.members:
            member_of[(g.dataset, g.norm, mb.sha256)] = (part, mb)
        members = [{"label": mb.label, "href": "../" + _model_path(g.dataset, g.norm, mb.model_id)} for mb in g.members]
        groups.append(
            {
                "slug": g.slug,
                "title": g.title,
                "short": f"{g.arch} {g.method or ''}".strip(),
                "n": len(g.members),
                "members": members,
                "part": part,
                "eps": part.get("eps", ""),
                "norm": g.norm,
                "pooled": [_pooled_row(g, r) for r in part.get("pooled", [])],
            }
        )
    common = {"groups": groups, "metric_labels": METRIC_LABELS}

    tables, options = [], {"architecture": set(), "training": set(), "activation": set()}
    for (dataset, norm), df in boards.items():
        top = headline_eps(df)
        for eps in [top] + [e for e in dict.fromkeys(df.eps) if e != top]:  # the headline, then eps order
            rows, fewer = [], fewer_examples(df[df.eps == eps])
            for _, r in df[df.eps == eps].iterrows():
                options["architecture"].add(r["architecture"])
                options["training"].add(r["training_method"])
                options["activation"].add(r["activation"])
                rows.append(
                    {
                        "rank": int(r["rank"]),
                        "fewer": r["model_id"] in fewer,
                        "model_id": r["model_id"],
                        "href": _model_path(dataset, norm, r["model_id"]),
                        "activation": r["activation"],
                        "architecture": r["architecture"],
                        "training": r["training_method"],
                        "cells": _cells(r),
                        "unreliable": bool(r["unreliable"]),
                        "flags": r["flags"],
                        "search": " ".join(
                            [r["model_id"], r["activation"], r["architecture"], r["training_method"], r["flags"]]
                        ).lower(),
                    }
                )
            with_aa = int((df[df.eps == eps].autoattack_n > 0).sum())
            tables.append(
                {
                    "id": safe_name(dataset, norm, "eps", eps).lower(),
                    "title": f"{dataset}, {norm}, eps {eps}",
                    "open": eps == top,
                    "with_aa": with_aa,
                    "rows": rows,
                    "fewer_note": fewer_note(df[df.eps == eps]) if fewer else "",
                }
            )
    claims = _markdown(parts["claims"]) if parts and parts.get("claims") else ""
    write(
        out / "index.html",
        env.get_template("index.html").render(
            root="",
            tables=tables,
            options={k: sorted(v) for k, v in options.items()},
            claims=claims,
            csvs=[csv_name(d, n) for d, n in boards],
            pooled_labels=[LABELS[m] for m in POOLED_METRICS],
            **common,
        ),
    )

    for group in groups:
        part = group["part"]
        lines = part["lines"]
        # the pooled table is drawn in HTML, as on the index; the Markdown around it stays
        start = next((i for i, line in enumerate(lines) if line.startswith(TABLE_HEAD)), len(lines))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        if not group["pooled"]:
            start = end = len(lines)
        write(
            out / "groups" / f"{group['slug']}.html",
            env.get_template("group.html").render(
                root="../",
                group=group,
                body=_markdown(lines[:start], "../"),
                rest=_markdown(lines[end:], "../"),
                pooled_labels=[LABELS[m] for m in POOLED_METRICS],
                # the section's own heading is the fold's summary here
                detail=_markdown([x for x in part.get("detail", []) if not x.startswith("### Per checkpoint")], "../"),
                after=_markdown(part.get("after", []), "../"),
                **common,
            ),
        )

    model_page = env.get_template("model.html")
    for (dataset, norm), df in boards.items():
        for mid, rows in df.groupby("model_id", sort=True):
            first = rows.iloc[0]
            sha = first["sha256"]
            mine = res[(res.sha256 == sha) & (res.dataset == dataset) & (res.norm == norm)]
            meta = mine.sort_values("run_id").iloc[-1]["meta"]
            recipe = meta.get("recipe")
            card = {
                "model_id": mid,
                "dataset": dataset,
                "norm": norm,
                "checkpoint": first["checkpoint"],
                "sha256": sha,
                "architecture": first["architecture"],
                "activation": meta.get("activation", ""),
                "training": first["training_method"],
                "paper": first["paper"],
                "link": http_link(first["link"]),
                "authors": first["authors"],
                "venue": first["venue"],
                "recipe": json.dumps(recipe, indent=2, sort_keys=True) if recipe else "",
                "csv": csv_name(dataset, norm),
                "info": info_path(dataset, norm, mid),
            }
            part, mb = member_of.get((dataset, norm, sha), (None, None))
            figures = (
                [
                    {"file": Path(f).name, "alt": alt, "caption": f"{alt}: {part['group'].title}"}
                    for f, alt in part["figures"]
                ]
                if part
                else []
            )
            model_checks = checks[(checks.sha256 == sha) & (checks.dataset == dataset) & (checks.norm == norm)]
            write(
                out / _model_path(dataset, norm, mid),
                model_page.render(
                    root="../../../",
                    card=card,
                    learned=_learned(mine.sort_values("run_id").iloc[-1].get("record")),
                    rows=[{"eps": r["eps"], "rank": int(r["rank"]), "cells": _cells(r)} for _, r in rows.iterrows()],
                    flags=first["flags"],
                    runs=_runs(mine),
                    figures=figures,
                    transfer=_transfer(part, mb.label) if part else None,
                    checks=[
                        {
                            "check": c["check"],
                            "eps": c["eps"],
                            "status": c["status"],
                            "evidence": c["evidence"],
                            "budget": c["budget"] if c["budget"] != "{}" else "-",
                        }
                        for _, c in model_checks.iterrows()
                    ],
                    **common,
                ),
            )

    for name in STATIC:
        write(out / "static" / name, resources.files("robench.reporting").joinpath("static", name).read_text())
