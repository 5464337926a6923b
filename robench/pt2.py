"""Exported programs (``torch.export``, ``.pt2``) read without running code from the file.

torch's own loader unpickles, with arbitrary code allowed, every weight or constant whose config marks it
``use_pickle``, custom and opaque objects among the constants, legacy weight files and (when the safe
reading fails) the sample inputs; an AOTInductor member is a compiled library that it loads and runs.
Unless the user trusts the file, robench reads the archive itself first and refuses any such member, then
lets torch load it while every unpickling route is held to torch's weights-only reader.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import RobenchError

TRUST_HINT = "pass --trust-checkpoint (trust=True) only if you trust where the file came from"
MAX_MEMBER = 1 << 31  # bytes one member may declare: more is no model robench evaluates


def _refuse(path: Path, what: str) -> RobenchError:
    return RobenchError(
        f"{path} is an exported program whose {what} would need arbitrary unpickling or "
        f"native code to load, which could run code from the file; {TRUST_HINT}."
    )


def _members(path: Path) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by their name below the archive's top folder."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise RobenchError(f"{path} is not a readable exported program (torch.export .pt2).") from e
    out = {}
    for info in infos:
        _, _, rest = info.filename.partition("/")
        out[rest or info.filename] = info
        if info.file_size > MAX_MEMBER:
            raise RobenchError(
                f"{path} declares a member of {info.file_size / 2**30:.1f} GiB "
                f"({info.filename}); robench reads exported programs up to 2 GiB per member."
            )
    return out


def _check_configs(path: Path, z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> None:
    for name, info in members.items():
        if name.startswith("data/aotinductor/"):
            raise _refuse(path, "AOTInductor member (compiled code)")
        folder = name.rsplit("/", 1)[0] + "/"
        if folder in ("data/weights/", "data/constants/") and name.endswith(".pt"):
            raise _refuse(path, f"legacy pickled {folder.split('/')[1]} file")
        if folder in ("data/weights/", "data/constants/") and name.endswith("_config.json"):
            try:
                config = json.loads(z.read(info)).get("config", {})
                entries = list(config.values())
            except (ValueError, AttributeError, UnicodeDecodeError) as e:
                raise RobenchError(f"{path} has an unreadable {name}; it is not a valid exported program.") from e
            for entry in entries:
                if not isinstance(entry, dict):
                    raise RobenchError(f"{path} has an unreadable {name}; it is not a valid exported program.")
                if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_")):
                    raise _refuse(path, f"{folder.split('/')[1]} entry {entry.get('path_name')!r}")


def _check_sample_inputs(path: Path, z: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> None:
    for name, info in members.items():
        if name.startswith("data/sample_inputs/") and info.file_size:
            try:
                torch.load(io.BytesIO(z.read(info)), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise _refuse(path, "sample inputs") from e
            except Exception as e:  # torch raises many types for a bad member
                raise RobenchError(
                    f"{path} has unreadable sample inputs ({name}); it is not a valid exported program."
                ) from e


def _forbidden(*args, **kwargs):
    raise pickle.UnpicklingError("unpickling code is not allowed while reading an untrusted exported program")


@contextmanager
def weights_only_unpickling():
    """Within the block, torch.load reads weights only, and pickle's and torch's object loaders refuse."""
    real_load, real_loads, real_obj = torch.load, pickle.loads, torch._C._pickle_load_obj

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    torch.load, pickle.loads, torch._C._pickle_load_obj = load, _forbidden, _forbidden
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = real_load, real_loads, real_obj


def load_exported(path: Path, trust: bool):
    """The ExportedProgram in ``path``; without ``trust`` nothing in it is unpickled beyond plain tensors."""
    if not trust:
        members = _members(path)
        if "models/" not in {n[:7] for n in members}:
            raise RobenchError(f"{path} is not a readable exported program (torch.export .pt2).")
        with zipfile.ZipFile(path) as z:
            _check_configs(path, z, members)
            _check_sample_inputs(path, z, members)
    try:
        if trust:
            return torch.export.load(str(path))
        with weights_only_unpickling():
            return torch.export.load(str(path))
    except pickle.UnpicklingError as e:
        raise _refuse(path, "contents") from e
    except MemoryError:
        raise RobenchError(f"{path} needs more memory than this machine has to load.") from None
    except Exception as e:  # torch.export raises many types for a bad file
        raise RobenchError(f"{path} is not a readable exported program (torch.export .pt2).") from e
