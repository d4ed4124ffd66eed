"""LoRA adapters on the policy, and their checkpoints in the diffusers and peft formats.

A checkpoint folder holds the same LoRA weights twice, both safetensors:

- ``pytorch_lora_weights.safetensors``: diffusers' LoRA format (keys ``transformer.*``, the
  adapter config in the header), for ``pipe.load_lora_weights(folder)`` or
  ``transformer.load_lora_adapter(folder, weight_name=..., prefix="transformer")``;
- ``adapter_model.safetensors`` + ``adapter_config.json``: peft's format, for
  ``peft.PeftModel.from_pretrained(transformer, folder)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import safetensors.torch
from accelerate.utils import extract_model_from_parallel
from diffusers import CogVideoXPipeline, WanPipeline
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch.distributed.tensor import DTensor

from .dpo_step import model_family
from .recipe import LORA_ALPHA, LORA_RANK, LORA_TARGET_MODULES


DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
# Key prefixes: diffusers names the pipeline component, peft the PeftModel wrapper.
DIFFUSERS_PREFIX = "transformer."
PEFT_PREFIX = "base_model.model."

PIPELINES = {"cogvideox": CogVideoXPipeline, "wan": WanPipeline}


def add_lora_adapter(transformer, *, rank: int = LORA_RANK, alpha: float = LORA_ALPHA,
                     target_modules=LORA_TARGET_MODULES, dropout: float = 0.0,
                     init_lora_weights: Union[bool, str] = True) -> LoraConfig:
    """Freeze ``transformer`` and give it a trainable LoRA adapter (diffusers ``add_adapter``).

    With the default ``init_lora_weights=True`` the B matrices start at zero, so the policy
    starts equal to the reference.
    """
    model_family(transformer)  # rejects models vgpa.training does not drive
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        init_lora_weights=init_lora_weights)
    transformer.requires_grad_(False)
    transformer.add_adapter(config)
    return config


def _lora_state(transformer, adapter_name: str):
    """(config, state dict of whole tensors with keys relative to the diffusers transformer)."""
    module = extract_model_from_parallel(transformer)
    config = getattr(module, "peft_config", {}).get(adapter_name)
    if config is None:
        raise ValueError(f"{type(module).__name__} has no LoRA adapter named {adapter_name!r}")
    state = get_peft_model_state_dict(module, adapter_name=adapter_name)
    if isinstance(module, PeftModel):
        state = {key.removeprefix(PEFT_PREFIX): value for key, value in state.items()}
    # Under FSDP2 each weight is a DTensor holding this process's shard; full_tensor() gathers
    # it from all processes (in the same key order everywhere).
    state = {key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().contiguous()
             for key, value in state.items()}
    return config, state


def lora_state_dict(transformer, *, adapter_name: str = "default") -> dict:
    """The LoRA weights of ``transformer`` as whole tensors, keyed as in the diffusers file
    without its ``transformer.`` prefix. On a model sharded with FSDP2 this gathers the shards:
    every process must call it."""
    return _lora_state(transformer, adapter_name)[1]


def save_lora_checkpoint(transformer, directory: Union[str, Path], *, adapter_name: str = "default",
                         write: bool = True) -> Path:
    """Write the LoRA weights of ``transformer`` (a diffusers model with ``add_adapter``, or a
    peft ``PeftModel``) into ``directory`` in the diffusers and peft formats.

    On a model sharded with FSDP2 the weights are gathered from all processes, so every process
    calls this; ``write=False`` on all but one (e.g. ``write=accelerator.is_main_process``).
    """
    directory = Path(directory)
    config, state = _lora_state(transformer, adapter_name)
    if not write:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    metadata = config.to_dict()
    pipeline = PIPELINES[model_family(transformer)]
    pipeline.save_lora_weights(directory, transformer_lora_layers=state, weight_name=DIFFUSERS_WEIGHT_NAME,
                               transformer_lora_adapter_metadata=metadata, safe_serialization=True)
    config.save_pretrained(str(directory))
    safetensors.torch.save_file({PEFT_PREFIX + key: value for key, value in state.items()},
                                str(directory / PEFT_WEIGHT_NAME), metadata={"format": "pt"})
    return directory


def load_lora_checkpoint(transformer, directory: Union[str, Path], *, adapter_name: str = "default") -> None:
    """Load the weights of :func:`save_lora_checkpoint` into the existing adapter of
    ``transformer`` (used to resume training)."""
    path = Path(directory) / DIFFUSERS_WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; not a vgpa LoRA checkpoint folder")
    module = extract_model_from_parallel(transformer)
    if adapter_name not in getattr(module, "peft_config", {}):
        raise ValueError(f"{type(module).__name__} has no LoRA adapter named {adapter_name!r} to load into")
    if any(isinstance(p, DTensor) for p in module.parameters()):
        raise ValueError(f"{type(module).__name__} is sharded (FSDP2); load the LoRA weights before sharding it, "
                         "or resume from the sharded checkpoint (accelerator.load_state)")
    prefix = PEFT_PREFIX if isinstance(module, PeftModel) else ""
    state = {prefix + key.removeprefix(DIFFUSERS_PREFIX): value
             for key, value in safetensors.torch.load_file(str(path)).items()}
    expected = get_peft_model_state_dict(module, adapter_name=adapter_name)
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"{path} does not match the adapter: missing {missing[:4]}, unexpected {unexpected[:4]}"
                         f" ({len(missing)} missing, {len(unexpected)} unexpected keys)")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{path} does not match the adapter: {key} has shape {tuple(value.shape)} there, "
                             f"{tuple(expected[key].shape)} in the model (another LoRA rank?)")
    set_peft_model_state_dict(module, state, adapter_name=adapter_name)
