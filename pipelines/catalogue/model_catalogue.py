"""Which hosted models exist, when they were released, and when they stop working.

Hosted models now churn every few months (OpenAI retired three image models in one
announcement), so their lifecycle is data (`models.toml`, plus an optional file of the
operator's), not code. Every request is checked here before it is priced, reserved or
sent: a model past its shutdown day is refused with its replacement and the exact
command to switch, and one within `RETIRING_WINDOW` of it works with a warning.

Dates are compared with an injectable clock, so tests (and an operator previewing a
shutdown with `ATELIER_MODELS_DATE`) do not depend on today's date. Models the catalogue
does not list (a Replicate model someone just published, a local checkpoint) are simply
unknown: nothing is claimed about them and nothing is refused.

Only the standard library is imported, so checking a request never loads a backend.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import ConfigError, ModelRetired
from pipelines.catalogue import toml_rows

BUILTIN_FILE = Path(__file__).with_name("models.toml")
RETIRING_WINDOW = dt.timedelta(days=30)
KINDS = ("image", "video", "chat", "training")

Clock = Callable[[], dt.date]
State = Literal["live", "retiring", "retired", "unknown"]

_FIELDS = {
    *("backend", "kind", "id", "aliases", "released", "deprecated", "shutdown"),
    *("replacement", "source", "checked", "note"),
}


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@dataclass(frozen=True)
class ModelEntry:
    """One `[[model]]` row: a hosted model's identity and lifecycle, with its source."""

    backend: str
    kind: str
    id: str
    source: str
    checked: dt.date
    aliases: tuple[str, ...] = ()
    released: dt.date | None = None
    deprecated: dt.date | None = None  # the day the shutdown was announced
    shutdown: dt.date | None = None
    replacement: str | None = None
    note: str | None = None
    file: Path | None = None
    line: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What an operator's row must repeat to replace this row rather than add one."""
        return (self.backend, self.id.casefold())

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    @property
    def where(self) -> str:
        return toml_rows.where(self.file, self.line)


@dataclass(frozen=True)
class ModelStatus:
    """What the catalogue says about one model on one day."""

    backend: str
    model: str
    state: State
    today: dt.date
    entry: ModelEntry | None = None
    replacement: str | None = None  # the live model to move to, following the chain

    @property
    def usable(self) -> bool:
        return self.state != "retired"

    @property
    def switch_command(self) -> str | None:
        """How a user (or, for the chat model, the operator) moves to the replacement."""
        if not self.replacement:
            return None
        kind = self.entry.kind if self.entry else "image"
        if kind == "chat":
            return f"ATELIER_LLM_MODEL={self.replacement}"
        if kind == "video":
            return f"/video --backend {self.backend}:{self.replacement}"
        if kind == "training":
            return f"/train --backend {self.backend}  (trainer {self.replacement})"
        return f"/backend {self.backend}:{self.replacement}"

    @property
    def _in_panel(self) -> bool:
        return self.entry is None or self.entry.kind == "image"

    def summary(self) -> str:
        """One phrase for doctor and the admin's welcome: live / retiring on … / retired → …."""
        if self.state == "unknown":
            return "not in the model catalogue (no dates known)"
        assert self.entry is not None
        if self.state == "live":
            return "live"
        then = f" → {self.replacement}" if self.replacement else ""
        if self.state == "retiring":
            return f"retiring on {self.entry.shutdown}{then}"
        return f"retired on {self.entry.shutdown}{then}"

    def warning(self) -> str | None:
        """The one-line caption warning for a model that still works but not for long."""
        if self.state != "retiring" or self.entry is None or self.entry.shutdown is None:
            return None
        days = (self.entry.shutdown - self.today).days
        when = "tomorrow" if days == 1 else f"in {days} days"
        text = f"{self.model} shuts down on {self.entry.shutdown} ({when})"
        if self.replacement:
            text += f"; switch to {self.replacement} with `{self.switch_command}`"
        return text + "."

    def refusal(self, kind: str = "model") -> str:
        """Why a retired model is refused, and exactly how to switch."""
        assert self.entry is not None and self.entry.shutdown is not None
        text = (
            f"The {kind} {self.model} was shut down by its provider on {self.entry.shutdown} "
            "and can no longer be used; nothing was sent or charged."
        )
        if self.replacement:
            text += (
                f" Its replacement is {self.replacement}: switch with `{self.switch_command}`"
                + (" (or pick it in the settings panel)." if self._in_panel else ".")
            )
        return text


