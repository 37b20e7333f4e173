"""Text–image agreement: how well each candidate image matches the prompt, by CLIP.

Curation makes N candidates and keeps the best; CLIP's cosine similarity between an
image's embedding and the prompt's embedding is the part of the score that knows what
was asked for. The model (openai/clip-vit-base-patch32 by default, or any CLIPModel id
or folder) is loaded lazily, once per process and device, and shared between requests
and threads: loading takes seconds, scoring a batch milliseconds.

All images of a request go through the vision tower in batches (16 at a time); one
image per forward pass gives the same numbers but leaves most of the hardware idle
(`score_one_at_a_time` is kept as the benchmark's baseline and as a check on batching).
The prompt is encoded once per call and truncated to the model's 77 tokens rather than
refused: long prompts are normal, and CLIP only ever sees their start.

Images are preprocessed by transformers' PIL image processor whatever else is installed:
CLIP was trained on PIL-bicubic resizes, the torchvision backend gives slightly different
numbers, and a broken torchvision (a CUDA build on a CPU machine) cannot break scoring.
Preprocessing costs a few milliseconds an image, small beside the model.

torch and transformers are imported inside functions: importing this module must stay
free for people who only use hosted backends.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from core.errors import BackendNotConfigured, InvalidInput
from core.image_decoding import open_image
from pipelines.devices import DevicePlan, pick_dtype, resolve_device
from pipelines.images.pipeline_cache import is_local_path

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
BATCH_SIZE = 16
ImageInput = Image.Image | bytes

# to_unit: cosine similarities of real CLIP models sit in a narrow band; these bounds
# spread it over 0..1 (see to_unit).
UNIT_LOW = 0.10
UNIT_SPAN = 0.25

# How many times each (model id, device) was loaded in this process; tests assert on it.
LOADS: Counter[tuple[str, str]] = Counter()
_SCORERS: dict[tuple[str, str], ClipScorer] = {}
_LOAD_LOCK = threading.Lock()


class ClipScorer:
    """One loaded CLIP model with its tokenizer and image processor, ready to score.

    Safe to share between threads: the forward passes change no state, and the one
    stateful part (a fast tokenizer's truncation settings) is behind a lock.
    """

    def __init__(
        self,
        model_id: str,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        plan: DevicePlan,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.model_id = model_id
        self.plan = plan
        self.batch_size = batch_size
        self._model = model
        self._tokenizer = tokenizer
        self._image_processor = image_processor
        self._tokenizer_lock = threading.Lock()
        text_positions = model.config.text_config.max_position_embeddings
        self.max_tokens = min(int(tokenizer.model_max_length), int(text_positions))

    def score(self, images: Sequence[ImageInput], text: str) -> list[float]:
        """Cosine similarity of each image with `text`, in [-1, 1], in the images' order."""
        return self._score(images, text, self.batch_size)

    def score_one_at_a_time(self, images: Sequence[ImageInput], text: str) -> list[float]:
        """The same numbers as `score`, one image per forward pass (a baseline, not for use)."""
        return self._score(images, text, 1)

    def rank_captions(self, image: ImageInput, captions: Sequence[str]) -> list[float]:
        """Cosine similarity of one image with each caption, in the captions' order."""
        if isinstance(captions, str):
            raise TypeError("captions must be a sequence of strings, not one string.")
        picture = _as_rgb(image)
        for caption in captions:
            _check_text(caption)
        if not captions:
            return []
        image_vector = self._image_embeddings([picture])[0]
        similarities: list[float] = []
        for start in range(0, len(captions), self.batch_size):
            text_vectors = self._text_embeddings(captions[start : start + self.batch_size])
            similarities.extend(_cosines(text_vectors, image_vector))
        return similarities

    def embed_images(self, images: Sequence[ImageInput]) -> Any:
        """Unit-length float32 embeddings (a CPU tensor, one row per image, in order).

        Images go through the vision tower `batch_size` at a time, as in `score`.
        """
        import torch

        pictures = [_as_rgb(image) for image in images]
        if not pictures:
            return torch.empty((0, int(self._model.config.projection_dim)))
        return torch.cat(
            [
                self._image_embeddings(pictures[start : start + self.batch_size])
                for start in range(0, len(pictures), self.batch_size)
            ]
        )

    def embed_text(self, text: str) -> Any:
        """The unit-length float32 embedding of one text (a 1-D CPU tensor), cut to the model."""
        _check_text(text)
        return self._text_embeddings([text])[0]

    def _score(self, images: Sequence[ImageInput], text: str, batch_size: int) -> list[float]:
        # Decode everything first, so a bad input fails before any compute is spent.
        pictures = [_as_rgb(image) for image in images]
        _check_text(text)
        if not pictures:
            return []
        text_vector = self._text_embeddings([text])[0]
        similarities: list[float] = []
        for start in range(0, len(pictures), batch_size):
            image_vectors = self._image_embeddings(pictures[start : start + batch_size])
            similarities.extend(_cosines(image_vectors, text_vector))
        return similarities

    def _image_embeddings(self, pictures: list[Image.Image]) -> Any:
        """Unit-length float32 image embeddings, one row per picture."""
        import torch

        pixels = self._image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=self.plan.device, dtype=self.plan.torch_dtype)
        with torch.inference_mode():
            features = self._model.get_image_features(pixel_values=pixels)
        return _unit_rows(features)

    def _text_embeddings(self, texts: Sequence[str]) -> Any:
        """Unit-length float32 text embeddings; texts longer than the model are cut."""
        import torch

        with self._tokenizer_lock:
            tokens = self._tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
        inputs = {
            name: tokens[name].to(self.plan.device)
            for name in ("input_ids", "attention_mask")
            if name in tokens
        }
        with torch.inference_mode():
            features = self._model.get_text_features(**inputs)
        return _unit_rows(features)


