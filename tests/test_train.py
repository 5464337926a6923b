"""robench train / robench.api.train / zoo files: recipes, methods, activation-specific training, safety."""

import json
from pathlib import Path

import pytest
import torch
from conftest import requires_fmnist
from helpers import write_mnist_like
from typer.testing import CliRunner

import robench
from robench import api
from robench.cli import app
from robench.data import load_split
from robench.errors import RobenchError
from robench.nn.activations import clip_activation_gradients
from robench.training import train as train_mod
from robench.training.zoo import read_zoo

runner = CliRunner()
QUICK = dict(arch="lenet5", epochs=1, batch_size=32, val_size=60, val_pgd_n=20, val_pgd_steps=3, steps=2)


@pytest.fixture
def synthetic():
    """A small learnable Fashion-MNIST-shaped dataset in ./data (300 training images)."""
    write_mnist_like(Path("data/fashion-mnist"), n_test=50, n_train=300)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@requires_fmnist
def test_short_training_on_real_data_gives_a_loadable_better_than_chance_checkpoint(monkeypatch):
    penalties = []
    real = train_mod.activation_penalty

    def spy(model):
        p = real(model)
        penalties.append(p.item())
        return p

    monkeypatch.setattr(train_mod, "activation_penalty", spy)
    ck = api.train(
        "m.safetensors",
        arch="lenet5",
        activation="pssilu",
        epochs=1,
        train_images=2000,
        val_size=1000,
        val_pgd_n=100,
        seed=3,
    )
    # the PSSiLU penalty (lam*|beta| > 0) was added to the loss at every step
    assert len(penalties) == 16 and all(p > 0 for p in penalties)
    loaded = robench.load_checkpoint("m.safetensors")
    assert loaded.sha256 == ck.sha256
    test = load_split("fashion-mnist", "test")
    x, y = test.batch(torch.arange(1000))
    with torch.no_grad():
        acc = (loaded.model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.5  # chance is 0.1
    recipe = loaded.meta["recipe"]
    assert loaded.meta["training_method"] == "standard" and recipe["epochs"] == 1 and recipe["seed"] == 3
    assert recipe["optimizer"] == {
        "name": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 0.0005,
        "decay_on": "conv/linear weights",
    }
    assert recipe["schedule"] == "cosine" and recipe["train_images"] == 2000
    assert recipe["data"] == {"split": "train", "train_indices": "0:2000", "val_indices": "59000:60000"}
    assert recipe["activation_training"]["penalty"] == ["pssilu: lam*|beta|, lam=10.0"]
    assert recipe["activation_training"]["grad_clip"] == ["pssilu.beta <= 0.01"]
    assert recipe["trained"]["device"] == "cpu" and recipe["trained"]["seconds"] > 0
    val = loaded.meta["validation"]
    assert val["n"] == 1000 and val["pgd"]["n"] == 100 and val["pgd"]["eps"] == "0.1"
    assert val["pgd"]["budget"]["steps"] == 20 and 50 < val["clean_acc"] <= 100
    assert loaded.meta["history"][0]["epoch"] == 1


def test_pssilu_beta_gradient_is_clipped():
    model = robench.create_model("lenet5", "pssilu", in_channels=1, input_size=28)
    act = [m for m in model.modules() if isinstance(m, robench.nn.activations.PSSiLU)][0]
    act.beta.grad = torch.full_like(act.beta, 5.0)
    act.alpha.grad = torch.full_like(act.alpha, 5.0)
    clip_activation_gradients(model)
    assert act.beta.grad.norm().item() == pytest.approx(0.01)
    assert act.alpha.grad.item() == 5.0  # only beta is clipped


@pytest.mark.parametrize("method", ["standard", "pgd-at", "trades", "fast-at"])
def test_every_method_trains_and_records_its_recipe(synthetic, method):
    ck = api.train("m.pt", method=method, activation="splash", **QUICK)
    recipe = robench.load_checkpoint("m.pt").meta["recipe"]
    assert recipe["method"] == method and ck.meta["validation"]["clean_acc"] >= 0
    if method == "standard":
        assert "attack" not in recipe and "eps" not in recipe
    else:
        attack = recipe["attack"]
        assert recipe["eps"] == "0.1" and recipe["norm"] == "Linf"
        assert attack["batch_norm"] == "eval mode while crafting"
        assert attack["steps"] == (1 if method == "fast-at" else 2)
        assert attack["step_size_value"] == pytest.approx(0.125 if method == "fast-at" else 0.125)
        assert ("trades_beta" in recipe) == (method == "trades")
    # SPLASH slopes were learned: no longer exactly ReLU
    slopes = robench.api.info("m.pt")["activations"]
    assert any(v != [1, 0, 0, 0] for layer in slopes for v in layer["values"].values())


def test_training_is_deterministic_for_a_seed(synthetic):
    a = api.train(None, method="pgd-at", activation="prelu", seed=5, **QUICK).model
    b = api.train(None, method="pgd-at", activation="prelu", seed=5, **QUICK).model
    c = api.train(None, method="pgd-at", activation="prelu", seed=6, **QUICK).model
    sa, sb, sc = state(a), state(b), state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_prelu_starts_at_zero_and_is_learned(synthetic):
    fresh = robench.create_model("lenet5", "prelu", in_channels=1, input_size=28)
    assert all(p.item() == 0 for n, p in fresh.named_parameters() if n.endswith("alpha"))
    trained = api.train(None, activation="prelu", **QUICK).model
    assert any(p.item() != 0 for n, p in trained.named_parameters() if n.endswith("alpha"))


def test_a_diverging_run_names_epoch_and_step_and_saves_nothing(synthetic):
    r = runner.invoke(
        app,
        [
            "train",
            "--out",
            "x.safetensors",
            "--lr",
            "1e30",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--val-size",
            "60",
            "--quiet",
        ],
    )
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert line.startswith("Error: Training diverged") and "at epoch 1, step" in line and "\n" not in line
    assert not Path("x.safetensors").exists() and not list(Path(".").glob(".x.safetensors*"))


def test_an_existing_checkpoint_is_never_overwritten_without_overwrite(synthetic):
    Path("m.safetensors").write_bytes(b"precious")
    r = runner.invoke(app, ["train", "--out", "m.safetensors", "--epochs", "1", "--val-size", "60", "--quiet"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert Path("m.safetensors").read_bytes() == b"precious"
    r = runner.invoke(
        app,
        ["train", "--out", "m.safetensors", "--epochs", "1", "--val-size", "60", "--batch-size", "64", "--overwrite"],
    )
    assert r.exit_code == 0, r.output
    assert "Saved m.safetensors" in r.output and "validation clean" in r.output
    assert robench.load_checkpoint("m.safetensors").meta["recipe"]["batch_size"] == 64


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "madry"], 'Unknown training method "madry"'),
        (["--schedule", "linear"], 'Unknown learning-rate schedule "linear"'),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--eps", "8"], "above the largest meaningful"),
        (["--augment", "rotate"], 'Unknown augmentation "rotate"'),
        (["--activation", "splashh"], "did you mean"),
        (["--arch", "lenet"], "did you mean"),
        (["--val-size", "5000"], "must be smaller than the training split"),
        ([], "Name the checkpoint"),
    ],
)
def test_bad_training_options_are_one_sentence(synthetic, args, message):
    out = [] if message.startswith("Name") else ["--out", "m.pt"]
    val = [] if "--val-size" in args else ["--val-size", "60"]
    r = runner.invoke(app, ["train", *out, *val, *args, "--quiet"])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not Path("m.pt").exists()


