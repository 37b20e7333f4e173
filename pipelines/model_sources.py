"""Which local models a user may name, decided from the name alone.

`--backend local:<model>` (and `/backend`, the settings panel, a tool call's arguments, a
training's base model) reaches `from_pretrained`, which reads any folder of the server.
Left open, it answers "does this path exist?" for anyone: the error for a missing folder
differs from the one for a folder that is not a model. So a user may name only:

- the operator's own configured model(s) (`ATELIER_LOCAL_MODEL`, `ATELIER_LOCAL_VIDEO_MODEL`),
  exactly as configured, folder or hub id;
- a Hugging Face hub id, `owner/name`, which is always fetched from the hub, never read
  from a folder of the same name under the working directory (pipeline_cache._source);
- an absolute path inside the operator's models folder (`ATELIER_LOCAL_MODELS_DIR`),
  without `..` (symlinks the operator placed there are followed, downwards only).

Anything else is refused with one message that depends only on the text given, never on
what is on disk. Errors about allowed folders name them as given, never resolved.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath

from core.errors import InvalidInput

# Hugging Face repo ids: `owner/name` (or a legacy bare `name`), each part starting with a
# letter or digit.
HUB_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class ModelSources:
    """The operator's models and models folder; `check` applies the rules above."""

    operator_models: tuple[str, ...] = ()
    models_dir: Path | None = None

    def check(self, model: str) -> str:
        """`model` if a user may name it, else InvalidInput (the same text for any path)."""
        name = (model or "").strip()
        if name in self.operator_models:
            return name
        if is_hub_id(name):
            return name
        if self.models_dir is not None and _inside(name, self.models_dir):
            return name
        raise InvalidInput(_refusal(name, self.models_dir is not None))

    def source(self, model: str) -> str:
        """What the loader gets for a model a user may name (else InvalidInput).

        The operator's own model folder is made absolute (`~` and relative ones too): the
        loader reads only paths as folders, so a hub id never picks up a folder of that
        name under the working directory.
        """
        checked = self.check(model)
        if checked in self.operator_models:
            folder = Path(checked).expanduser()
            if folder.is_dir():
                return str(folder.absolute())
        return checked


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.fullmatch(name)) and ".." not in name


def _inside(name: str, root: Path) -> bool:
    """An absolute path strictly inside `root`, judged on the text: no `..`, no `~`."""
    if not name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    parts = PurePath(name).parts
    if ".." in parts:
        return False
    base = os.path.normpath(str(root.expanduser().absolute()))
    path = os.path.normpath(name)
    return path != base and path.startswith(base.rstrip(os.sep) + os.sep)


def _refusal(name: str, has_models_dir: bool) -> str:
    shown = name if len(name) <= 80 else name[:77] + "..."
    folder = (
        ", or an absolute path inside the operator's models folder (ATELIER_LOCAL_MODELS_DIR)"
        if has_models_dir
        else ""
    )
    return (
        f"{shown!r} cannot be used as a local model. Name a Hugging Face model id "
        f"(owner/name, e.g. stabilityai/sd-turbo), the server's configured local model{folder}."
    )
