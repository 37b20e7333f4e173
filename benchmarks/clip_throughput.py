"""CLIP scoring throughput: one batched pass against one image per pass, same images.

Curation scores every candidate against the prompt; this measures what batching the
vision tower buys. Both paths run in the same process on the same images (noise, 512x512,
as generated candidates are), through `pipelines.scoring.clip_scoring` loaded from disk with
`from_pretrained` as in real use; the prompt is encoded once per call in both, so the
only difference is the batching. Each path is warmed up once, then timed `--repeats`
times, interleaved; the best run of each is reported as images/s.

By default the model has openai/clip-vit-base-patch32's architecture (vision: ViT-B/32,
width 768, 12 layers, patch 32, 224x224; text: width 512, 12 layers; projection 512;
~151 M parameters) with random weights, built from a hand-written config: no download,
and speed does not depend on the weights' values. `--tiny` uses the 32-wide test model.

    .venv/bin/python benchmarks/clip_throughput.py [--images 32] [--device auto]
    .venv/bin/python benchmarks/clip_throughput.py --tiny

Target: batched >= 3x the images/s of one at a time. Exit status 1 when it is missed.
Where it can be met is a GPU, where one image leaves most of the device idle. On a small
CPU the full-size model is compute-bound either way (measured on 2 cores: ~1.5x); with
`--tiny` the model is almost free and PIL preprocessing, the same in both paths
(~2.5 ms a 512x512 image), dominates. The preprocessing time is reported apart, with an
estimate of the model-only ratio, so the figures say where the time goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_RATIO = 3.0
PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"


def build_full_size_clip(folder: Path) -> Path:
    """openai/clip-vit-base-patch32's configuration with random weights, saved to `folder`."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from tests.tiny_clip import CLIP_MEAN, CLIP_STD
    from tests.tiny_models import write_tiny_clip_tokenizer

    # The tokenizer stays tiny (its ids fit the full vocabulary); speed does not depend on it.
    write_tiny_clip_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    preprocessor = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "size": 224,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")
    return folder


def noise_images(count: int, size: int = 512) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)
    ]


def timed(run: Callable[[], list[float]], results: list[list[float]]) -> float:
    started = time.perf_counter()
    results.append(run())  # returns Python floats: the device has finished
    return time.perf_counter() - started


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from pipelines.scoring.clip_scoring import get_scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    scorer = get_scorer(str(folder), device=args.device)
    loaded = time.perf_counter() - started
    scorer.batch_size = args.batch_size
    images = noise_images(args.images)

    batched_results: list[list[float]] = []
    single_results: list[list[float]] = []
    timed(lambda: scorer.score(images[:2], PROMPT), [])  # warm-up both paths
    timed(lambda: scorer.score_one_at_a_time(images[:2], PROMPT), [])
    batched, single = [], []
    for _ in range(args.repeats):
        batched.append(timed(lambda: scorer.score(images, PROMPT), batched_results))
        single.append(timed(lambda: scorer.score_one_at_a_time(images, PROMPT), single_results))
    # Preprocessing (PIL resize, crop, normalise) costs the same in both paths; timing it
    # apart shows how much of the gap the model alone accounts for.
    preprocess = min(
        timed(lambda: scorer._image_processor(images=images, return_tensors="pt"), [])
        for _ in range(args.repeats)
    )
    difference = float(np.max(np.abs(np.array(batched_results) - np.array(single_results))))
    model = scorer._model  # private, to report its size
    return {
        "model": "tiny (32-wide towers)" if args.tiny else "ViT-B/32 architecture, random",
        "params_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": scorer.plan.device,
        "dtype": scorer.plan.dtype,
        "gpu": torch.cuda.get_device_name() if scorer.plan.device.startswith("cuda") else None,
        "torch_threads": torch.get_num_threads(),
        "images": args.images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "load_s": round(loaded, 3),
        "batched_best_s": round(min(batched), 4),
        "single_best_s": round(min(single), 4),
        "batched_images_per_s": round(args.images / min(batched), 2),
        "single_images_per_s": round(args.images / min(single), 2),
        "ratio": round(min(single) / min(batched), 2),
        "preprocess_ms_per_image": round(preprocess / args.images * 1000, 2),
        "model_only_ratio_estimate": round(
            (min(single) - preprocess) / max(min(batched) - preprocess, 1e-9), 2
        ),
        "max_abs_difference": difference,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the 32-wide test model")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        folder = Path(tmp) / "clip"
        started = time.perf_counter()
        if args.tiny:
            from tests.tiny_clip import build_tiny_clip

            build_tiny_clip(folder)
        else:
            build_full_size_clip(folder)
        built = time.perf_counter() - started
        figures = measure(args, folder)
    figures["build_and_save_s"] = round(built, 2)
    print(json.dumps(figures, indent=2))
    ok = figures["ratio"] >= TARGET_RATIO
    print(
        f"{figures['model']} on {figures['device']} ({figures['dtype']}, "
        f"{figures['torch_threads']} threads), {args.images} images of 512x512: batched "
        f"{figures['batched_images_per_s']} images/s vs one at a time "
        f"{figures['single_images_per_s']} images/s → {figures['ratio']}x "
        f"{'PASS' if ok else 'FAIL'} (≥ {TARGET_RATIO:g}x); preprocessing "
        f"{figures['preprocess_ms_per_image']} ms/image in both, model alone "
        f"≈{figures['model_only_ratio_estimate']}x"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
