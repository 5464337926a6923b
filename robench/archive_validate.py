"""An archive's records checked field by field before anything is written: an archive is a stranger's file.
Every field robench reads has its type and range checked (whole numbers within SQLite's range, finite
numbers, bounded strings, a dataset robench knows or a safe name, a norm robench knows, eps that parse to
the value they claim, example indices inside the split, attack budgets of the shape the pages and `robench
check` read). A record that fails is refused with one sentence naming its file, line and field."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from itertools import repeat

from .config import CURVE_POINTS
from .errors import RobenchError

MAX_INT = (1 << 63) - 1  # SQLite's INTEGER
MAX_TEXT = 10_000  # characters of one name, path, flag or piece of evidence
MAX_INDEX = 1 << 31  # example indices of a dataset robench does not know the size of
HEX64 = re.compile(r"[0-9a-f]{64}")
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SPLIT_SIZES = {  # examples per split of the datasets robench knows
    "fashion-mnist": {"test": 10_000, "train": 60_000},
    "mnist": {"test": 10_000, "train": 60_000},
    "cifar10": {"test": 10_000, "train": 50_000},
    "cifar100": {"test": 10_000, "train": 50_000},
    "svhn": {"test": 26_032, "train": 73_257},
    "imagenet": {"val": 50_000, "test": 50_000},
}


class Bad(ValueError):
    """One field of a record is not what robench reads."""


def _int(v, name: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise Bad(f"{name} is not a whole number")
    if not lo <= v <= hi:
        raise Bad(f"{name} is out of range ({lo} to {hi})")
    return v


def _num(v, name: str, lo: float = 0.0, hi: float = 1e15) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
        raise Bad(f"{name} is not a finite number from {lo:g} to {hi:g}")
    return float(v)


def _str(v, name: str, limit: int = MAX_TEXT, empty: bool = True) -> str:
    if not isinstance(v, str) or len(v) > limit or (not empty and not v):
        raise Bad(f"{name} is not a string of at most {limit} characters")
    return v


def _hex64(v, name: str) -> str:
    if not isinstance(v, str) or not HEX64.fullmatch(v):
        raise Bad(f"{name} is not a sha256")
    return v


def dataset_name(v, name: str = "dataset") -> str:
    """A dataset robench knows, or a safe name (letters, digits, ``_.-``, not starting with a dot)."""
    from .data import DATASETS

    if not isinstance(v, str) or not (v in DATASETS or SAFE.fullmatch(v)):
        raise Bad(f"{name} is not a known dataset or a safe name")
    return v


def norm_name(v, name: str = "norm") -> str:
    from .norms import NORMS

    if v not in NORMS:
        raise Bad(f"{name} is not one of {', '.join(NORMS)}")
    return v


def _eps(v) -> list[str]:
    from .config import parse_eps

    if not isinstance(v, list) or not 1 <= len(v) <= 100:
        raise Bad("eps is not a list of [text, value] pairs")
    texts = []
    for e in v:
        if not (isinstance(e, list) and len(e) == 2):
            raise Bad("eps is not a list of [text, value] pairs")
        text, value = _str(e[0], "an eps text", 50, empty=False), _num(e[1], "an eps value", 0.0, 1e6)
        try:
            parsed = parse_eps(text).value
        except RobenchError:
            raise Bad(f"eps {text[:20]!r} is not a number or fraction") from None
        if not math.isclose(parsed, value, rel_tol=1e-9, abs_tol=1e-12):
            raise Bad(f"eps {text[:20]!r} does not have the value it claims")
        texts.append(text)
    if len(set(texts)) != len(texts):
        raise Bad("eps lists a value twice")
    return texts


def _budgets(v) -> None:
    """Attack budgets: dicts with a name, and for the kinds the pages read, the fields they read."""
    if not isinstance(v, list) or len(v) > 50:
        raise Bad("attacks is not a list of attack budgets")
    for b in v:
        if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not 0 < len(b["name"]) <= 100:
            raise Bad("an attack budget is not an object with a name")
        for k in ("steps", "restarts", "queries", "iters", "targets"):
            if k in b:
                _int(b[k], f"the {b['name'][:20]} budget's {k}")
        if b["name"] == "transfer":
            t = b.get("attack")
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise Bad("a transfer budget names no attack")
            _int(t.get("steps"), "a transfer budget's steps")
            _num(t.get("decay"), "a transfer budget's decay", 0.0, 1e6)
            sources = b.get("sources")
            if not isinstance(sources, list) or not sources:
                raise Bad("a transfer budget names no source model")
            for s in sources:
                if not isinstance(s, dict):
                    raise Bad("a transfer source is not an object")
                _str(s.get("model"), "a transfer source's model")
                _hex64(s.get("sha256"), "a transfer source's sha256")
        members = b.get("members")
        if members is not None and (
            not isinstance(members, dict)
            or not all(isinstance(k, str) and isinstance(m, dict) for k, m in members.items())
        ):
            raise Bad("an ensemble budget's members are malformed")


def _outcomes(oc, eps: list[str], limit: int) -> tuple[list[tuple], list[int]]:
    """The outcome rows (eps, idx, clean, robust, broken_by) of a record, its indices checked first (sorted
    half-open ranges inside the split, as many as each outcome string is long) so that nothing is expanded
    before its size is known."""
    if not isinstance(oc, dict) or not isinstance(oc.get("idx"), list) or not isinstance(oc.get("eps"), dict):
        raise Bad("its outcomes are malformed")
    count, last = 0, -1
    for r in oc["idx"]:
        if not (isinstance(r, list) and len(r) == 2):
            raise Bad("its example indices are not [start, stop] ranges")
        a, b = _int(r[0], "an example index", 0, limit), _int(r[1], "an example index", 0, limit)
        if not last <= a < b:
            raise Bad("its example index ranges are not sorted, disjoint and inside the split")
        count, last = count + b - a, b
    if set(oc["eps"]) != set(eps):
        raise Bad("its outcomes do not cover its eps")
    for d in oc["eps"].values():
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("clean"), str)
            or not isinstance(d.get("robust"), str)
            or not isinstance(d.get("broken_by"), dict)
        ):
            raise Bad("its outcomes are malformed")
        if len(d["clean"]) != count or len(d["robust"]) != count or set(d["clean"] + d["robust"]) - {"0", "1"}:
            raise Bad("its outcome strings do not match its example indices")
        if int(d["robust"], 2) & ~int(d["clean"], 2) if count else 0:  # robust needs right on clean data
            raise Bad("it counts an example as robust that is wrong on clean data")
        for name, ps in d["broken_by"].items():
            _str(name, "an attack that broke examples", 200, empty=False)
            if not isinstance(ps, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p < count for p in ps
            ):
                raise Bad("its broken_by positions are not inside its examples")
    idx = [i for a, b in oc["idx"] for i in range(a, b)]
    rows: list[tuple] = []
    for text in eps:
        d = oc["eps"][text]
        by = {p: name for name, ps in d["broken_by"].items() for p in ps}
        rows += zip(repeat(text), idx, map(int, d["clean"]), map(int, d["robust"]), map(by.get, range(count)))
    return rows, idx


def validate_run(rec: dict) -> list[tuple]:
    """The outcome rows of one run record, after checking every field robench reads; raises Bad."""
    from .store import RUN_FIELDS

    missing = [k for k in ("key", "wall_time", "outcomes", "flags", "queries", *RUN_FIELDS) if k not in rec]
    if missing:
        raise Bad(f"no {missing[0]}")
    _hex64(rec["key"], "its key")
    _hex64(rec["sha256"], "sha256")
    _hex64(rec["data_sha256"], "data_sha256")
    _str(rec["model"], "model", empty=False)
    if rec["checkpoint"] is not None:
        _str(rec["checkpoint"], "checkpoint")
    dataset = dataset_name(rec["dataset"])
    split = _str(rec["split"], "split", 16, empty=False)
    if not split.isalpha():
        raise Bad("split is not a split's name")
    subset = _str(rec["subset"], "subset", 40, empty=False)
    if not (subset in ("first", "random") or re.fullmatch(r"from:\d{1,10}", subset)):
        raise Bad("subset is not first, random or from:K")
    norm_name(rec["norm"])
    limit = SPLIT_SIZES.get(dataset, {}).get(split, MAX_INDEX)
    n = _int(rec["n"], "n", 1, limit)
    _int(rec["seed"], "seed")
    _int(rec["batch_size"], "batch_size", 1, 1 << 31)
    for k in ("device", "dtype", "robench_version", "torch_version", "machine"):
        _str(rec.get(k, ""), k, 200)
    if not isinstance(rec["model_meta"], dict) or len(json.dumps(rec["model_meta"])) > 1 << 20:
        raise Bad("its metadata is not an object of at most 1 MiB")
    _budgets(rec["attacks"])
    eps = _eps(rec["eps"])
    _num(rec["wall_time"], "wall_time")
    if not isinstance(rec["flags"], list) or not all(isinstance(f, str) and len(f) <= MAX_TEXT for f in rec["flags"]):
        raise Bad("its flags are not a list of strings")
    if not isinstance(rec["queries"], dict) or not all(
        isinstance(a, str) and isinstance(q, dict) for a, q in rec["queries"].items()
    ):
        raise Bad("its query counts are malformed")
    for a, q in rec["queries"].items():
        _int(q.get("examples"), "a query count's examples")
        _int(q.get("queries"), "a query count's queries")
    finished = rec.get("finished", True)
    if not isinstance(finished, bool):
        raise Bad("its finished field is not true or false")
    stages = rec.get("stages", {})
    try:  # older archives carried stages with unfinished runs; an import checks their form and drops them
        if (
            finished
            and stages
            or not isinstance(stages, dict)
            or not all(isinstance(k, str) and re.fullmatch(r"[0-9a-f]{32}", k) for k in stages)
        ):
            raise ValueError
        for v in stages.values():
            base64.b64decode(v, validate=True)
    except (ValueError, TypeError, binascii.Error):
        raise Bad("its stages are malformed") from None
    rows, idx = _outcomes(rec["outcomes"], eps, limit)
    if (len(idx) != n) if finished else len(idx) >= n:
        raise Bad("its outcomes do not cover its n examples")
    return rows


def validate_check(c) -> dict:
    """One model check of an archive, checked; raises Bad."""
    if not isinstance(c, dict):
        raise Bad("a malformed check")
    _hex64(c.get("sha256"), "a check's sha256")
    dataset_name(c.get("dataset"), "a check's dataset")
    norm_name(c.get("norm"), "a check's norm")
    _str(c.get("check"), "a check's name", 100, empty=False)
    _str(c.get("eps"), "a check's eps", 50)
    if c.get("status") not in ("ok", "flag"):
        raise Bad("a check's status is not ok or flag")
    _str(c.get("evidence"), "a check's evidence")
    budget = c.get("budget") or "{}"
    try:
        if not isinstance(budget, str) or len(budget) > 100_000 or not isinstance(json.loads(budget), dict):
            raise ValueError
    except (ValueError, RecursionError):
        raise Bad("a check's budget is malformed") from None
    return c


def _number(v, name: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise Bad(f"{name} is not a finite number")
    return v


def validate_model(m) -> dict:
    """One model record of an archive (what the pages show of a model's activations), checked; raises Bad."""
    if not isinstance(m, dict) or set(m) != {"sha256", "record"} or not isinstance(m["record"], dict):
        raise Bad("a malformed model record")
    _hex64(m["sha256"], "a model record's sha256")
    rec = m["record"]
    if set(rec) - {"learned", "curves", "shape"}:
        raise Bad("a model record has fields robench does not read")
    learned, curves, shape = rec.get("learned", []), rec.get("curves", []), rec.get("shape")
    if not isinstance(learned, list) or len(learned) > 1000 or not isinstance(curves, list) or len(curves) > 1000:
        raise Bad("a model record's activations are malformed")
    for a in learned:
        if not isinstance(a, dict) or not isinstance(a.get("values"), dict) or len(a["values"]) > 100:
            raise Bad("a model record's learned parameters are malformed")
        for key in ("module", "activation", "share"):
            _str(a.get(key), f"a model record's {key}", 200)
        for k, v in a["values"].items():
            _str(k, "a learned parameter's name", 100)
            for x in v if isinstance(v, list) and len(v) <= 100_000 else [v]:
                _number(x, f"learned parameter {k}")
    for c in curves:
        if not isinstance(c, list) or len(c) != CURVE_POINTS:
            raise Bad(f"a model record's curve does not have {CURVE_POINTS} points")
        for y in c:
            _number(y, "a point of a curve")
    if shape is not None:
        if not isinstance(shape, dict) or set(shape) != {"negative_output", "curvature", "kink", "learned"}:
            raise Bad("a model record's shape is malformed")
        _number(shape["negative_output"], "a shape's negative output")
        if shape["curvature"] is not None:
            _number(shape["curvature"], "a shape's curvature")
        if not isinstance(shape["kink"], bool) or not isinstance(shape["learned"], bool):
            raise Bad("a model record's shape is malformed")
    return m
