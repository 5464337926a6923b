"""Save, load and inspect checkpoints. Safe by default: no code from a file runs unless the user trusts it.

Formats read:
- robench's own ``.pt`` (``torch.save`` of {robench_format, meta, state_dict}) and ``.safetensors`` (metadata
  key ``robench`` holds the JSON meta): the model is rebuilt from the meta alone;
- a plain state dict or a RobustBench zoo file (``state_dict`` key, ``module.``/``model.`` prefixes), given
  ``arch``/``activation``/``dataset`` by the caller or by a sidecar model card ``<file>.json``;
- an exported program (``torch.export``, ``.pt2``), run as is (read by ``robench.pt2``: nothing in it is
  unpickled beyond plain tensors, and no compiled code is loaded, unless the user trusts the file);
- a pickled ``nn.Module``, only with ``trust=True``.

Over the ~400-line guide on purpose: every format's loader is here beside what they share (``_torch_load``,
which unpickles with ``weights_only`` unless trusted, ``_foreign_meta``, ``_check_tensors``), so that a reader
can see in one file that no path to a model runs a stranger's code. ``.pt2`` parsing, the one format with
its own zip reading, lives in ``robench.pt2``.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .data import dataset_info
from .errors import RobenchError
from .files import atomic_path, sha256_file
from .metadata import check_meta, describe, parse_meta
from .metadata import model_card as _model_card
from .nn.activations import parse_activation
from .nn.architectures import Normalized, create_model, is_import_path, takes_activation
from .nn.detect import activation_label, detect_activation
from .nn.shapes import learned_values

FORMAT_VERSION = 1
MAX_PARAMS = 10**9  # a model robench builds: up to a billion parameters (4 GB in float32)
TRUST_HINT = (
    "pass --trust-checkpoint (trust_checkpoint=True, or trust=True to load_checkpoint) only if you trust "
    "where the file came from"
)


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict
    sha256: str
    path: Path | None = None
    format: str = "robench"
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.meta.get("name") or (self.path.stem if self.path else "model")


# -------------------------------------------------------------------------------------------- save
def model_meta(arch: str, activation: str, dataset: str | None = None, **extra) -> dict:
    """The metadata robench needs to rebuild a model: dataset defaults filled in."""
    meta = {"arch": arch, "activation": str(parse_activation(activation))}
    if dataset:
        info = dataset_info(dataset)
        meta.update(
            dataset=info.name,
            num_classes=info.num_classes,
            input_shape=list(info.shape),
            mean=list(info.mean),
            std=list(info.std),
        )
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict) -> Path:
    """Write ``model`` with ``meta`` to .pt or .safetensors, atomically. Returns the path. The normalization
    stored is the model's own (a ``Normalized`` model's mean and std, or none), never the dataset's."""
    path = Path(path)
    missing = [k for k in ("arch", "activation", "num_classes", "input_shape") if k not in meta]
    if missing:
        raise RobenchError(f"Checkpoint metadata lacks {', '.join(missing)}; build it with robench.model_meta().")
    net = model.net if isinstance(model, Normalized) else model
    # plain JSON types only, so a .pt loads with weights_only (torch.__version__, for one, is not a str)
    meta = json.loads(json.dumps({**meta, "robench_version": __version__}, default=str))
    if is_import_path(str(meta["arch"])) and not takes_activation(meta["arch"]):
        meta["activation"] = detect_activation(net) or "unknown"  # the user's class applies its own
    # the model's own normalization is what the loaded model must apply: none when it has none, whatever
    # the dataset's defaults in ``meta`` say, so that load(save(model)) returns the same logits
    meta.pop("mean", None), meta.pop("std", None)
    if isinstance(model, Normalized) and model.normalize.enabled:
        meta["mean"] = model.normalize.mean.flatten().tolist()
        meta["std"] = model.normalize.std.flatten().tolist()
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_model

            save_model(
                net,
                str(tmp),
                metadata={"robench": json.dumps(meta, sort_keys=True), "robench_format": str(FORMAT_VERSION)},
            )
        else:
            sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            # through memory: a file's zip archive would be named after the temporary file, so the same
            # weights would get a different sha256 on every save
            buf = io.BytesIO()
            torch.save({"robench_format": FORMAT_VERSION, "meta": meta, "state_dict": sd}, buf)
            tmp.write_bytes(buf.getvalue())
        _check_round_trip(model, tmp, path.suffix, meta)
    return path


