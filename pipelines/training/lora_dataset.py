"""A LoRA training set from the conversation's images or an uploaded zip, checked and written.

The images a user trains on come from two places: pictures made in the chat (their
prompt is the caption) and pictures they upload, often as a zip. Both become a list of
`DatasetImage`, and `prepare_dataset` turns that list into what both trainers read:

    <folder>/dataset/0001.png, 0001.txt, ...   square crops at the training resolution,
                                               each caption in a .txt of the same name
    <folder>/manifest.json                     per image: origin, licence, source id,
                                               caption and sha256 of the original bytes

The .png + .txt pairs are the layout kohya's scripts and Replicate's LoRA trainers read
captions from, so the same folder, zipped (`dataset_zip`), is what goes to Replicate.
The manifest stays next to the LoRA so where every training image came from, and under
what licence, is never lost.

Every refusal names the image or zip entry at fault. Uploads are treated as hostile: a
size limit before anything is opened, entry names that try to leave the folder
(`../x.png`, `/etc/x.png`, `C:\\x.png`) refused, zip bombs bounded three ways -- the
total uncompressed size, each entry's size (`max_image_bytes`) and each entry's
compression ratio -- each checked from the directory before inflating and counted again
while inflating, a megabyte at a time, so a lying directory cannot make one entry take
more memory than one image may; and images opened through
`core.image_decoding.open_image`, which refuses decompression bombs. Nothing is ever
extracted under an entry's own name.

This is plain Pillow work, but blocking: call it from a worker thread (asyncio.to_thread).

Length: most of it is the hostile-upload handling of zips (names, sizes, ratios,
streaming inflate), which must be read as a whole to be trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from PIL import Image, ImageOps

from core.errors import InvalidInput
from core.image_decoding import open_image

Origin = Literal["generated", "uploaded"]
ORIGINS: tuple[str, ...] = ("generated", "uploaded")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CAPTION_SUFFIX = ".txt"
# Added by macOS's Finder and other tools; not the user's pictures, so not an error.
IGNORED_ENTRY = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$|desktop\.ini$|\._)")
TRIGGER_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,39}$")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DatasetLimits:
    """How much one training set may hold; the defaults suit one user's style LoRA."""

    min_images: int = 2
    max_images: int = 200
    max_upload_bytes: int = 100 * 1024 * 1024  # Replicate's files API takes up to 100 MB
    max_uncompressed_bytes: int = 512 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024  # one entry, inflated
    # Photos in PNG/JPEG/WebP barely compress; bombs reach ~1000:1. Checked once an
    # entry passes `ratio_floor_bytes`, so short captions never trip it.
    max_compression_ratio: int = 100
    ratio_floor_bytes: int = 1024 * 1024
    max_entries: int = 2000
    max_caption_chars: int = 1000


@dataclass(frozen=True)
class DatasetImage:
    """One picture to train on, before preparation."""

    data: bytes
    caption: str | None  # the recorded prompt, a sidecar caption, or None
    origin: Origin
    licence: str | None  # e.g. "CC-BY-4.0", "own work"; None when nobody said
    source_id: str  # an image id in the chat, or "<upload>:<entry>" for zips


