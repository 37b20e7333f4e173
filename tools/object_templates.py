"""Prompt templates by object type, kept as data (`object_templates.toml` plus a user file).

A batch of "each of these objects" reads best when every item is phrased the same way
for its kind: one whole animal, one whole vehicle, centred on white. Templates are data so
adding a kind is editing a file, not code; a broken user file stops start-up with a
message naming the file and the entry rather than failing mid-batch.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, InvalidInput

BUILTIN_FILE = Path(__file__).with_name("object_templates.toml")
FALLBACK = "object"

# Words after which a label describes surroundings, not the object: "cup of tea", "cat
# on a mat". The object type is looked for before them first.
_PREPOSITIONS = frozenset({"on", "with", "in", "at", "by", "for", "from", "of", "under"})
_PREPOSITIONS |= {"near", "beside", "behind", "inside", "holding", "wearing"}
_IRREGULAR = {
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "children": "child",
    "men": "man",
    "women": "woman",
    "people": "person",
    "oxen": "ox",
    "cacti": "cactus",
    "fungi": "fungus",
}
_ALIASES = {
    "household-object": "household",
    "musical-instrument": "instrument",
    "generic": FALLBACK,
    "default": FALLBACK,
}
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    template: str
    keywords: tuple[str, ...] = ()

    def apply(self, label: str) -> str:
        subject = _ARTICLE.sub("", label.strip().rstrip(".,")).strip()
        return self.template.replace("{object}", subject)


def _parse(path: Path) -> dict[str, Template]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the templates file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The templates file {path} is not valid TOML: {exc}.") from None
    templates: dict[str, Template] = {}
    owners: dict[tuple[str, ...], str] = {}
    for name, entry in raw.items():
        where = f"Template {name!r} in {path}"
        if not isinstance(entry, dict):
            raise ConfigError(f"Template {name!r} in {path} must be a table ([{name}]).")
        template = entry.get("template")
        if not isinstance(template, str) or "{object}" not in template:
            raise ConfigError(f"{where} needs a template string containing {{object}}.")
        unknown = set(entry) - {"description", "template", "keywords"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys: {sorted(unknown)}.")
        description = entry.get("description", name)
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description must be a string.")
        keywords = _keywords(entry.get("keywords", []), where)
        for keyword in keywords:
            other = owners.setdefault(_words(keyword), name)
            if other != name:
                raise ConfigError(
                    f"{where}: keyword {keyword!r} is also a keyword of {other!r}; "
                    "a keyword picks one template."
                )
        key = _key(name)
        templates[key] = Template(
            name=key, description=description, template=template, keywords=keywords
        )
    return templates


def _keywords(raw: object, where: str) -> tuple[str, ...]:
    """Keywords as given, lower-case; checked here so a typo fails at start-up."""
    if not isinstance(raw, list) or not all(isinstance(k, str) and _words(k) for k in raw):
        raise ConfigError(f'{where}: keywords must be a list of words, e.g. ["dog", "cat"].')
    return tuple(k.strip().lower() for k in raw)


def _key(name: str) -> str:
    """The name as stored and looked up: "Household Object" is household."""
    key = re.sub(r"[\s_]+", "-", (name or "").strip().lower())
    return _ALIASES.get(key, key)


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _forms(word: str) -> set[str]:
    """The word and the singulars it may be: "knives" -> knife, "boxes" -> box."""
    forms = {word}
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word.endswith("s") and len(word) > 2:
        forms.add(word[:-1])
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        forms.update({word[:-3] + "f", word[:-3] + "fe"})
    return forms


class TemplateLibrary:
    def __init__(self, templates: dict[str, Template]) -> None:
        self._templates = templates
        # later templates win a shared keyword: a user's file is read after the built-ins
        index: dict[tuple[str, ...], str] = {}
        for template in templates.values():
            for keyword in template.keywords:
                index[_words(keyword)] = template.name
        # by first word, so matching a label looks at a few phrases, not all of them
        self._by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for phrase, name in index.items():
            self._by_first.setdefault(phrase[0], []).append((phrase, name))

    @classmethod
    def builtin(cls) -> TemplateLibrary:
        return cls(_parse(BUILTIN_FILE))

    @classmethod
    def load(cls, user_file: Path | None = None) -> TemplateLibrary:
        templates = _parse(BUILTIN_FILE)
        if user_file is not None:
            own = _parse(user_file)
            templates = {k: v for k, v in templates.items() if k not in own} | own
        return cls(templates)

    def names(self) -> list[str]:
        return sorted(self._templates)

    def get(self, name: str) -> Template:
        key = _key(name)
        if key not in self._templates and key.endswith("s"):
            key = _key(key[:-1])
        if key not in self._templates:
            raise InvalidInput(
                f"There is no object template {name!r}. Templates: {', '.join(self.names())}."
            )
        return self._templates[key]

    def choose(self, label: str) -> Template:
        """The template whose keyword names the object: looked for first in the words
        before a preposition ("cup of tea" is a cup), then in the whole label; the
        last-matching keyword wins ("toy car" is a toy, "apple tree" a plant)."""
        words = _words(label)
        cut = next((i for i, w in enumerate(words) if i and w in _PREPOSITIONS), len(words))
        for part in (words[:cut], words):
            found = self._match(part)
            if found is not None:
                return self._templates[found]
        return self._templates[FALLBACK]

    def _match(self, words: tuple[str, ...]) -> str | None:
        forms = [_forms(w) for w in words]
        best: tuple[int, int, int] | None = None
        found: str | None = None
        for start in range(len(words)):
            for first in forms[start]:
                for phrase, name in self._by_first.get(first, ()):
                    end = start + len(phrase)
                    if end > len(words):
                        continue
                    if not all(p in forms[i] for i, p in enumerate(phrase, start)):
                        continue
                    exact = sum(p == words[i] for i, p in enumerate(phrase, start))
                    score = (end, len(phrase), exact)  # rightmost, longest, then exact
                    if best is None or score > best:
                        best, found = score, name
        return found

    def describe(self) -> str:
        return "\n".join(f"- `{t.name}`: {t.description}" for t in self._templates.values())