def _check_round_trip(model: nn.Module, tmp: Path, suffix: str, meta: dict) -> None:
    """The saved file must give back the model it was saved from: the same logits on a random batch, bit
    for bit. Metadata that describes another model (another activation, classes or input size) is refused."""
    loaded = (_load_safetensors(tmp, {}) if suffix == ".safetensors" else _load_pickle(tmp, False, {})).model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    shape = [int(v) for v in meta["input_shape"]]
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(x)
            got = loaded.to(device)(x)
    except RuntimeError as e:
        raise RobenchError(
            f"The metadata ({meta['arch']}, {meta['activation']}, input "
            f"{'x'.join(map(str, shape))}) does not describe this model ({str(e).splitlines()[0]}); "
            "nothing was saved."
        ) from None
    finally:
        model.train(was_training)
    # bit for bit on the CPU; a GPU may pick other kernels for the second model, so there within rounding
    same = want.shape == got.shape and (
        torch.equal(want, got) if device.type == "cpu" else torch.allclose(want, got, rtol=1e-4, atol=1e-5)
    )
    if not same:
        raise RobenchError(
            f"The metadata ({meta['arch']}, {meta['activation']}, {meta['num_classes']} classes) "
            "describes another model than the one given: reloaded, it would return different "
            "logits; build the metadata with the model's own architecture and activation. "
            "Nothing was saved."
        )


# -------------------------------------------------------------------------------------------- load
def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        text = str(e)
        if not trust and (
            "Weights only load failed" in text
            and any(
                k in text
                for k in (
                    "Unsupported global",
                    "GLOBAL",
                    "not an allowed global",
                    "Unsupported operand",
                    "REDUCE",
                    "BUILD",
                )
            )
        ):
            raise RobenchError(
                f"{path} needs arbitrary unpickling to load, which could run code from the file; {TRUST_HINT}."
            ) from e
        raise RobenchError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
            "format); re-save it with torch.save or robench."
        ) from e
    except (AttributeError, ImportError) as e:
        missing = _missing_class(e)
        if trust and missing:
            raise RobenchError(
                f"{path} was pickled with {missing}, which cannot be imported here; run robench "
                "where that code is importable (its folder on PYTHONPATH), or save the model's "
                "state_dict() and pass --arch."
            ) from e
        raise RobenchError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
            "format); re-save it with torch.save or robench."
        ) from e
    except (
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        zipfile.BadZipFile,
        KeyError,
        TypeError,
        IndexError,
        MemoryError,
        OverflowError,
        RecursionError,
    ) as e:
        raise RobenchError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another "
            "format); re-save it with torch.save or robench."
        ) from e