@dataclass(frozen=True)
class PreparedImage:
    """One manifest row."""

    file: str  # relative to the dataset folder: "0001.png"
    caption: str
    origin: Origin
    licence: str | None
    source_id: str
    sha256: str  # of the original bytes, before resizing
    original_size: tuple[int, int]


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset folder that has passed every check; what the trainers take."""

    folder: Path  # holds manifest.json and dataset/
    trigger_word: str
    resolution: int
    images: tuple[PreparedImage, ...]
    dataset_hash: str
    created_at: str

    @property
    def images_dir(self) -> Path:
        return self.folder / "dataset"

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def image_paths(self) -> list[Path]:
        return [self.images_dir / image.file for image in self.images]

    def captions(self) -> list[str]:
        return [image.caption for image in self.images]


# --------------------------------------------------------------------------- captions


def check_trigger_word(trigger_word: str) -> str:
    if not isinstance(trigger_word, str) or not TRIGGER_WORD.match(trigger_word):
        raise InvalidInput(
            f"{trigger_word!r} cannot be a trigger word: use one rare word of 2 to 40 "
            "letters, digits, '-' or '_' (e.g. 'TOK' or 'sks_style'), which the LoRA learns "
            "to tie to what the images share."
        )
    return trigger_word


def caption_for(prompt: str | None, trigger_word: str) -> str:
    """The trigger word, then the prompt (on one line); just the trigger word when empty."""
    text = " ".join((prompt or "").split())
    if not text:
        return trigger_word
    if re.match(rf"{re.escape(trigger_word)}\b", text):
        return text  # already starts with it: do not teach "TOK, TOK ..."
    return f"{trigger_word}, {text}"


# --------------------------------------------------------------------------- zip uploads


def images_from_zip(
    data: bytes,
    *,
    upload_name: str = "upload.zip",
    licence: str | None = None,
    limits: DatasetLimits = DatasetLimits(),
) -> list[DatasetImage]:
    """The images of an uploaded zip, with captions from `name.txt` beside `name.png`.

    Entries are read into memory, never extracted by their names. Folders and the
    clutter macOS adds are skipped; anything else that is not an image or a caption is
    refused by name, so the user knows what to remove.
    """
    _check_upload_size(len(data), upload_name, limits)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"{upload_name} is not a zip file that can be read ({exc}).") from None
    with archive:
        entries = _checked_entries(archive, upload_name, limits)
        contents = _read_entries(archive, entries, upload_name, limits)
    captions = {
        _stem(name): _decode_caption(body, name, upload_name)
        for name, body in contents.items()
        if name.lower().endswith(CAPTION_SUFFIX)
    }
    images = []
    for name, body in contents.items():
        if name.lower().endswith(CAPTION_SUFFIX):
            continue
        images.append(
            DatasetImage(
                data=body,
                caption=captions.pop(_stem(name), None),
                origin="uploaded",
                licence=licence,
                source_id=f"{upload_name}:{name}",
            )
        )
    if captions:
        orphan = sorted(captions)[0]
        raise InvalidInput(
            f"{upload_name} has a caption {orphan}.txt without an image of the same name; "
            "name each caption like its image (cat.png and cat.txt)."
        )
    return images


def _check_upload_size(size: int, upload_name: str, limits: DatasetLimits) -> None:
    if size > limits.max_upload_bytes:
        raise InvalidInput(
            f"{upload_name} is {_mb(size)}; the limit for a training upload is "
            f"{_mb(limits.max_upload_bytes)}. Send fewer or smaller images."
        )


def _checked_entries(
    archive: zipfile.ZipFile, upload_name: str, limits: DatasetLimits
) -> list[zipfile.ZipInfo]:
    """The entries worth reading, after refusing unsafe names and oversized totals."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise InvalidInput(
            f"{upload_name} holds {len(infos)} entries; the limit is {limits.max_entries}."
        )
    entries = []
    declared = 0
    for info in infos:
        name = info.filename
        _check_entry_name(name, upload_name)
        if info.is_dir() or IGNORED_ENTRY.search(name):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(
                f"{upload_name} entry {name!r} is a symbolic link; only image files can be used."
            )
        if info.flag_bits & 0x1:
            raise InvalidInput(f"{upload_name} entry {name!r} is encrypted; send it unencrypted.")
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix != CAPTION_SUFFIX:
            raise InvalidInput(
                f"{upload_name} entry {name!r} is not an image (only "
                f"{', '.join(sorted(IMAGE_SUFFIXES))} and .txt captions can be in a training "
                "zip). Remove it and upload again."
            )
        declared += info.file_size
        if declared > limits.max_uncompressed_bytes:
            raise _too_big_unpacked(upload_name, limits)
        _check_entry_size(info, info.file_size, upload_name, limits)
        entries.append(info)
    return entries


def _check_entry_size(
    info: zipfile.ZipInfo, size: int, upload_name: str, limits: DatasetLimits
) -> None:
    """One entry's inflated size (claimed, or counted so far) against its limits."""
    if size > limits.max_image_bytes:
        raise InvalidInput(
            f"{upload_name} entry {info.filename!r} unpacks to more than "
            f"{_mb(limits.max_image_bytes)}, the limit for one image; it was not unpacked."
        )
    ratio_limit = limits.max_compression_ratio * max(info.compress_size, 1)
    if size > limits.ratio_floor_bytes and size > ratio_limit:
        raise InvalidInput(
            f"{upload_name} entry {info.filename!r} compresses more than "
            f"{limits.max_compression_ratio}:1, which pictures do not (a zip bomb, or an "
            "image with almost nothing in it); it was not unpacked."
        )


def _check_entry_name(name: str, upload_name: str) -> None:
    """Refuse names that point outside the archive's own folder, however spelled."""
    normal = name.replace("\\", "/")
    parts = PurePosixPath(normal).parts
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) or ".." in parts or "\x00" in name:
        raise InvalidInput(
            f"{upload_name} entry {name!r} points outside the zip's folder (an absolute path "
            "or '..'); such archives are refused. Zip the images from inside their folder."
        )


