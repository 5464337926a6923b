import json
import zipfile

import pytest
import torch
from helpers import Evil, save_tiny, tiny_model
from typer.testing import CliRunner

import robench
from robench.checkpoints import checkpoint_info
from robench.cli import app
from robench.errors import RobenchError

X = torch.rand(4, 1, 28, 28)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("act", ["relu", "splash:share=channel", "pssilu", "prelu", "apl"])
def test_round_trip_rebuilds_the_model_from_metadata_alone(tmp_path, suffix, act):
    model = tiny_model(act)
    with torch.no_grad():  # make learned parameters differ from their init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / f"m{suffix}"
    robench.save_checkpoint(
        model,
        path,
        robench.model_meta("lenet5", act, "fashion-mnist", name="tiny", notes="a test", recipe={"method": "standard"}),
    )
    ck = robench.load_checkpoint(path)
    assert not ck.model.training
    assert torch.equal(ck.model(X), model(X))
    assert ck.meta["activation"] == str(robench.parse_activation(act))
    assert ck.meta["dataset"] == "fashion-mnist" and ck.meta["input_shape"] == [1, 28, 28]
    assert ck.meta["recipe"] == {"method": "standard"} and ck.name == "tiny"
    assert len(ck.sha256) == 64 and ck.format == "robench"


def test_info_reports_parameters_and_learned_activation_values(tmp_path):
    model = save_tiny(tmp_path / "m.pt", "pssilu")
    d = checkpoint_info(robench.load_checkpoint(tmp_path / "m.pt"))
    assert d["parameters"] == sum(p.numel() for p in model.parameters())
    assert d["activations"] == [
        {
            "module": "net.2",
            "activation": "pssilu",
            "share": "network",
            "values": {"alpha": 1.0, "beta": pytest.approx(1e-8)},
        }
    ]


def robustbench_wrn(tmp_path, card=None, prefix="module."):
    torch.manual_seed(1)
    body = robench.create_model("wrn-16-2").net.eval()
    with torch.no_grad():
        for m in body.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "Zoo2024Model.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in body.state_dict().items()}, "epoch": 100}, path)
    if card is not None:
        (tmp_path / "Zoo2024Model.pt.json").write_text(json.dumps(card))
    return body, path


def test_robustbench_zoo_file_gives_the_original_logits(tmp_path):
    body, path = robustbench_wrn(tmp_path)
    ck = robench.load_checkpoint(path, arch="wrn-16-2", dataset="cifar10")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(ck.model(x), body(x))  # no normalization added
    assert ck.format == "state-dict"


def test_model_card_next_to_the_file_supplies_the_architecture(tmp_path):
    body, path = robustbench_wrn(
        tmp_path,
        card={
            "arch": "wrn-16-2",
            "dataset": "cifar10",
            "name": "Zoo (2024)",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        prefix="model.",
    )
    ck = robench.load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ck.model(x), body((x - 0.5) / 0.25), atol=1e-6)
    assert ck.name == "Zoo (2024)"


def test_plain_state_dict_without_a_card_asks_for_the_architecture(tmp_path):
    _, path = robustbench_wrn(tmp_path)
    with pytest.raises(RobenchError, match=r"arch=\.\.\. and dataset=\.\.\."):
        robench.load_checkpoint(path)


def test_state_dict_that_does_not_fit_names_keys(tmp_path):
    _, path = robustbench_wrn(tmp_path)
    with pytest.raises(RobenchError, match="does not fit resnet20.*missing layers.0.conv1.weight.*unexpected block1"):
        robench.load_checkpoint(path, arch="resnet20", dataset="cifar10")
    with pytest.raises(RobenchError, match=r"shape differs for fc.weight \(10x128 in the file, 100x128"):
        robench.load_checkpoint(path, arch="wrn-16-2", dataset="cifar100")


@pytest.mark.parametrize("layout", ["zip", "legacy", "nested"])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, layout):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.ones(1)}, "extra": Evil(marker)}
    if layout == "nested":
        payload = {"state_dict": {"block": {"inner": Evil(marker)}}}
    torch.save(payload, path, _use_new_zipfile_serialization=layout != "legacy")
    with pytest.raises(RobenchError, match="trust_checkpoint=True"):
        robench.load_checkpoint(path)
    assert not marker.exists()


def test_trusted_pickled_module_loads(tmp_path):
    model = tiny_model()
    torch.save(model.net, tmp_path / "whole.pt")
    with pytest.raises(RobenchError, match="trust_checkpoint=True"):
        robench.load_checkpoint(tmp_path / "whole.pt")
    ck = robench.load_checkpoint(tmp_path / "whole.pt", trust=True, dataset="fashion-mnist")
    assert torch.equal(ck.model(X), model.net(X))


def test_exported_program_loads_as_is(tmp_path):
    model = tiny_model("silu")
    ep = torch.export.export(model, (X,))
    torch.export.save(ep, tmp_path / "m.pt2")
    ck = robench.load_checkpoint(tmp_path / "m.pt2", dataset="fashion-mnist")
    assert torch.allclose(ck.model(X), model(X), atol=1e-6)
    assert ck.format == "exported-program"
    with pytest.raises(RobenchError, match="dataset="):
        robench.load_checkpoint(tmp_path / "m.pt2")
    # the file is the network: --arch would only mislabel it (info used to report the flag's architecture)
    r = CliRunner().invoke(app, ["info", str(tmp_path / "m.pt2"), "--arch", "lenet5", "--dataset", "fashion-mnist"])
    assert r.exit_code == 2 and "--arch apply only to a plain state dict" in r.output


def test_a_pickle_whose_class_cannot_be_imported_names_the_class(tmp_path, monkeypatch):
    import sys

    (tmp_path / "mynets.py").write_text("import torch.nn as nn\nclass TinyNet(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynets

    torch.save(mynets.TinyNet(784, 10), tmp_path / "whole.pt")
    monkeypatch.delitem(sys.modules, "mynets")
    (tmp_path / "mynets.py").unlink()  # the class's code is gone, as on a colleague's machine
    r = CliRunner().invoke(
        app, ["info", str(tmp_path / "whole.pt"), "--trust-checkpoint", "--dataset", "fashion-mnist"]
    )
    assert r.exit_code == 2 and "code from the module mynets" in r.output and "corrupt" not in r.output


def broken_files(tmp_path):
    save_tiny(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("this is not a checkpoint\n")
    (tmp_path / "zip.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    model = tiny_model()
    sd = model.net.state_dict()
    sd["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(
        {"robench_format": 1, "meta": robench.model_meta("lenet5", "relu", "fashion-mnist"), "state_dict": sd},
        tmp_path / "nan.pt",
    )


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("missing.pt", "No such checkpoint"),
        ("trunc.pt", "not a readable PyTorch checkpoint"),
        ("empty.pt", "empty"),
        ("text.pt", "not a readable PyTorch checkpoint"),
        ("zip.pt", "not a readable PyTorch checkpoint"),
        ("bad.safetensors", "not a readable safetensors"),
        ("list.pt", "not a model or a state dict"),
        ("nan.pt", "NaN or Inf"),
        (".", "folder"),
    ],
)
def test_broken_checkpoints_end_in_one_sentence(tmp_path, name, fragment):
    broken_files(tmp_path)
    with pytest.raises(RobenchError, match=fragment) as e:
        robench.load_checkpoint(tmp_path / name)
    assert "\n" not in str(e.value)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_tiny(tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