def _missing_class(e: Exception) -> str | None:
    """The class or module an unpickling error could not import ("the class TinyNet of module __main__"),
    or None when the error is something else."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        return f"code from the module {e.name}"
    m = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(e))
    return f"the class {m.group(1)} of the module {m.group(2)}" if m else None


def _strip_prefixes(sd: dict) -> dict:
    for prefix in ("module.", "model.", "module.", "model."):
        if (
            sd
            and all(k.startswith(prefix) or k.startswith("normalize.") for k in sd)
            and any(k.startswith(prefix) for k in sd)
        ):
            sd = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}
    return sd


def _find_state_dict(obj) -> dict | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _check_tensors(sd: dict, own: dict, path: Path) -> None:
    """Refuse values that are not tensors, weights of the wrong kind of dtype and NaN/Inf weights, one
    sentence each. Shapes are compared before any value is read, so a tensor of absurd declared size
    (a view over a tiny storage) is refused without touching its elements."""
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise RobenchError(
                f"{path} holds a {type(v).__name__} under {k} where a weight tensor belongs; "
                "it is not a state dict robench can load."
            )
    for k, p in own.items():
        v = sd.get(k)
        if v is None:
            continue
        if v.is_complex() or v.is_floating_point() != p.is_floating_point():
            raise RobenchError(
                f"{path} stores {k} as {str(v.dtype).replace('torch.', '')} but the model needs "
                f"{str(p.dtype).replace('torch.', '')}; re-save the checkpoint with its original "
                "weights."
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RobenchError(f"{path} has NaN or Inf values in its weights (first in {k}); it cannot be evaluated.")


def _load_weights(model: Normalized, sd: dict, path: Path, meta: dict) -> None:
    own = model.net.state_dict(keep_vars=True)
    if sd and all(k.startswith("net.") for k in sd) and any(k not in own for k in sd):
        stripped = {k[len("net.") :]: v for k, v in sd.items()}
        if all(k in own for k in stripped):  # the state dict of a model robench.create_model built
            sd = stripped
    if any(not isinstance(v, torch.Tensor) for v in sd.values()):
        _check_tensors(sd, own, path)
    # a network-wide activation is one tensor under several names; a file may carry it under one
    aliases = {k for k, p in own.items() if sum(q is p for q in own.values()) > 1}
    missing = [k for k in own if k not in sd and k not in aliases]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} ({'x'.join(map(str, sd[k].shape))} in the file, {'x'.join(map(str, own[k].shape))} in the model)"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    parts = [
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs for", wrong))
        if keys
    ]
    if parts:
        raise RobenchError(
            f"{path} does not fit {meta.get('arch')} (activation {meta.get('activation')}, "
            f"{meta.get('num_classes')} classes): {'; '.join(parts)}; "
            "check --arch, --activation and --dataset."
        )
    _check_tensors(sd, own, path)
    model.net.load_state_dict({k: v for k, v in sd.items()}, strict=False)


def _build(meta: dict, path: Path) -> Normalized:
    check_meta(meta, f"The metadata of {path}")
    shape = meta.get("input_shape") or [3, 32, 32]
    user = is_import_path(str(meta["arch"]))
    build: dict[str, Any] = dict(
        # the user's class is built with --activation only where it takes one; else as its code is written
        activation=meta.get("activation") if not user or takes_activation(meta["arch"]) else None,
        num_classes=int(meta["num_classes"]),
        in_channels=int(shape[0]),
        input_size=int(shape[-1]),
        mean=meta.get("mean"),
        std=meta.get("std"),
    )
    with torch.device("meta"):  # counted before any memory is taken: a file cannot make robench allocate 9 GB
        try:
            probe = create_model(meta["arch"], **build)
        except (RuntimeError, ValueError, TypeError, ZeroDivisionError) as e:
            raise RobenchError(
                f"{path} describes a {meta['arch']} that cannot be built for inputs "
                f"{'x'.join(map(str, shape))} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                "check its architecture and input shape."
            ) from None
    count = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
    if count > MAX_PARAMS:
        raise RobenchError(
            f"{path} describes a {meta['arch']} of {count:,} parameters ({4 * count / 2**30:,.0f} GiB); "
            "robench builds models of up to 1,000,000,000, so check its architecture name."
        )
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten; the caller's RNG is left alone
        try:
            return create_model(meta["arch"], **build)
        except MemoryError:
            raise RobenchError(
                f"{path} describes a {meta['arch']} of {count:,} parameters, more than this machine's memory holds."
            ) from None


def _foreign_meta(path: Path, overrides: dict, kind: str) -> dict:
    if kind in ("pickled-module", "exported-program"):
        named = [f"--{k}" for k in ("arch", "activation") if overrides.get(k)]
        if named:  # the file is the network itself: a flag would only mislabel it
            raise RobenchError(
                f"{path} holds a whole {'exported program' if kind == 'exported-program' else 'module'}, "
                f"which carries its own architecture and activations; {' and '.join(named)} apply only "
                "to a plain state dict, so leave them out (a model card may label it)."
            )
    card = _model_card(path)
    given = {k: v for k, v in overrides.items() if v is not None}
    meta = {**card, **given}
    dataset = meta.get("dataset")
    if dataset:
        info = dataset_info(dataset)
        meta["dataset"] = info.name
        meta.setdefault("num_classes", info.num_classes)
        meta.setdefault("input_shape", list(info.shape))
    meta["source_format"] = kind
    return meta


def load_checkpoint(
    path: str | Path,
    trust: bool = False,
    *,
    arch: str | None = None,
    activation: str | None = None,
    dataset: str | None = None,
    num_classes: int | None = None,
    mean=None,
    std=None,
) -> Checkpoint:
    """Load any supported checkpoint; the returned ``.model`` is in eval mode on the CPU."""
    path = Path(path)
    if not path.exists():
        raise RobenchError(f"No such checkpoint: {path}.")
    if path.is_dir():
        raise RobenchError(f"{path} is a folder, not a checkpoint file.")
    if not path.is_file():
        raise RobenchError(f"{path} is not a regular file (a device, pipe or socket), so it is not a checkpoint.")
    if path.stat().st_size == 0:
        raise RobenchError(f"{path} is empty (0 bytes), so it is not a checkpoint.")
    overrides = {
        "arch": arch,
        "activation": activation,
        "dataset": dataset,
        "num_classes": num_classes,
        "mean": mean,
        "std": std,
    }
    digest = sha256_file(path)
    if path.suffix == ".safetensors":
        ckpt = _load_safetensors(path, overrides)
    elif path.suffix == ".pt2":
        ckpt = _load_exported(path, trust, overrides)
    else:
        ckpt = _load_pickle(path, trust, overrides)
    ckpt.sha256, ckpt.path = digest, path
    ckpt.meta = describe(ckpt.meta, path)
    ckpt.model.eval()
    return ckpt


def _load_safetensors(path: Path, overrides: dict) -> Checkpoint:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RobenchError(f"{path} is not a readable safetensors file (corrupt or truncated).") from e
    if "robench" in header:
        meta = parse_meta(header["robench"], f"The metadata of {path}")
        meta.update({k: v for k, v in overrides.items() if v is not None and k in ("dataset",)})
        kind = "robench"
    else:
        meta, kind = _foreign_meta(path, overrides, "safetensors"), "state-dict"
    return _from_state_dict(path, sd, meta, kind, code_ok=meta.get("arch") == overrides.get("arch"))


def _from_state_dict(path: Path, sd: dict, meta: dict, kind: str, code_ok: bool = False) -> Checkpoint:
    """``code_ok``: the user named this architecture or trusts the file, so an import-path architecture
    (their own class, which robench imports and so runs) may be built."""
    if not meta.get("arch") or not meta.get("num_classes"):
        raise RobenchError(
            f"{path} holds only weights and no model card; name its architecture and dataset "
            f"with --arch and --dataset (and --activation if not ReLU), or write {path.name}.json."
        )
    if not all(isinstance(k, str) for k in sd):
        raise RobenchError(
            f"{path} has a state dict whose keys are not all names; it is not a checkpoint robench can load."
        )
    sd = _strip_prefixes(sd)
    for key, field_ in (("normalize.mean", "mean"), ("normalize.std", "std"), ("mu", "mean"), ("sigma", "std")):
        v = sd.get(key)
        if isinstance(v, torch.Tensor) and v.numel() <= 16:  # a zoo file that carries its own normalization layer
            meta.setdefault(field_, sd.pop(key).flatten().tolist())
    if is_import_path(str(meta.get("arch", ""))) and not code_ok:
        raise RobenchError(
            f"{path} names its architecture {meta['arch']}, code that robench would import and run; "
            f"pass --arch {meta['arch']} yourself if you trust that code, or {TRUST_HINT}."
        )
    model = _build(meta, path)
    _load_weights(model, sd, path, meta)
    if is_import_path(str(meta["arch"])):
        meta["activation"] = activation_label(model.net, meta, path, built=takes_activation(meta["arch"]))
    else:
        meta.setdefault("activation", "relu")  # what robench built
    return Checkpoint(model, meta, "", format=kind)


def _load_pickle(path: Path, trust: bool, overrides: dict) -> Checkpoint:
    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and "robench_format" in obj:
        if not isinstance(obj["robench_format"], int) or isinstance(obj["robench_format"], bool):
            raise RobenchError(f"{path} has a robench_format that is not a whole number; re-save it with robench.")
        if obj["robench_format"] > FORMAT_VERSION:
            raise RobenchError(
                f"{path} was written by a newer robench (format {obj['robench_format']}); upgrade robench to read it."
            )
        if not isinstance(obj.get("meta"), dict):
            raise RobenchError(
                f"The metadata of {path} is a {type(obj.get('meta')).__name__}, not an object of named "
                "fields; re-save the checkpoint with robench."
            )
        meta = dict(obj["meta"])
        meta.update({k: v for k, v in overrides.items() if v is not None and k in ("dataset",)})
        if not isinstance(obj.get("state_dict"), dict):
            raise RobenchError(f"{path} is a robench checkpoint without a state dict; re-save it with robench.")
        return _from_state_dict(
            path, obj["state_dict"], meta, "robench", code_ok=trust or meta.get("arch") == overrides.get("arch")
        )
    if isinstance(obj, nn.Module):
        meta = _foreign_meta(path, overrides, "pickled-module")
        meta["activation"] = activation_label(obj, meta, path)
        return Checkpoint(_wrap_module(obj, meta), meta, "", format="pickled-module")
    sd = _find_state_dict(obj)
    if sd is None:
        raise RobenchError(f"{path} holds a {type(obj).__name__}, not a model or a state dict.")
    meta = _foreign_meta(path, overrides, "state-dict")
    return _from_state_dict(path, sd, meta, "state-dict", code_ok=trust or meta.get("arch") == overrides.get("arch"))


def _wrap_module(module: nn.Module, meta: dict) -> nn.Module:
    if not meta.get("dataset"):
        raise RobenchError("This file carries no dataset; name it with --dataset.")
    meta.setdefault("arch", type(module).__name__)
    if meta.get("mean") is not None:
        return Normalized(module, meta["mean"], meta["std"])
    return module


class _Exported(nn.Module):
    """An exported program's module. It is traced in the mode it was exported in, so ``train()``/``eval()``
    do not reach into it (torch refuses that)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.module(x)


def _load_exported(path: Path, trust: bool, overrides: dict) -> Checkpoint:
    from .pt2 import load_exported

    program = load_exported(path, trust)
    meta = _foreign_meta(path, overrides, "exported-program")
    meta["arch"] = meta.get("arch") or "exported"
    meta["activation"] = activation_label(program.module(), meta, path)
    return Checkpoint(_wrap_module(_Exported(program.module()), meta), meta, "", format="exported-program")


# -------------------------------------------------------------------------------------------- info
def checkpoint_info(ckpt: Checkpoint) -> dict:
    """What `robench info` shows: metadata, parameter count and learned activation parameters."""
    params = {id(p): p for p in ckpt.model.parameters()}
    acts = learned_values(ckpt.model)
    return {
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "format": ckpt.format,
        "parameters": sum(p.numel() for p in params.values()),
        "size_bytes": ckpt.path.stat().st_size if ckpt.path else None,
        "meta": ckpt.meta,
        "activations": acts,
    }


__all__ = [
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "checkpoint_info",
    "model_meta",
    "sha256_file",
    "atomic_path",
]
