"""Preparing LoRA training sets: from chat images and zip uploads, and every refusal.

Real Pillow and zipfile work on small pictures; assertions read the files and the
manifest written to disk, and the messages a user would see.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InvalidInput
from pipelines.training.lora_dataset import (
    DatasetImage,
    DatasetLimits,
    caption_for,
    dataset_zip,
    images_from_zip,
    load_dataset,
    prepare_dataset,
)
from pipelines.training.lora_formats import LoraLayout, check_lora_name
from tests.lora_fixtures import dataset_images, picture

REPO = Path(__file__).resolve().parents[1]


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)  # kept verbatim, even names zipfile would clean up
            info.compress_type = compression
            archive.writestr(info, data)
    return out.getvalue()


def prepare(images: list[DatasetImage], folder: Path, **options: object):
    settings: dict[str, object] = {"trigger_word": "TOK", "resolution": 32, **options}
    return prepare_dataset(images, folder, **settings)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- preparing


def test_chat_images_become_square_crops_with_captions_and_a_manifest(tmp_path: Path) -> None:
    wide = Image.new("RGB", (96, 64), (255, 0, 0))  # red | green | blue thirds
    wide.paste((0, 255, 0), (32, 0, 64, 64))
    wide.paste((0, 0, 255), (64, 0, 96, 64))
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    images = [
        DatasetImage(buffer.getvalue(), "a  striped\nflag", "generated", None, "img_1"),
        DatasetImage(picture(2, (40, 40)), "", "uploaded", "CC-BY-4.0", "upload.zip:b.png"),
        DatasetImage(picture(3), None, "uploaded", None, "upload.zip:c.png"),
    ]
    dataset = prepare(images, tmp_path / "style")

    assert [row.file for row in dataset.images] == ["0001.png", "0002.png", "0003.png"]
    assert dataset.captions() == ["TOK, a striped flag", "TOK", "TOK"]
    first = Image.open(dataset.images_dir / "0001.png")
    assert first.size == (32, 32) and first.mode == "RGB"
    # Scaled to 48x32 and centre-cropped: the middle (green) third fills the middle.
    assert first.getpixel((16, 16)) == (0, 255, 0)
    assert first.getpixel((0, 16))[0] > 200 and first.getpixel((31, 16))[2] > 200
    assert (dataset.images_dir / "0001.txt").read_text() == "TOK, a striped flag"

    manifest = json.loads(dataset.manifest_path.read_text())
    assert manifest["trigger_word"] == "TOK" and manifest["resolution"] == 32
    assert manifest["dataset_hash"] == dataset.dataset_hash
    row = manifest["images"][1]
    assert row["origin"] == "uploaded" and row["licence"] == "CC-BY-4.0"
    assert row["source_id"] == "upload.zip:b.png" and row["caption"] == "TOK"
    import hashlib

    assert row["sha256"] == hashlib.sha256(images[1].data).hexdigest()
    assert manifest["images"][0]["original_size"] == [96, 64]
    assert load_dataset(tmp_path / "style") == dataset


def test_dataset_hash_follows_content_only(tmp_path: Path) -> None:
    one = prepare(dataset_images(3), tmp_path / "a")
    same = prepare(dataset_images(3), tmp_path / "b")
    other = prepare(dataset_images(3, ["x", "y", "z"]), tmp_path / "c")
    assert one.dataset_hash == same.dataset_hash != other.dataset_hash


def test_caption_rules() -> None:
    assert caption_for("a cat", "TOK") == "TOK, a cat"
    assert caption_for("  ", "TOK") == "TOK"
    assert caption_for(None, "sks") == "sks"
    assert caption_for("TOK riding a bike", "TOK") == "TOK riding a bike"
    assert caption_for("TOKYO at night", "TOK") == "TOK, TOKYO at night"


def test_transparency_is_laid_on_white(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    clear.paste((10, 20, 30, 255), (0, 0, 16, 32))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    images = [DatasetImage(buffer.getvalue(), None, "uploaded", None, "a"), *dataset_images(1)]
    dataset = prepare(images, tmp_path / "t")
    first = Image.open(dataset.images_dir / "0001.png")
    assert first.getpixel((30, 5)) == (255, 255, 255)
    assert first.getpixel((2, 5)) == (10, 20, 30)


def test_zip_upload_with_captions_folders_and_mac_clutter(tmp_path: Path) -> None:
    data = zipped(
        {
            "set/": b"",
            "set/cat.png": picture(1),
            "set/cat.txt": b"a cat on a mat\n",
            "set/dog.jpg": picture(2, fmt="JPEG"),
            "__MACOSX/set/._cat.png": b"\x00\x05\x16\x07resource fork",
            "set/.DS_Store": b"\x00\x00\x00\x01Bud1",
        }
    )
    images = images_from_zip(data, upload_name="pets.zip", licence="own work")
    assert [(i.source_id, i.caption, i.origin, i.licence) for i in images] == [
        ("pets.zip:set/cat.png", "a cat on a mat\n", "uploaded", "own work"),
        ("pets.zip:set/dog.jpg", None, "uploaded", "own work"),
    ]
    dataset = prepare(images, tmp_path / "pets")
    assert dataset.captions() == ["TOK, a cat on a mat", "TOK"]


def test_dataset_zip_is_the_prepared_images_and_captions(tmp_path: Path) -> None:
    dataset = prepare(dataset_images(2), tmp_path / "z")
    with zipfile.ZipFile(io.BytesIO(dataset_zip(dataset))) as archive:
        assert archive.namelist() == ["0001.png", "0001.txt", "0002.png", "0002.txt"]
        assert archive.read("0002.txt").decode() == "TOK, a red square number 1"
        assert archive.read("0001.png") == (dataset.images_dir / "0001.png").read_bytes()
        # Fixed timestamps: the same dataset gives the same bytes at any time (CI once
        # compared two zips made across a second boundary).
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert dataset_zip(dataset) == dataset_zip(dataset)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("count", "message"),
    [(0, "no images to train on"), (1, "at least 2 images.*1 was given")],
)
def test_too_few_images_are_refused(tmp_path: Path, count: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        prepare(dataset_images(count) if count else [], tmp_path / "few")
    assert not (tmp_path / "few" / "manifest.json").exists()


def test_a_non_image_in_the_zip_is_named() -> None:
    data = zipped({"a.png": picture(1), "notes/readme.pdf": b"%PDF-1.4"})
    with pytest.raises(InvalidInput, match=r"entry 'notes/readme.pdf' is not an image"):
        images_from_zip(data, upload_name="set.zip")


def test_a_file_posing_as_an_image_is_named(tmp_path: Path) -> None:
    images = images_from_zip(zipped({"a.png": picture(1), "b.png": b"not really a png"}))
    with pytest.raises(InvalidInput, match=r"image 2 \(upload.zip:b.png\) is not an image"):
        prepare(images, tmp_path / "posing")


@pytest.mark.parametrize(
    "name", ["../x.png", "/etc/x.png", "ok/../../x.png", "..\\x.png", "C:/x.png", "C:\\x.png"]
)
def test_zip_entries_leaving_the_folder_are_refused(name: str) -> None:
    data = zipped({"a.png": picture(1), name: picture(2)})
    with pytest.raises(InvalidInput, match="points outside the zip's folder") as caught:
        images_from_zip(data)
    assert repr(name) in str(caught.value)


def test_over_large_upload_is_refused_with_the_limit() -> None:
    data = zipped({"a.png": picture(1), "b.png": picture(2)}, zipfile.ZIP_STORED)
    limits = DatasetLimits(max_upload_bytes=1024 * 1024 // 2)
    with pytest.raises(InvalidInput, match=r"limit for a training upload is 0.5 MB"):
        images_from_zip(data + b"\x00" * (1024 * 1024), limits=limits)


def test_zip_bomb_is_stopped_by_the_unpacked_size() -> None:
    bomb = zipped({"a.png": picture(1), "b.png": b"\x00" * (8 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024  # it really is a small upload
    limits = DatasetLimits(max_uncompressed_bytes=2 * 1024 * 1024)
    with pytest.raises(InvalidInput, match=r"unpacks to more than 2.0 MB"):
        images_from_zip(bomb, limits=limits)


def test_other_bad_uploads_are_explained(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a zip file"):
        images_from_zip(b"PK\x03\x04 but not really", upload_name="x.zip")
    with pytest.raises(InvalidInput, match="caption b.txt without an image"):
        images_from_zip(zipped({"a.png": picture(1), "b.txt": b"lonely"}))
    twice = [*dataset_images(2), DatasetImage(picture(0), "again", "generated", None, "img_9")]
    with pytest.raises(InvalidInput, match=r"image 3 \(img_9\) is the same picture as image 1"):
        prepare(twice, tmp_path / "twice")
    small = [DatasetImage(picture(1, (20, 20)), None, "uploaded", None, "tiny"), *dataset_images(1)]
    with pytest.raises(InvalidInput, match=r"tiny\) is 20x20, too small to train at 64x64"):
        prepare(small, tmp_path / "small", resolution=64)
    with pytest.raises(InvalidInput, match="cannot be a trigger word"):
        prepare(dataset_images(2), tmp_path / "t", trigger_word="two words")
    with pytest.raises(InvalidInput, match="multiple of 8 from 32 to 2048"):
        prepare(dataset_images(2), tmp_path / "r", resolution=100)
    prepare(dataset_images(2), tmp_path / "done")
    with pytest.raises(InvalidInput, match="already holds a prepared dataset"):
        prepare(dataset_images(2), tmp_path / "done")


# --------------------------------------------------------------------------- LoRA names


def test_lora_name_must_be_valid_and_free(tmp_path: Path) -> None:
    lora_dir = tmp_path / "loras"
    assert check_lora_name("my-style_2", lora_dir) == LoraLayout(lora_dir, "my-style_2")
    for bad in ("", "../x", "a/b", "a\\b", ".hidden", "has space", "x:0.8", "a,b", "é", "x" * 65):
        with pytest.raises(InvalidInput, match="cannot be a LoRA name"):
            check_lora_name(bad, lora_dir)
    lora_dir.mkdir()
    (lora_dir / "Pixel-Art.safetensors").write_bytes(b"")
    (lora_dir / "half-done").mkdir()  # an unfinished training's folder
    for taken in ("pixel-art", "Pixel-Art", "half-done"):
        with pytest.raises(InvalidInput, match=f"already a LoRA.* named '{taken}'"):
            check_lora_name(taken, lora_dir)
    assert check_lora_name("pixel", lora_dir).weights == lora_dir / "pixel.safetensors"


def test_importing_the_lora_modules_does_not_import_torch() -> None:
    code = (
        "import pipelines.training.lora_dataset, pipelines.training.lora_formats, "
        "pipelines.training.lora_training, "
        "pipelines.training.lora_checkpoints, pipelines.training.replicate_training, sys; "
        "heavy = {'torch', 'diffusers', 'transformers', 'peft'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
