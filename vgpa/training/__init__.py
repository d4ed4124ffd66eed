"""Diffusion-DPO training for diffusers video transformers (CogVideoX, Wan) with the fused loss.

Needs the ``train`` extras (diffusers, peft, accelerate, safetensors, transformers); import it
explicitly, ``import vgpa.training``. Without them only the recipe's numbers
(:mod:`vgpa.training.recipe`) and the pair selection (:func:`vgpa.pairs.select_videogpa_pair`)
are here, and any other name raises an ImportError saying what to install. See
examples/train_dpo.py for a complete training script.
"""

from .. import _extras
from ..pairs import select_videogpa_pair
from .recipe import BETA_SCHEDULES, LORA_ALPHA, LORA_RANK, LORA_TARGET_MODULES, PREDICTION_TYPES

_MISSING = _extras.missing_message("train", "vgpa.training")
if _MISSING is not None:
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"vgpa.training.{name}: {_MISSING}")
else:
    from .data import (
        PreferencePair,
        PreferencePairDataset,
        UnusableVideoWarning,
        collate_preference_pairs,
        load_jsonl_pairs,
        load_preference_pairs,
        load_tensor_file,
        load_videogpa_pairs,
    )
    from .dpo_step import (
        NoisedPair,
        PairPredictions,
        PreferenceBatch,
        add_noise_pair,
        diffusion_dpo_step,
        diffusion_dpo_step_low_memory,
        encode_image,
        encode_video,
        lora_disabled,
        model_family,
        predict_pair,
        resolve_prediction_type,
        sample_timesteps,
        scheduled_beta,
        signal_scale,
    )
    from .lora import (
        add_lora_adapter,
        load_lora_checkpoint,
        lora_state_dict,
        save_lora_checkpoint,
    )

__all__ = [
    "BETA_SCHEDULES",
    "LORA_ALPHA",
    "LORA_RANK",
    "LORA_TARGET_MODULES",
    "NoisedPair",
    "PREDICTION_TYPES",
    "PairPredictions",
    "PreferenceBatch",
    "PreferencePair",
    "PreferencePairDataset",
    "UnusableVideoWarning",
    "add_lora_adapter",
    "add_noise_pair",
    "collate_preference_pairs",
    "diffusion_dpo_step",
    "diffusion_dpo_step_low_memory",
    "encode_image",
    "encode_video",
    "load_jsonl_pairs",
    "load_lora_checkpoint",
    "load_preference_pairs",
    "load_tensor_file",
    "load_videogpa_pairs",
    "lora_disabled",
    "lora_state_dict",
    "model_family",
    "predict_pair",
    "resolve_prediction_type",
    "sample_timesteps",
    "save_lora_checkpoint",
    "scheduled_beta",
    "select_videogpa_pair",
    "signal_scale",
]
