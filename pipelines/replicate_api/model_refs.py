"""Replicate model references ("owner/name" or "owner/name:version"), parsed once.

Images, video and training all name Replicate models the same way, and the client
needs the parsed form to choose between the model and the version endpoints, so the
parsing lives beside the client rather than in one kind's model table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInput

MODEL_REF = re.compile(
    r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9_.-]{0,99})/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,99})"
    r"(?::(?P<version>[^\s]*))?$"
)
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRef:
    owner: str
    name: str
    version: str | None = None

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.name}"


def parse_ref(model: str) -> ModelRef:
    """'owner/name' or 'owner/name:version' (64 hex characters), or a clear refusal."""
    match = MODEL_REF.match(model.strip())
    if not match:
        raise InvalidInput(
            f"{model!r} is not a Replicate model name. Use owner/name (for example "
            "black-forest-labs/flux-schnell) or owner/name:version."
        )
    version = match["version"]
    if version is not None and not VERSION_ID.match(version):
        raise InvalidInput(
            f"{version!r} is not a Replicate version id: a version is 64 lowercase hex "
            f"characters (see replicate.com/{match['owner']}/{match['name']}/versions)."
        )
    return ModelRef(match["owner"], match["name"], version)