@dataclass
class ModelCatalogue:
    """The merged catalogue; every question about a model is answered as of `clock()`."""

    entries: list[ModelEntry] = field(default_factory=list)
    clock: Clock = utc_today

    def __post_init__(self) -> None:
        self._by_name: dict[tuple[str, str], ModelEntry] = {}
        for entry in self.entries:
            for name in entry.names:
                self._by_name[(entry.backend, name.casefold())] = entry

    @classmethod
    def load(cls, user_file: Path | None = None, *, clock: Clock = utc_today) -> ModelCatalogue:
        """The built-in catalogue, then the operator's file: same model replaces, new extends."""
        merged = {entry.key: entry for entry in _parse(BUILTIN_FILE)}
        if user_file is not None:
            for entry in _parse(user_file):
                merged[entry.key] = entry
        entries = list(merged.values())
        _check_names(entries)
        _check_replacements(entries)
        return cls(entries, clock)

    def find(self, backend: str, model: str) -> ModelEntry | None:
        """The entry for a model id, alias or snapshot (`owner/name:version` → owner/name)."""
        name = (model or "").strip()
        if backend == "replicate":
            name = name.partition(":")[0]
        return self._by_name.get((backend, name.casefold()))

    def status(self, backend: str, model: str) -> ModelStatus:
        today = self.clock()
        entry = self.find(backend, model)
        if entry is None:
            return ModelStatus(backend, model, "unknown", today)
        state: State = "live"
        if entry.shutdown is not None:
            if today >= entry.shutdown:
                state = "retired"
            elif entry.shutdown - today <= RETIRING_WINDOW:
                state = "retiring"
        replacement = self._live_replacement(entry, today) if state != "live" else None
        return ModelStatus(backend, model, state, today, entry, replacement)

    def require_usable(self, backend: str, model: str, kind: str = "model") -> ModelStatus:
        """The model's status; raises ModelRetired past its shutdown day."""
        status = self.status(backend, model)
        if not status.usable:
            raise ModelRetired(status.refusal(kind))
        return status

    def live(self, backend: str, kind: str) -> list[str]:
        """Ids of the models of this backend and kind that still work today, newest first."""
        today = self.clock()
        alive = [
            e
            for e in self.entries
            if e.backend == backend
            and e.kind == kind
            and (e.shutdown is None or today < e.shutdown)
            and (e.released is None or e.released <= today)
        ]
        alive.sort(key=lambda e: e.released or dt.date.min, reverse=True)
        return [e.id for e in alive]

    def replacement_hint(self, backend: str, model: str) -> str:
        """For a provider's "model not found": what the catalogue suggests instead, or ""."""
        status = self.status(backend, model)
        if status.entry is None:
            return ""
        target = status.replacement or self._live_replacement(status.entry, status.today)
        if not target or target == status.entry.id:
            return ""
        return f" The model catalogue suggests {target}: switch with `/backend {backend}:{target}`."

    def _live_replacement(self, entry: ModelEntry, today: dt.date) -> str | None:
        """Follow replacements until one is live today (a replaced replacement moves on)."""
        seen = {entry.key}
        current = entry
        while current.replacement:
            nxt = self.find(current.backend, current.replacement)
            if nxt is None:
                return current.replacement
            if nxt.key in seen:
                return None
            seen.add(nxt.key)
            if nxt.shutdown is None or today < nxt.shutdown:
                return nxt.id
            current = nxt
        return None


