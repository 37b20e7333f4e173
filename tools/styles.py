"""Style presets as data: the built-in `styles.toml` plus an optional file of the user's.

Kept as data so adding a style is editing a file, not code; a broken user file stops
start-up with a message naming the file and the entry rather than failing mid-chat.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, InvalidInput

BUILTIN_FILE = Path(__file__).with_name("styles.toml")


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    template: str
    negative: str | None = None
    guidance: str | None = None
    weights: dict[str, float] | None = None

    def apply(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt.strip().rstrip(".,"))


def _parse(path: Path) -> dict[str, Style]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the styles file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The styles file {path} is not valid TOML: {exc}.") from None
    styles: dict[str, Style] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"Style {name!r} in {path} must be a table ([{name}]).")
        template = entry.get("template")
        if not isinstance(template, str) or "{prompt}" not in template:
            raise ConfigError(
                f"Style {name!r} in {path} needs a template string containing {{prompt}}."
            )
        unknown = set(entry) - {"description", "template", "negative", "guidance", "weights"}
        if unknown:
            raise ConfigError(f"Style {name!r} in {path} has unknown keys: {sorted(unknown)}.")
        styles[name.lower()] = Style(
            name=name.lower(),
            description=str(entry.get("description") or name),
            template=template,
            negative=entry.get("negative"),
            guidance=entry.get("guidance"),
            weights=_weights(entry.get("weights"), f"Style {name!r} in {path}"),
        )
    return styles


def _weights(raw: object, where: str) -> dict[str, float] | None:
    """Ranking weights by criterion; checked here so a typo fails at start-up."""
    from pipelines.scoring.image_scoring import CRITERIA

    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: weights must be a table, e.g. {{ clip = 1.0 }}.")
    weights: dict[str, float] = {}
    for criterion, value in raw.items():
        if criterion not in CRITERIA:
            raise ConfigError(
                f"{where}: unknown criterion {criterion!r} in weights. "
                f"Known: {', '.join(CRITERIA)}."
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: weight {criterion} must be a number >= 0.")
        weights[criterion] = float(value)
    return weights


class StyleLibrary:
    def __init__(self, styles: dict[str, Style]) -> None:
        self._styles = styles

    @classmethod
    def builtin(cls) -> StyleLibrary:
        return cls(_parse(BUILTIN_FILE))

    @classmethod
    def load(cls, user_file: Path | None = None) -> StyleLibrary:
        styles = _parse(BUILTIN_FILE)
        if user_file is not None:
            styles.update(_parse(user_file))
        return cls(styles)

    def names(self) -> list[str]:
        return sorted(self._styles)

    def get(self, name: str) -> Style:
        key = (name or "").strip().lower().replace(" ", "-").replace("_", "-")
        aliases = {"watercolor": "watercolour", "lineart": "line-art", "product-shot": "product"}
        key = aliases.get(key, key)
        if key not in self._styles:
            raise InvalidInput(f"There is no style {name!r}. Styles: {', '.join(self.names())}.")
        return self._styles[key]

    def describe(self) -> str:
        return "\n".join(f"- `{s.name}`: {s.description}" for s in self._styles.values())
