"""LoRA files: diffusers and kohya formats, exact round trips, and loading through diffusers.

A random (non-zero) adapter on the tiny UNet is saved in both formats and read back;
then both files are loaded by diffusers' own `load_lora_weights` (which converts the
kohya keys) and must give the same weights and the same image. The trained LoRA of the
session fixture is checked the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.training.lora_formats import (
    ATELIER_KEY,
    DIFFUSERS_METADATA_KEY,
    LoraMetadata,
    diffusers_state,
    kohya_state,
    load_lora,
    read_header,
    read_metadata,
    save_lora,
)

METADATA = LoraMetadata(
    base_model="tiny-sd",
    rank=4,
    alpha=2.0,
    trigger_word="TOK",
    steps=60,
    dataset_hash="ab" * 32,
    resolution=32,
    target_modules=("to_k", "to_q", "to_v", "to_out.0"),
    name="random",
    created_at="2026-01-01T00:00:00+00:00",
)


@pytest.fixture(scope="module")
def random_adapter(tiny_sd_dir: Path) -> dict:
    """peft state of a rank-4 LoRA with non-zero weights on the tiny UNet."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=2.0,
            init_lora_weights="gaussian",
            target_modules=list(METADATA.target_modules),
        )
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return {k: v.clone() for k, v in get_peft_model_state_dict(unet).items()}


def base_pipeline(model: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe) -> np.ndarray:
    import torch

    return pipe(
        "TOK, a red square",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images[0]


def adapter_of(pipe, adapter_name: str) -> dict:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(pipe.unet, adapter_name=adapter_name)


def assert_same_tensors(left: dict, right: dict) -> None:
    import torch

    assert set(left) == set(right)
    different = [key for key in left if not torch.equal(left[key], right[key])]
    assert not different, different[:3]


def test_both_formats_round_trip_exactly(random_adapter: dict, tmp_path: Path) -> None:
    diffusers_file = save_lora(tmp_path / "r.safetensors", random_adapter, METADATA)
    kohya_file = save_lora(tmp_path / "r.kohya.safetensors", random_adapter, METADATA, "kohya")

    state, metadata, kind = load_lora(diffusers_file)
    assert kind == "diffusers" and metadata == METADATA
    assert_same_tensors(state, diffusers_state(random_adapter))
    assert all(k.startswith("unet.") and ".lora." in k for k in state)

    state, metadata, kind = load_lora(kohya_file)
    assert kind == "kohya" and metadata == METADATA
    assert_same_tensors(state, kohya_state(random_adapter, 2.0))
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert len(downs) == len(random_adapter) // 2
    assert downs[0].startswith("lora_unet_") and "." not in downs[0].removesuffix(
        ".lora_down.weight"
    )
    alphas = {float(v) for k, v in state.items() if k.endswith(".alpha")}
    assert alphas == {2.0}  # the real alpha, not diffusers' default of the rank

    assert not list(tmp_path.glob(".*partial"))


def test_header_is_readable_without_loading_tensors(random_adapter: dict, tmp_path: Path) -> None:
    path = save_lora(tmp_path / "h.safetensors", random_adapter, METADATA)
    header = read_header(path)
    assert ATELIER_KEY in header and DIFFUSERS_METADATA_KEY in header
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "2"
    assert header["modelspec.trigger_phrase"] == "TOK"
    assert read_metadata(path) == METADATA


def test_foreign_files_have_no_atelier_metadata(tiny_lora_dir: Path) -> None:
    (foreign,) = tiny_lora_dir.glob("*.safetensors")
    assert read_metadata(foreign) is None
    assert load_lora(foreign)[2] == "diffusers"


def test_kohya_and_diffusers_files_load_the_same_through_diffusers(
    random_adapter: dict, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    save_lora(tmp_path / "d.safetensors", random_adapter, METADATA)
    save_lora(tmp_path / "k.safetensors", random_adapter, METADATA, "kohya")
    pipe = base_pipeline(str(tiny_sd_dir))
    plain = render(pipe)

    pipe.load_lora_weights(str(tmp_path), weight_name="d.safetensors", adapter_name="d")
    assert pipe.unet.peft_config["d"].lora_alpha == 2.0  # alpha survived the reload
    assert_same_tensors(adapter_of(pipe, "d"), random_adapter)
    with_diffusers_file = render(pipe)
    pipe.unload_lora_weights()

    pipe.load_lora_weights(str(tmp_path), weight_name="k.safetensors", adapter_name="k")
    assert_same_tensors(adapter_of(pipe, "k"), random_adapter)
    with_kohya_file = render(pipe)

    assert not np.array_equal(with_diffusers_file, plain)
    assert np.array_equal(with_kohya_file, with_diffusers_file)


def test_trained_lora_files_agree(trained_lora, tmp_path: Path) -> None:
    result = trained_lora.result
    diffusers_tensors, metadata, _ = load_lora(result.lora_file)
    kohya_tensors, kohya_metadata, kind = load_lora(result.kohya_file)
    assert kind == "kohya" and metadata == kohya_metadata == result.metadata
    assert (metadata.rank, metadata.alpha, metadata.trigger_word) == (4, 8.0, "TOK")
    assert metadata.steps == 60 and metadata.base_model == trained_lora.base_model

    pipe = base_pipeline(trained_lora.base_model)
    pipe.load_lora_weights(str(result.lora_file.parent), weight_name=result.lora_file.name)
    from_diffusers = render(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(result.kohya_file.parent), weight_name=result.kohya_file.name)
    assert np.array_equal(render(pipe), from_diffusers)
