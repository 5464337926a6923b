"""What the published pages and commands call a model and its files: ids, file names, and the text shown of a
stranger's metadata and of a run's provenance (who computed it; whether it was imported). Every file name
is made of safe characters and bounded (``text.bounded_name``), whatever a store or an archive carries."""

from __future__ import annotations

import json
import re
import time

from ..text import bounded_name, http_link, slug, visible


def safe_name(*parts: str) -> str:
    """Parts joined into a name safe in a file name or a page anchor (runs of other characters become -),
    bounded in length (``text.bounded_name``)."""
    return bounded_name(re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts)).strip("-."))


def model_id(meta: dict, name: str) -> str:
    return safe_name(meta.get("name") or name) or "model"


def csv_name(dataset: str, norm: str) -> str:
    """The leaderboard CSV of a (dataset, norm), a file name whatever text a store or archive carries."""
    return f"{slug(dataset)}_{slug(norm)}.csv"


def info_path(dataset: str, norm: str, mid: str) -> str:
    """A model's model_info JSON, relative to the leaderboard folder."""
    return f"model_info/{slug(dataset)}/{slug(norm)}/{mid}.json"


def shown_meta(meta: dict) -> dict:
    """A run's model metadata as the pages show it: every string with its control and bidi characters made
    visible (``text.visible``), the link kept only when it is http(s)."""

    def show(v):
        if isinstance(v, str):
            return visible(v)
        if isinstance(v, list):
            return [show(x) for x in v]
        if isinstance(v, dict):
            return {visible(k): show(x) for k, x in v.items()}
        return v

    out = show(meta) if isinstance(meta, dict) else {}
    if "link" in out:
        out["link"] = http_link(out["link"])
    return out


def unique_ids(rows: list[dict]) -> None:
    """Give every model (sha256) of ``rows`` its ``model_id``: the id of its name, with the start of its
    sha256 added where two models' names give the same id, so no two models share a page or a row's name."""
    by_id: dict[str, set[str]] = {}
    for r in rows:
        by_id.setdefault(model_id(r["meta"], r["model"]), set()).add(r["sha256"])
    for r in rows:
        base = model_id(r["meta"], r["model"])
        r["model_id"] = base if len(by_id[base]) == 1 else f"{base}-{r['sha256'][:8]}"


def computed_by(run: dict) -> str:
    """A stored run's provenance as its archive carries it: the robench and torch versions, the device and
    the machine that computed it (never where or when it was imported, which differs from store to store)."""
    where = visible(run.get("machine") or "") or "machine not recorded"
    return visible(f"robench {run['robench_version']}, torch {run['torch_version']}, {run['device']}, ") + where


def origin_text(origin: str) -> str:
    """A run's origin column as words: "computed in this store", or "imported from ARCHIVE on DATE"."""
    try:
        o = json.loads(origin) if origin else {}
    except (TypeError, ValueError, RecursionError):
        o = {"archive": "an unreadable origin"}
    if not isinstance(o, dict) or not o:
        return "computed in this store"
    when = o.get("imported")
    day = time.strftime("%Y-%m-%d", time.gmtime(when)) if isinstance(when, (int, float)) else "an unknown day"
    return visible(f"imported from {o.get('archive', 'an archive')} on {day}")
