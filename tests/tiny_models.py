"""Tiny random-weight Stable Diffusion models, saved to disk like a real checkpoint.

The local backend is tested through the same `from_pretrained(path)` code users run with
hub ids; only the weights are random and the sizes tiny (~1.7 M parameters, 64x64 images
in a few hundred milliseconds on a CPU). Hub downloads are impossible in tests and CI, so
the CLIP tokenizer is written by hand too: byte-level BPE with just the 256 byte symbols,
their end-of-word forms and a few merges, which is enough to tokenize any prompt.

Import this module only where torch and diffusers are installed (tests use
`pytest.importorskip` before importing it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HIDDEN = 32
MAX_TOKENS = 77
MERGES = ("t h", "th e</w>", "a n", "an d</w>", "i n", "in g</w>", "o n", "e r")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table, which CLIP's BPE uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_tiny_clip_tokenizer(directory: Path) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json; return the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(merge.split()) for merge in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(vocab)


def build_tiny_sd(directory: Path, seed: int = 0) -> Path:
    """Save a tiny SD 1.x-shaped pipeline to `directory`; loadable by the Auto pipelines."""
    directory = Path(directory)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )
    tokenizer_dir = directory / "tokenizer"
    vocab_size = write_tiny_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            layer_norm_eps=1e-5,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    # save_pretrained writes only tokenizer.json with transformers 5: keep the hand-written
    # files beside it so the folder also loads with older tokenizer code.
    write_tiny_clip_tokenizer(tokenizer_dir)
    return directory


def build_tiny_lora(sd_dir: Path, out_file: Path, seed: int = 1, rank: int = 4) -> Path:
    """Write a random (non-zero) UNet LoRA for the tiny model as one .safetensors file."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(Path(sd_dir) / "unet")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        init_lora_weights="gaussian",
        target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )
    torch.manual_seed(seed)
    unet.add_adapter(config)
    # Gaussian init leaves lora_B at zero (a no-op adapter); fill it so the LoRA matters.
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        save_directory=out_file.parent,
        unet_lora_layers=state,
        weight_name=out_file.name,
        unet_lora_adapter_metadata=config.to_dict(),
        safe_serialization=True,
    )
    return out_file