def _read_entries(
    archive: zipfile.ZipFile,
    entries: list[zipfile.ZipInfo],
    upload_name: str,
    limits: DatasetLimits,
) -> dict[str, bytes]:
    """Inflate each entry, counting real bytes: the directory's sizes are only claims."""
    contents: dict[str, bytes] = {}
    seen: set[str] = set()
    total = 0
    for info in entries:
        chunks = []
        size = 0
        try:
            with archive.open(info) as stream:
                while chunk := stream.read(1024 * 1024):
                    size += len(chunk)
                    total += len(chunk)
                    if total > limits.max_uncompressed_bytes:
                        raise _too_big_unpacked(upload_name, limits)
                    _check_entry_size(info, size, upload_name, limits)
                    chunks.append(chunk)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise InvalidInput(
                f"{upload_name} entry {info.filename!r} is damaged and cannot be read ({exc})."
            ) from None
        name = info.filename.replace("\\", "/")
        if name.lower() in seen:
            raise InvalidInput(f"{upload_name} holds {name!r} twice.")
        seen.add(name.lower())
        contents[name] = b"".join(chunks)
    return contents


def _too_big_unpacked(upload_name: str, limits: DatasetLimits) -> InvalidInput:
    return InvalidInput(
        f"{upload_name} unpacks to more than {_mb(limits.max_uncompressed_bytes)}, the limit "
        "for a training set; it was not unpacked. Send fewer or smaller images."
    )


def _stem(name: str) -> str:
    path = PurePosixPath(name)
    return str(path.with_suffix("")).lower()


def _decode_caption(body: bytes, name: str, upload_name: str) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(f"{upload_name} caption {name!r} is not UTF-8 text.") from None


# --------------------------------------------------------------------------- preparing


def prepare_dataset(
    images: Sequence[DatasetImage],
    folder: Path,
    *,
    trigger_word: str,
    resolution: int,
    limits: DatasetLimits = DatasetLimits(),
) -> PreparedDataset:
    """Check, square-crop and caption the images; write them and the manifest to `folder`.

    Written to a hidden sibling first and moved into place, so `folder/manifest.json`
    only ever exists for a complete dataset (resuming a training relies on that).
    """
    check_trigger_word(trigger_word)
    _check_resolution(resolution)
    _check_count(len(images), limits)
    if (folder / "manifest.json").exists():
        raise InvalidInput(
            f"{folder} already holds a prepared dataset; load it with load_dataset or "
            "choose another LoRA name."
        )
    rows: list[PreparedImage] = []
    pictures: list[bytes] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(images, start=1):
        label = _label(item, index)
        _check_item(item, label, limits)
        digest = hashlib.sha256(item.data).hexdigest()
        if digest in seen:
            raise InvalidInput(
                f"{label} is the same picture as image {seen[digest]}; each image can be "
                "in a training set once."
            )
        seen[digest] = index
        square, original_size = _square(item.data, resolution, label)
        pictures.append(square)
        rows.append(
            PreparedImage(
                file=f"{index:04d}.png",
                caption=caption_for(item.caption, trigger_word),
                origin=item.origin,
                licence=item.licence,
                source_id=item.source_id,
                sha256=digest,
                original_size=original_size,
            )
        )
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    dataset = PreparedDataset(
        folder=folder,
        trigger_word=trigger_word,
        resolution=resolution,
        images=tuple(rows),
        dataset_hash=_dataset_hash(rows, trigger_word, resolution),
        created_at=created_at,
    )
    _write(dataset, pictures)
    return dataset


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or not 32 <= resolution <= 2048 or resolution % 8:
        raise InvalidInput(
            f"The training resolution must be a multiple of 8 from 32 to 2048 (512 suits SD "
            f"1.x, 1024 SDXL-class models); {resolution!r} was asked."
        )


def _check_count(count: int, limits: DatasetLimits) -> None:
    if count == 0:
        raise InvalidInput(
            "There are no images to train on. Pick images from this chat or upload a zip "
            f"of at least {limits.min_images}."
        )
    if count < limits.min_images:
        raise InvalidInput(
            f"A LoRA needs at least {limits.min_images} images to learn what they share; "
            f"{count} was given. 10 to 30 varied images work well."
        )
    if count > limits.max_images:
        raise InvalidInput(
            f"{count} images were given; a training set can hold at most {limits.max_images}."
        )


def _label(item: DatasetImage, index: int) -> str:
    return f"image {index} ({item.source_id})" if item.source_id else f"image {index}"


