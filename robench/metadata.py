"""What a checkpoint's metadata or model card may say: JSON of at most 1 MiB holding an object, whose fields
robench builds a model from (arch, activation, dataset, name, num_classes, input_shape, mean, std) have
their types and sensible ranges. Anything else is one sentence, before any model is built."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RobenchError

MAX_META_BYTES = 1 << 20  # checkpoint metadata or a model card: JSON text up to 1 MiB


def parse_meta(text, what: str) -> dict:
    """JSON metadata (a checkpoint's or a model card's) as a dict: bounded in size, one sentence otherwise."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if len(text) > MAX_META_BYTES:
        raise RobenchError(
            f"{what} is {len(text) / 2**20:.1f} MiB of metadata; robench reads up to 1 MiB, so "
            "strip what the model does not need."
        )
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
        raise RobenchError(f"{what} is not valid JSON ({reason}); fix or remove it.") from None
    if not isinstance(meta, dict):
        raise RobenchError(
            f"{what} holds a JSON {type(meta).__name__} where an object of named fields belongs; fix or remove it."
        )
    return meta


def _meta_size(meta: dict, what: str) -> None:
    try:
        size = len(json.dumps(meta, default=str))
    except (ValueError, RecursionError):
        raise RobenchError(f"{what} is nested too deeply to be metadata; fix or remove it.") from None
    if size > MAX_META_BYTES:
        raise RobenchError(
            f"{what} is {size / 2**20:.1f} MiB of metadata; robench reads up to 1 MiB, so strip "
            "what the model does not need."
        )


def check_meta(meta: dict, what: str) -> dict:
    """The fields robench builds a model from must have their types and sensible ranges."""
    _meta_size(meta, what)

    def bad(key: str, want: str):
        shown = repr(meta[key])
        return RobenchError(
            f"{what} gives {key} as {shown[:40] + ('...' if len(shown) > 40 else '')}, but it "
            f"must be {want}; fix the metadata or pass --{key.replace('num_classes', 'dataset')}."
        )

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("arch", "activation", "dataset", "name", "link", "paper", "venue"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(key, "a string")
    authors = meta.get("authors")
    if authors is not None and not (
        isinstance(authors, str) or (isinstance(authors, list) and all(isinstance(a, str) for a in authors))
    ):
        raise bad("authors", "a string or a list of strings")
    if meta.get("num_classes") is not None and not (whole(meta["num_classes"]) and 1 <= meta["num_classes"] <= 100_000):
        raise bad("num_classes", "a whole number from 1 to 100000")
    shape = meta.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(whole(v) for v in shape)
        and 1 <= shape[0] <= 64
        and all(1 <= v <= 4096 for v in shape[1:])
    ):
        raise bad("input_shape", "[channels, height, width] with at most 64 channels and 4096 pixels a side")
    for key in ("mean", "std"):
        v = meta.get(key)
        if v is None:
            continue
        if not (
            isinstance(v, list)
            and 1 <= len(v) <= 64
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) < 1e6 for x in v)
        ):
            raise bad(key, "a list of one finite number per input channel")
        if key == "std" and min(v) <= 0:
            raise bad(key, "positive numbers")
    return meta


def model_card(path: Path) -> dict:
    """The model card beside a checkpoint (``<file>.json`` or ``<stem>.json``), checked; {} when none."""
    for card in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if card.is_file() and card != path:
            try:
                if card.stat().st_size > MAX_META_BYTES:
                    return parse_meta("x" * (MAX_META_BYTES + 1), f"The model card {card}")
                text = card.read_bytes()
            except OSError as e:
                raise RobenchError(f"The model card {card} cannot be read ({e.strerror}); fix or remove it.") from e
            return check_meta(parse_meta(text, f"The model card {card}"), f"The model card {card}")
    return {}


DESCRIPTIVE = ("link", "authors", "paper", "venue")  # what a model card may add to any checkpoint's metadata


def describe(meta: dict, path: Path) -> dict:
    """``meta`` with the descriptive fields of the model card beside ``path`` (a link to the paper, its
    authors, a reference, the venue), which the card's writer may add to any checkpoint, one that carries
    its own metadata included; nothing that builds the model comes from here."""
    card = model_card(path)
    return {**meta, **{k: card[k] for k in DESCRIPTIVE if card.get(k)}}
