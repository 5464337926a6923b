"""One registry pattern for everything robench knows by name: each registry registers where a thing is
defined, folds case and aliases, and answers an unknown name with the closest known ones."""

import pytest
import torch

from robench.attacks.registry import ATTACKS, TRANSFER
from robench.data import DATASETS, DatasetInfo, Split, dataset_info, register_dataset
from robench.errors import RobenchError
from robench.nn.activations import ACTIVATIONS, parse_activation
from robench.nn.architectures import ARCHITECTURES, resolve_arch
from robench.norms import NORMS, get_norm
from robench.registry import Registry


def test_every_kind_of_name_lives_in_one_registry_type():
    for reg in (ACTIVATIONS, ARCHITECTURES, DATASETS, NORMS, ATTACKS, TRANSFER):
        assert isinstance(reg, Registry)
        assert len(reg) > 1


@pytest.mark.parametrize(
    "lookup, typed, found",
    [
        (lambda n: parse_activation(n).name, "SPLASH", "splash"),
        (lambda n: parse_activation(n).name, "swish", "silu"),
        (lambda n: resolve_arch(n)[0].name, "PreAct-ResNet18", "preact_resnet18"),
        (lambda n: dataset_info(n).name, "FMNIST", "fashion-mnist"),
        (lambda n: get_norm(n).name, "LINF", "Linf"),
        (lambda n: ATTACKS.find(n).name, "APGD", "apgd"),
    ],
)
def test_a_name_is_found_in_any_case_and_by_its_aliases(lookup, typed, found):
    assert lookup(typed) == found


@pytest.mark.parametrize(
    "lookup, typed, hint",
    [
        (parse_activation, "splsh", "did you mean splash"),
        (resolve_arch, "lenet", "did you mean lenet5"),
        (dataset_info, "fashion-mnst", "did you mean fashion-mnist"),
        (get_norm, "Lin", "did you mean Linf"),
        (ATTACKS.find, "autoatack", "did you mean autoattack"),
    ],
)
def test_an_unknown_name_gets_the_closest_known_ones(lookup, typed, hint):
    with pytest.raises(RobenchError, match=f'Unknown .* "{typed}"; {hint}'):
        lookup(typed)


def test_a_thing_registers_where_it_is_defined_and_twice_is_an_error():
    reg: Registry[type] = Registry("widget", aliases={"gizmo": "sprocket"})

    @reg.register()
    class Sprocket:
        name = "Sprocket"

    assert reg.find("sprocket") is Sprocket and reg.find("GIZMO") is Sprocket
    assert list(reg) == ["Sprocket"] and "Sprocket" in reg and reg.lookup("cog") is None
    with pytest.raises(ValueError, match="registered twice"):
        reg.register()(Sprocket)
    with pytest.raises(RobenchError, match='Unknown widget "sprockt"; did you mean Sprocket'):
        reg.find("sprockt")


def test_a_users_dataset_is_found_like_a_built_in_one(tmp_path):
    labels = torch.arange(4) % 10
    info = DatasetInfo(
        "my-digits",
        10,
        (1, 28, 28),
        {"Linf": "0.1"},
        ("my-digits",),
        (0.5,),
        (0.5,),
        "it is made by the test",
        lambda folder, split: Split("my-digits", split, labels, folder, loader=lambda i: torch.zeros(1, 28, 28)),
    )
    register_dataset(info, present=lambda folder, split: (folder / f"{split}.marker").is_file())
    try:
        assert dataset_info("My-Digits").name == "my-digits"
        (tmp_path / "test.marker").write_text("")
        assert DATASETS["my-digits"].present(tmp_path, "test")
        assert not DATASETS["my-digits"].present(tmp_path, "train")
    finally:
        DATASETS.pop("my-digits")
    with pytest.raises(RobenchError, match="Unknown dataset"):
        dataset_info("my-digits")