def _check_item(item: DatasetImage, label: str, limits: DatasetLimits) -> None:
    if item.origin not in ORIGINS:
        raise InvalidInput(f"{label}: origin must be one of {', '.join(ORIGINS)}.")
    if not isinstance(item.source_id, str) or not item.source_id.strip():
        raise InvalidInput(f"{label} has no source id; every image must say where it is from.")
    if item.caption is not None and len(item.caption) > limits.max_caption_chars:
        raise InvalidInput(
            f"The caption of {label} has {len(item.caption)} characters; the limit is "
            f"{limits.max_caption_chars}."
        )
    if len(item.data) > limits.max_upload_bytes:
        raise InvalidInput(
            f"{label} is {_mb(len(item.data))}; the limit is {_mb(limits.max_upload_bytes)}."
        )


def _square(data: bytes, resolution: int, label: str) -> tuple[bytes, tuple[int, int]]:
    """Upright RGB, shorter side scaled to `resolution`, centre-cropped square, as PNG.

    Transparency is laid on white rather than dropped (dropping leaves whatever colour
    hides under transparent pixels). An image with a shorter side below half the
    resolution is refused: blown up 2x or more it would teach the LoRA blur.
    """
    try:
        opened = open_image(data)
    except InvalidInput:
        raise InvalidInput(f"{label} is not an image that can be read.") from None
    with opened:
        image = ImageOps.exif_transpose(opened)
        original_size = image.size
        if min(image.size) * 2 < resolution:
            raise InvalidInput(
                f"{label} is {image.width}x{image.height}, too small to train at "
                f"{resolution}x{resolution} (its shorter side must be at least "
                f"{resolution // 2}). Use a larger image or a lower resolution."
            )
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
        square = ImageOps.fit(image, (resolution, resolution), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    square.save(out, format="PNG")
    return out.getvalue(), original_size


def _dataset_hash(rows: Sequence[PreparedImage], trigger_word: str, resolution: int) -> str:
    """Identifies what was trained on: the original pictures, captions and resolution."""
    canonical = json.dumps(
        {
            "trigger_word": trigger_word,
            "resolution": resolution,
            "images": [[row.sha256, row.caption] for row in rows],
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _manifest(dataset: PreparedDataset) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "trigger_word": dataset.trigger_word,
        "resolution": dataset.resolution,
        "dataset_hash": dataset.dataset_hash,
        "created_at": dataset.created_at,
        "images": [asdict(row) for row in dataset.images],
    }


def _write(dataset: PreparedDataset, pictures: list[bytes]) -> None:
    folder = dataset.folder
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".dataset.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for row, picture in zip(dataset.images, pictures, strict=True):
        (staging / row.file).write_bytes(picture)
        (staging / row.file).with_suffix(CAPTION_SUFFIX).write_text(row.caption, encoding="utf-8")
    if dataset.images_dir.exists():
        shutil.rmtree(dataset.images_dir)  # a leftover of a run that died before its manifest
    os.replace(staging, dataset.images_dir)
    partial = folder / ".manifest.json.partial"
    partial.write_text(json.dumps(_manifest(dataset), indent=2), encoding="utf-8")
    os.replace(partial, dataset.manifest_path)


def load_dataset(folder: Path) -> PreparedDataset:
    """A dataset `prepare_dataset` wrote earlier (to resume a training), checked intact."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        rows = tuple(
            PreparedImage(**{**row, "original_size": tuple(row["original_size"])})
            for row in manifest["images"]
        )
        dataset = PreparedDataset(
            folder=folder,
            trigger_word=manifest["trigger_word"],
            resolution=int(manifest["resolution"]),
            images=rows,
            dataset_hash=manifest["dataset_hash"],
            created_at=manifest["created_at"],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"There is no readable training dataset in {folder} ({exc}).") from None
    missing = [p.name for p in dataset.image_paths() if not p.is_file()]
    if missing:
        raise InvalidInput(f"The dataset in {folder} is missing {', '.join(missing[:5])}.")
    return dataset


def dataset_zip(dataset: PreparedDataset) -> bytes:
    """The prepared images and .txt captions as one zip (what Replicate's trainers take).

    Entries carry a fixed timestamp, so the same dataset always gives the same bytes
    (writestr would stamp the current time: two zips of one dataset made a second apart
    differed, and an upload could not be recognised as the same dataset).
    """
    out = io.BytesIO()

    def entry(name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
        info.external_attr = 0o600 << 16  # as writestr gives a name: rw for the owner
        return info

    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for row, path in zip(dataset.images, dataset.image_paths(), strict=True):
            archive.writestr(entry(row.file), path.read_bytes())
            caption = str(PurePosixPath(row.file).with_suffix(CAPTION_SUFFIX))
            archive.writestr(entry(caption), row.caption)
    return out.getvalue()


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
