"""A tiny random-weight CLIP model, saved to disk like the one users download.

Text–image scoring is tested through the same `from_pretrained(path)` code that loads
openai/clip-vit-base-patch32; only the weights are random and the towers 32 wide
(~54 k parameters, built and saved in ~0.1 s). The folder has the hub repo's layout: the
model's config and weights, the hand-written byte-level tokenizer of `tests.tiny_models`,
and a preprocessor_config.json in the repo's legacy form (`feature_extractor_type`,
integer sizes), so the loader meets the files real users have.

Import this module only where torch and transformers are installed (the fixture in
`tests.clip_fixtures` skips otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from tests.tiny_models import write_tiny_clip_tokenizer

WIDTH = 32
IMAGE_SIZE = 32
MAX_TOKENS = 77
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """Save a tiny CLIPModel with tokenizer and image processor files; return the folder."""
    directory = Path(directory)
    vocab_size = write_tiny_clip_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": WIDTH,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": MAX_TOKENS,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": WIDTH,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    preprocessor = {
        "crop_size": IMAGE_SIZE,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "size": IMAGE_SIZE,
    }
    (directory / "preprocessor_config.json").write_text(
        json.dumps(preprocessor, indent=2), encoding="utf-8"
    )
    return directory