def get_scorer(model_id: str = DEFAULT_MODEL, device: str = "auto") -> ClipScorer:
    """The process's scorer for this model on this device, loaded on first use.

    Scorers are kept for the life of the process: an app uses one CLIP model, and
    reloading it would cost more than all the scoring it does.

    Raises BackendNotConfigured without torch/transformers, InvalidInput when the model
    cannot be loaded (its message says what to check), ConfigError for a missing device.
    """
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise BackendNotConfigured(
                "Text–image scoring needs the local extra: pip install 'atelier[local]'"
            )
    key = (model_id, resolve_device(device))
    scorer = _SCORERS.get(key)
    if scorer is not None:
        return scorer
    with _LOAD_LOCK:
        # Another thread may have loaded it while this one waited for the lock.
        scorer = _SCORERS.get(key)
        if scorer is None:
            scorer = _load(model_id, key[1])
            _SCORERS[key] = scorer
            LOADS[key] += 1
    return scorer


def loads(model_id: str | None = None) -> int:
    """How many times a model (or any model) was loaded in this process."""
    return sum(n for (loaded, _), n in LOADS.items() if model_id in (None, loaded))


def to_unit(similarity: float) -> float:
    """Map a cosine similarity to 0..1, to be averaged with the other criteria's scores.

    Real CLIP similarities between an image and a prompt fall in a narrow band: about
    0.10-0.20 for an unrelated pair and 0.25-0.35 for a good match (ViT-B/32; CLIPScore
    rescales the same number by 2.5). A linear map of 0.10..0.35 onto 0..1, clamped,
    gives the other criteria's 0..1 scores something comparable to average with.
    Random-weight test models give other numbers; any of them still lands in 0..1.
    """
    if not math.isfinite(similarity):
        raise ValueError(f"A cosine similarity must be a finite number, not {similarity!r}.")
    return min(1.0, max(0.0, (similarity - UNIT_LOW) / UNIT_SPAN))


def _load(model_id: str, device: str) -> ClipScorer:
    """Load model, tokenizer and image processor; cache first, then the Hub unless offline.

    Trying the local Hugging Face cache first means a model downloaded once loads with no
    network call at all (and no minute of retries on a machine without DNS); the Hub is
    asked only when the files are not there yet and HF_HUB_OFFLINE is not set.
    """
    folder = Path(model_id).expanduser()
    if is_local_path(model_id) and not folder.is_dir():
        raise InvalidInput(
            f"The CLIP model folder {model_id} does not exist; check ATELIER_CLIP_MODEL."
        )
    plan = DevicePlan(device=device, dtype=pick_dtype(device))
    source = str(folder) if folder.is_dir() else model_id
    try:
        parts = _load_parts(source, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if folder.is_dir():
            raise InvalidInput(
                f"Could not load the CLIP model in {folder.resolve()} ({_first_line(exc)}); "
                "it needs a CLIPModel saved with save_pretrained: config.json, weights, "
                "tokenizer files and preprocessor_config.json."
            ) from exc
        if _offline():
            raise InvalidInput(
                f"The CLIP model {model_id!r} is not in the local Hugging Face cache and "
                "HF_HUB_OFFLINE is set; download it once with network access, or set "
                "ATELIER_CLIP_MODEL to a folder holding the model."
            ) from exc
        try:
            parts = _load_parts(source, local_files_only=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc2:
            raise InvalidInput(
                f"Could not download or load the CLIP model {model_id!r} from the Hugging "
                f"Face Hub ({_first_line(exc2)}); check the id (ATELIER_CLIP_MODEL), your "
                "network, or HF_TOKEN for gated models."
            ) from exc2
    model, tokenizer, image_processor = parts
    model = model.to(device=plan.device, dtype=plan.torch_dtype).eval()
    return ClipScorer(model_id, model, tokenizer, image_processor, plan)


def _load_parts(source: str, local_files_only: bool) -> tuple[Any, Any, Any]:
    """The model first: it is the part most likely to be missing, so failures come fast."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(source, local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    # transformers 5 picks a torchvision backend when one is importable and names the
    # PIL one `backend="pil"`; 4.x calls its PIL/numpy processor the slow one.
    if int(transformers.__version__.split(".")[0]) >= 5:
        pil_backend = {"backend": "pil"}
    else:
        pil_backend = {"use_fast": False}
    image_processor = AutoImageProcessor.from_pretrained(
        source, local_files_only=local_files_only, **pil_backend
    )
    return model, tokenizer, image_processor


def _as_rgb(image: ImageInput) -> Image.Image:
    """A PIL image in RGB; bytes are decoded with the decompression-bomb guard."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = open_image(bytes(image))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image or image bytes, got {type(image).__name__}.")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("Text–image scoring needs a non-empty text to compare images with.")


def _unit_rows(features: Any) -> Any:
    """Rows scaled to length 1, in float32 on the CPU (half precision is only for the model).

    transformers 5 returns an output object whose `pooler_output` holds the projected
    embeddings; 4.x returns the tensor itself.
    """
    import torch

    if not isinstance(features, torch.Tensor):
        features = features.pooler_output
    features = features.float().cpu()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _cosines(rows: Any, vector: Any) -> list[float]:
    """Dot products of unit rows with a unit vector, clamped against rounding past ±1."""
    return [float(value) for value in (rows @ vector).clamp(-1.0, 1.0)]


def _offline() -> bool:
    """HF_HUB_OFFLINE read now, not when huggingface_hub was imported."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