ZOO = """
[[group]]
name = "tiny"
arch = "lenet5"
method = "standard"
epochs = 1
batch_size = 32
val_size = 60
val_pgd_n = 10
val_pgd_steps = 2
activations = ["relu", "splash:hinges=5"]
"""


def test_zoo_builds_missing_members_keeps_finished_ones_and_writes_a_table(synthetic):
    Path("zoo").mkdir()
    Path("zoo/zoo.toml").write_text(ZOO)
    Path("zoo/README.md").write_text("# My zoo\n\nHand-written intro.\n")
    rows = api.build_zoo("zoo/zoo.toml")
    assert [(r["file"], r["status"]) for r in rows] == [
        ("lenet5-relu-standard.safetensors", "trained"),
        ("lenet5-splash-hinges-5-standard.safetensors", "trained"),
    ]
    first = Path("zoo/lenet5-relu-standard.safetensors").read_bytes()
    readme = Path("zoo/README.md").read_text()
    assert readme.startswith("# My zoo\n\nHand-written intro.")
    assert "| lenet5-relu-standard.safetensors | lenet5 | relu | standard |" in readme
    assert "splash:hinges=5" in readme
    r = runner.invoke(app, ["train", "--zoo", "zoo/zoo.toml", "--quiet"])
    assert r.exit_code == 0 and r.output.count("kept") == 2
    assert Path("zoo/lenet5-relu-standard.safetensors").read_bytes() == first
    assert Path("zoo/README.md").read_text() == readme  # regenerating the table changes nothing
    meta = robench.load_checkpoint("zoo/lenet5-relu-standard.safetensors").meta
    assert meta["zoo_group"] == "tiny" and meta["name"] == "lenet5-relu-standard"


