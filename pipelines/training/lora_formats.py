"""Where a trained LoRA lives on disk, and its two file formats.

Layout, chosen so that the local backend can use a LoRA by name the moment training ends
(`local_diffusers` loads `<lora dir>/<name>.safetensors` and lists only that folder's top
level):

    <lora dir>/<name>.safetensors        diffusers format; written last, atomically
    <lora dir>/<name>/manifest.json      the dataset: origin, licence, source, caption, sha256
    <lora dir>/<name>/dataset/           the prepared images and their .txt captions
    <lora dir>/<name>/<name>.kohya.safetensors   for AUTOMATIC1111 / ComfyUI
    <lora dir>/<name>/training.json      parameters, loss history, timings
    <lora dir>/<name>/samples/           sample images made during training
    <lora dir>/<name>/checkpoints/       step-NNNNNN/ folders a stopped training resumes from

Two formats of the same UNet weights:

- diffusers (`StableDiffusionPipeline.load_lora_weights` reads it): keys
  `unet.<module>.lora.down/up.weight`, and the peft `LoraConfig` under the header key
  diffusers itself writes (`lora_adapter_metadata`). Without that entry a reload silently
  sets `lora_alpha` to the rank, which changes the LoRA's strength.
- kohya (what AUTOMATIC1111 and ComfyUI users load, and what diffusers converts on load):
  `lora_unet_<module_with_underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`.
  diffusers' converter writes the rank as alpha; here the real alpha is written instead.

Both carry Atelier's adapter metadata (base model, rank, alpha, trigger word, steps,
dataset hash) in the safetensors header, plus the `ss_*` / `modelspec.*` keys other UIs
display. The header is plain JSON, read here without torch, so listing LoRAs stays cheap.
torch, safetensors' torch bindings and diffusers are imported only by the functions that
read or write tensors.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from core.errors import InvalidInput

LoraFormat = Literal["diffusers", "kohya"]

# Stricter than what local_diffusers accepts, so a name that passes here always loads
# there, and survives `--lora name:0.8` parsing (no ':' or ',') and case-insensitive disks.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ATELIER_KEY = "atelier.lora"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base's key
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class LoraMetadata:
    """What a LoRA file says about itself (the registry phase stores the same fields)."""

    base_model: str
    rank: int
    alpha: float
    trigger_word: str
    steps: int
    dataset_hash: str
    resolution: int
    target_modules: tuple[str, ...]
    name: str = ""
    created_at: str = ""

    def header(self) -> dict[str, str]:
        """safetensors header entries: ours as JSON, plus keys A1111/ComfyUI/Civitai show."""
        return {
            ATELIER_KEY: json.dumps(asdict(self), sort_keys=True),
            "ss_sd_model_name": self.base_model,
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(self.rank),
            "ss_network_alpha": f"{self.alpha:g}",
            "ss_steps": str(self.steps),
            "ss_resolution": f"({self.resolution}, {self.resolution})",
            "ss_output_name": self.name,
            "modelspec.title": self.name,
            "modelspec.trigger_phrase": self.trigger_word,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, str]) -> LoraMetadata | None:
        """Ours back from a header; None for files Atelier did not write."""
        raw = header.get(ATELIER_KEY)
        if raw is None:
            return None
        try:
            values = json.loads(raw)
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in values.items() if k in known}
            values["target_modules"] = tuple(values.get("target_modules", ()))
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"The LoRA's {ATELIER_KEY} metadata cannot be read: {exc}") from None


@dataclass(frozen=True)
class LoraLayout:
    """The paths of one named LoRA under the LoRA folder (see the module docstring)."""

    lora_dir: Path
    name: str

    @property
    def weights(self) -> Path:
        return self.lora_dir / f"{self.name}.safetensors"

    @property
    def folder(self) -> Path:
        return self.lora_dir / self.name

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def dataset(self) -> Path:
        return self.folder / "dataset"

    @property
    def kohya_weights(self) -> Path:
        return self.folder / f"{self.name}.kohya.safetensors"

    @property
    def training_record(self) -> Path:
        return self.folder / "training.json"

    @property
    def samples(self) -> Path:
        return self.folder / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"


def check_lora_name(name: str, lora_dir: Path) -> LoraLayout:
    """The layout for a new LoRA called `name`, or why that name cannot be used.

    Free means: no `<name>.safetensors` and no `<name>/` folder, compared without case
    (on macOS and Windows disks "Pixel-Art" and "pixel-art" are the same file).
    """
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput(
            f"{name!r} cannot be a LoRA name: use 1 to 64 letters, digits, '-' or '_', "
            "starting with a letter or digit (e.g. 'my-cat-style')."
        )
    taken = set()
    if lora_dir.is_dir():
        for entry in lora_dir.iterdir():
            stem = entry.name.removesuffix(".safetensors") if entry.is_file() else entry.name
            taken.add(stem.lower())
    if name.lower() in taken:
        # LoRA names share one folder on the server: the name is taken, whoever took it.
        raise InvalidInput(
            f"There is already a LoRA, a training or a shared LoRA file named {name!r} on "
            "this server (LoRA names are one list for everyone). Choose another name."
        )
    return LoraLayout(lora_dir, name)


# --------------------------------------------------------------------------- header


def read_header(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, read as JSON without loading tensors."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise InvalidInput(f"{path.name} is not a readable .safetensors file ({exc}).") from None
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def read_metadata(path: Path) -> LoraMetadata | None:
    """Atelier's metadata of a LoRA file; None when another tool made it."""
    return LoraMetadata.from_header(read_header(path))