# ---------------------------------------------------------------------------- parsing
def _parse(path: Path) -> list[ModelEntry]:
    raw, lines = toml_rows.read_tables(path, "model catalogue", {"model": _FIELDS})
    entries = [
        _entry(item, path, line) for item, line in zip(raw["model"], lines["model"], strict=True)
    ]
    seen: dict[tuple[str, str], ModelEntry] = {}
    for entry in entries:
        if entry.key in seen:
            raise ConfigError(
                f"Model catalogue {entry.where}: the [[model]] row repeats {entry.id} "
                f"({entry.backend}) from line {seen[entry.key].line}."
            )
        seen[entry.key] = entry
    return entries


def _entry(item: dict[str, Any], path: Path, line: int | None) -> ModelEntry:
    def fail(reason: str) -> ConfigError:
        return ConfigError(
            f"Model catalogue {toml_rows.where(path, line)}: the [[model]] row {reason}."
        )

    toml_rows.check_fields(item, _FIELDS, fail)
    backend = toml_rows.text(item, "backend", fail).lower()
    kind = toml_rows.text(item, "kind", fail)
    if kind not in KINDS:
        raise fail(f"has kind {kind!r}; use one of {', '.join(KINDS)}")
    model_id = toml_rows.text(item, "id", fail)
    aliases = item.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise fail("has aliases that are not a list of names")
    source = toml_rows.optional_text(item, "source", fail)
    if source is None:
        raise fail("is missing source (where its dates were read)")
    checked = toml_rows.optional_day(item, "checked", fail)
    if checked is None:
        raise fail("is missing checked (the day its source was read, YYYY-MM-DD)")
    released = toml_rows.optional_day(item, "released", fail)
    deprecated = toml_rows.optional_day(item, "deprecated", fail)
    shutdown = toml_rows.optional_day(item, "shutdown", fail)
    replacement = toml_rows.optional_text(item, "replacement", fail)
    if shutdown and released and shutdown <= released:
        raise fail(f"has shutdown {shutdown} on or before its release {released}")
    if deprecated and released and deprecated < released:
        raise fail(f"has deprecated {deprecated} before its release {released}")
    if deprecated and shutdown and deprecated > shutdown:
        raise fail(f"has deprecated {deprecated} after its shutdown {shutdown}")
    if replacement and replacement.casefold() in {n.casefold() for n in (model_id, *aliases)}:
        raise fail(f"names itself ({replacement}) as its replacement")
    return ModelEntry(
        backend=backend,
        kind=kind,
        id=model_id,
        aliases=tuple(a.strip() for a in aliases),
        released=released,
        deprecated=deprecated,
        shutdown=shutdown,
        replacement=replacement,
        source=source,
        checked=checked,
        note=toml_rows.optional_text(item, "note", fail),
        file=path,
        line=line,
    )


def _check_names(entries: Iterable[ModelEntry]) -> None:
    owner: dict[tuple[str, str], ModelEntry] = {}
    for entry in entries:
        for name in entry.names:
            key = (entry.backend, name.casefold())
            other = owner.setdefault(key, entry)
            if other is not entry:
                raise ConfigError(
                    f"Model catalogue {entry.where}: the name {name!r} of {entry.id} is already "
                    f"used by {other.id} ({other.where})."
                )


def _check_replacements(entries: list[ModelEntry]) -> None:
    names = {(e.backend, n.casefold()) for e in entries for n in e.names}
    for entry in entries:
        if entry.replacement and (entry.backend, entry.replacement.casefold()) not in names:
            raise ConfigError(
                f"Model catalogue {entry.where}: the [[model]] row for {entry.id} names the "
                f"replacement {entry.replacement!r}, which is not in the catalogue for "
                f"{entry.backend}."
            )


def fixed_clock(day: dt.date | str) -> Clock:
    """A clock that always says `day` (tests, and ATELIER_MODELS_DATE)."""
    value = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return lambda: value