def test_zoo_file_errors_name_the_group_and_the_closest_key(tmp_path):
    Path("z.toml").write_text(ZOO.replace("epochs", "epoch"))
    with pytest.raises(RobenchError, match='group "tiny": unknown key "epoch"; did you mean "epochs"'):
        read_zoo("z.toml")
    Path("z.toml").write_text(ZOO.replace('activations = ["relu", "splash:hinges=5"]', ""))
    with pytest.raises(RobenchError, match="needs a non-empty list of activations"):
        read_zoo("z.toml")
    Path("z.toml").write_text("epochs = 3\n")
    with pytest.raises(RobenchError, match=r"no \[\[group\]\] tables"):
        read_zoo("z.toml")


def test_shipped_zoo_file_groups_differ_only_in_activation_and_seed():
    members = read_zoo(Path(__file__).parent.parent / "checkpoints" / "zoo.toml")
    groups, seeds = {}, {}
    for m in members:
        recipe = {k: v for k, v in vars(m.config).items() if k not in ("activation", "name", "seed")}
        groups.setdefault(m.group, []).append((m.config.activation, json.dumps(recipe, sort_keys=True)))
        seeds.setdefault(m.group, {}).setdefault(m.config.seed, set()).add(m.config.activation)
    for name, rows in groups.items():
        assert len({r[1] for r in rows}) == 1, name
        assert len({frozenset(a) for a in seeds[name].values()}) == 1, f"{name}: every seed trains every activation"
    acts = {name: {r[0] for r in rows} for name, rows in groups.items()}
    must = {"relu", "prelu", "elu", "silu", "softplus", "splash", "pssilu", "psoftplus"}
    assert must <= acts["lenet5-standard"] and must <= acts["lenet5-pgd-at"]
    assert {"relu", "silu", "splash", "pssilu", "psoftplus"} <= acts["resnet20-pgd-at"]


def test_a_zoo_group_with_seeds_names_one_file_per_seed(tmp_path):
    (tmp_path / "zoo.toml").write_text(
        '[[group]]\nname = "g"\narch = "lenet5"\nseeds = [0, 2]\nactivations = ["relu", "silu"]\n'
    )
    members = read_zoo(tmp_path / "zoo.toml")
    assert [(m.file, m.config.seed) for m in members] == [
        ("lenet5-relu-standard.safetensors", 0),
        ("lenet5-silu-standard.safetensors", 0),
        ("seeds/lenet5-relu-standard-seed2.safetensors", 2),
        ("seeds/lenet5-silu-standard-seed2.safetensors", 2),
    ]
    for bad in ("seeds = [0, 0]", "seeds = []", 'seeds = ["a"]', "seeds = [0]\nseed = 1", "seeds = 3"):
        (tmp_path / "zoo.toml").write_text(f'[[group]]\nname = "g"\n{bad}\nactivations = ["relu"]\n')
        with pytest.raises(RobenchError, match="seed"):
            read_zoo(tmp_path / "zoo.toml")