# --------------------------------------------------------------------------- tensors


def diffusers_state(peft_state: Mapping[str, Any]) -> dict[str, Any]:
    """peft's UNet adapter state (`get_peft_model_state_dict`) → the diffusers file's keys."""
    from diffusers.utils import convert_state_dict_to_diffusers

    converted = convert_state_dict_to_diffusers(dict(peft_state))
    return {f"unet.{key}": value.detach().contiguous() for key, value in converted.items()}


def kohya_state(peft_state: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """peft's UNet adapter state → kohya keys, with the real alpha on every module."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya

    converted = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
    state = {}
    for key, value in converted.items():
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha), dtype=torch.float32)
        state[key] = value.detach().contiguous()
    return state


def save_lora(
    path: Path,
    peft_state: Mapping[str, Any],
    metadata: LoraMetadata,
    lora_format: LoraFormat = "diffusers",
) -> Path:
    """Write the adapter in one format, atomically: a reader never sees half a file."""
    from safetensors.torch import save_file

    header = {"format": "pt", **metadata.header()}
    if lora_format == "diffusers":
        state = diffusers_state(peft_state)
        header[DIFFUSERS_METADATA_KEY] = json.dumps(
            {f"unet.{k}": v for k, v in _peft_config(metadata).items()}, sort_keys=True
        )
    elif lora_format == "kohya":
        state = kohya_state(peft_state, metadata.alpha)
    else:
        raise ValueError(f"unknown LoRA format {lora_format!r}")
    state = {key: value.to("cpu") for key, value in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    save_file(state, str(partial), metadata=header)
    _fsync(partial)
    os.replace(partial, path)
    return path


def load_lora(path: Path) -> tuple[dict[str, Any], LoraMetadata | None, LoraFormat]:
    """The tensors of a LoRA file as stored, its metadata, and which format it is."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InvalidInput(f"{path.name} could not be read as LoRA weights ({exc}).") from None
    kind: LoraFormat = "kohya" if any(k.startswith("lora_unet_") for k in state) else "diffusers"
    return state, LoraMetadata.from_header(header), kind


def _peft_config(metadata: LoraMetadata) -> dict[str, Any]:
    """The peft LoraConfig fields diffusers rebuilds the adapter from on load."""
    from peft import LoraConfig

    config = LoraConfig(
        r=metadata.rank,
        lora_alpha=metadata.alpha,
        init_lora_weights="gaussian",
        target_modules=list(metadata.target_modules),
    ).to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())
