"""Generated malformed input: checkpoint metadata, model cards and TOML suites of random types, depths and
sizes. Whatever robench is given, it either does its work (exit 0) or says in one line what is wrong
(exit 2): never a traceback, never exit 1, never a change to the store it was pointed at."""

import json
import random

import pytest
import torch
from helpers import tiny_model
from typer.testing import CliRunner

import robench
from robench.cli import app
from robench.config import EvalConfig

runner = CliRunner()
SEED = 20261129
STRINGS = [
    "",
    "x",
    "lenet5",
    "resnet20",
    "wrn-28-10",
    "wrn-10000-1000",
    "relu",
    "splash:hinges=3",
    "pgd",
    "pgd(steps=2)",
    "none",
    "fgsm",
    "0.1",
    "8/255",
    "-1",
    "nan",
    "fashion-mnist",
    "cifar10",
    "cpu",
    "auto",
    "\x1b[2J",
    "[bold]x[/]",
    "../../etc/passwd",
    "a" * 3000,
    "Linf",
    "L3",
    "first",
    "random",
    "m.pt",
]
META_KEYS = ["arch", "activation", "dataset", "num_classes", "input_shape", "mean", "std", "name", "notes"]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["int", "float", "str", "bool", "none", "list", "dict"] if depth < 4 else ["int", "str"])
    if kind == "int":
        return rng.choice([0, 1, -3, 10, 28, 1000, 2**31, 2**63 - 1, -(2**63), 10**30, rng.randint(-99, 99)])
    if kind == "float":
        return rng.choice([0.5, -0.0, 20.5, 1e308, 3.0])
    if kind == "str":
        return rng.choice(STRINGS)
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "none":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(META_KEYS + ["k"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _meta(rng: random.Random) -> str:
    """Metadata text: mostly a robench-like object with some fields replaced, sometimes anything at all."""
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(["[" * 5000 + "]" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000, "{", "null", "", "\x00"])
    if roll < 0.25:
        return json.dumps(_value(rng))
    meta = robench.model_meta("lenet5", "relu", "fashion-mnist")
    for key in rng.sample(META_KEYS, rng.randint(1, 4)):
        meta[key] = _value(rng)
    if rng.random() < 0.05:
        meta["history"] = ["y" * 1000] * rng.choice([10, 1200])
    return json.dumps(meta)


def _toml_value(rng: random.Random, depth: int = 0) -> str:
    kind = rng.choice(["int", "float", "str", "bool", "array", "table"] if depth < 3 else ["int", "str"])
    if kind == "int":
        return str(rng.choice([0, 1, -5, 5, 20, 2**63 - 1, 10000, 20000]))
    if kind == "float":
        return rng.choice(["20.5", "0.1", "-0.0", "inf", "nan", "1e400"])
    if kind == "str":
        return json.dumps(rng.choice(STRINGS))
    if kind == "bool":
        return rng.choice(["true", "false"])
    if kind == "array":
        return "[" + ", ".join(_toml_value(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    return "{" + ", ".join(f"k{i} = {_toml_value(rng, depth + 1)}" for i in range(rng.randint(0, 2))) + "}"


def _suite(rng: random.Random, ckpt: str) -> str:
    keys = list(EvalConfig.__dataclass_fields__) + ["epz", "run"]
    lines = []
    if rng.random() < 0.5:
        lines.append(f'checkpoints = ["{ckpt}"]')
    for key in rng.sample(keys, rng.randint(1, 5)):
        if key in ("checkpoints", "run", "store", "out"):
            continue
        lines.append(f"{key} = {_toml_value(rng)}")
    if rng.random() < 0.3:
        lines.append("[[run]]")
        lines += [f"{k} = {_toml_value(rng)}" for k in rng.sample(keys[:20], rng.randint(0, 2)) if k != "run"]
    if rng.random() < 0.05:
        lines.append("broken = [1, 2")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "m.pt"
    robench.save_checkpoint(tiny_model(), path, robench.model_meta("lenet5", "relu", "fashion-mnist"))
    return path


def _contract(r, label: str):
    assert r.exit_code in (0, 2), f"{label}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert "Traceback" not in r.output, f"{label}\n{r.output}"
    if r.exit_code == 2:
        assert len(r.output.strip().splitlines()) == 1, f"{label}\n{r.output}"


def test_generated_metadata_and_model_cards(tmp_path):
    from safetensors.torch import save_file

    rng = random.Random(SEED)
    sd = dict(tiny_model().net.state_dict())
    torch.save(sd, tmp_path / "plain.pt")
    outcomes = {0: 0, 2: 0}
    for case in range(160):
        text = _meta(rng)
        if case % 2:
            path = tmp_path / f"m{case}.safetensors"
            save_file(sd, str(path), metadata={"robench": text})
        else:
            path = tmp_path / "plain.pt"
            (tmp_path / "plain.pt.json").write_text(text)
        r = runner.invoke(app, ["info", str(path)])
        _contract(r, f"case {case}: {text[:200]!r}")
        outcomes[r.exit_code] += 1
    assert outcomes[2] > 40 and outcomes[0] >= 3, outcomes
