#!/usr/bin/env python
"""Diffusion-DPO LoRA fine-tuning of CogVideoX and Wan on precomputed latents, with vgpa's
fused DPO loss (the VideoGPA recipe, docs/design.md 1).

    accelerate launch examples/train_dpo.py \\
        --pretrained-model-name-or-path THUDM/CogVideoX-5b \\
        --pairs data/meta_data.json --output-dir runs/cogvideox-dpo

    python examples/train_dpo.py --tiny --output-dir /tmp/tiny_run   # CPU smoke run, < 1 minute

Pairs come from VideoGPA's meta_data.json (prompt groups of scored videos) or vgpa's JSONL
(one pair per line); see vgpa/training/data.py for both formats. The reference model is the
policy with its LoRA adapters disabled; ``--loss-type dro`` runs no reference at all.
Checkpoints (``checkpoint-<step>/``, and the final weights in the output folder) hold the LoRA
weights in the diffusers and peft formats. Under ``accelerate launch`` with several processes,
each process trains on its own share of the pairs; the main process writes the weights. With an
FSDP config (examples/accelerate/fsdp2_*.yaml) the transformer is sharded over the processes and
the checkpoints hold accelerate's sharded states besides the LoRA files; see
docs/distributed_training.md.
"""

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import vgpa.training as vt
from vgpa import _extras, pairs
from vgpa.torch_math.dpo import LOSS_TYPES, REFERENCE_FREE_LOSS_TYPES
from vgpa.training import recipe

# --help works without the train extra; a run checks for it first (main).
if not _extras.missing("train"):
    import diffusers
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.state import PartialState
    from accelerate.utils import (DataLoaderConfiguration, DistributedType, FullyShardedDataParallelPlugin,
                                  ProjectConfiguration, set_seed)
    from diffusers import AutoModel, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel, WanTransformer3DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    logger = get_logger(__name__, log_level="INFO")

# Flags whose default depends on the mode: (real run, --tiny run). The real-run values are
# VideoGPA's (docs/design.md 1); the tiny ones make a randomly initialised toy model move in
# 20 steps.
MODE_DEFAULTS = {
    "max_train_steps": (10_000, 20),
    "learning_rate": (5e-6, 1e-2),
    "lr_warmup_steps": (500, 2),
    "checkpointing_steps": (500, 10),
    "train_batch_size": (1, 2),
    "rank": (vt.LORA_RANK, 8),
    "lora_alpha": (vt.LORA_ALPHA, 16),
}
TINY_FAMILIES = ("cogvideox", "cogvideox-i2v", "wan", "wan-ti2v")
TINY_META = "meta_data.json"  # the tiny data's groups file, in VideoGPA's format
CHECKPOINT_PREFIX = "checkpoint-"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults, except None: the help of those flags says what applies."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def mode_help(text, name):
    full, tiny = MODE_DEFAULTS[name]
    return f"{text} (default: {full}; with --tiny: {tiny})"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--pretrained-model-name-or-path",
                       help="diffusers CogVideoX or Wan pipeline (hub id or folder)")
    model.add_argument("--revision", help="revision of the pretrained model")
    model.add_argument("--tiny", action="store_true",
                       help="build a tiny randomly initialised model and random data (CPU smoke run)")
    model.add_argument("--tiny-family", choices=TINY_FAMILIES, default="cogvideox", help="model family of --tiny")

    data = parser.add_argument_group("data")
    data.add_argument("--pairs", help="VideoGPA meta_data.json or vgpa .jsonl pairs file (--tiny writes its own)")
    data.add_argument("--data-root", help="folder the paths in --pairs are relative to (default: its folder)")
    data.add_argument("--score-key", default=pairs.SCORE_KEY, help="meta_data.json: score, lower is better")
    data.add_argument("--motion-key", default=pairs.MOTION_KEY, help="meta_data.json: motion magnitude")
    data.add_argument("--min-motion", type=float, default=pairs.MIN_MOTION,
                      help="meta_data.json: drop videos with less motion")
    data.add_argument("--min-gap", type=float, default=pairs.MIN_GAP,
                      help="meta_data.json: keep a group's pair when loser - winner score >= this")
    data.add_argument("--dataloader-num-workers", type=int, default=0, help="data-loading processes")

    dpo = parser.add_argument_group("DPO")
    dpo.add_argument("--beta", type=float, default=1.0, help="DPO temperature (not used by dro)")
    dpo.add_argument("--beta-schedule", choices=vt.BETA_SCHEDULES, default="constant",
                     help="beta per pair from its timestep: constant = beta, signal = beta * alpha_t^2 "
                          "(flow matching: beta * (1 - sigma_t)^2)")
    dpo.add_argument("--loss-type", choices=LOSS_TYPES, default="sigmoid",
                     help="DPO loss on the logits; dro = mean(err_w - err_l), no reference model")
    dpo.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO (sigmoid loss)")
    dpo.add_argument("--sft-weight", type=float, default=0.0,
                     help="adds this times the mean winner error (an SFT anchor)")
    dpo.add_argument("--prediction-type", choices=vt.PREDICTION_TYPES,
                     help="default: the scheduler's for CogVideoX, flow_matching for Wan")
    dpo.add_argument("--flow-shift", type=float, default=recipe.WAN_FLOW_SHIFT, help="flow matching shift")
    dpo.add_argument("--backend", default="auto", help="vgpa backend of the fused loss")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, help=mode_help("LoRA rank", "rank"))
    lora.add_argument("--lora-alpha", type=float, help=mode_help("LoRA alpha", "lora_alpha"))
    lora.add_argument("--lora-target-modules", default=",".join(vt.LORA_TARGET_MODULES),
                      help="comma-separated module names")

    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", required=True, help="checkpoints and the final LoRA weights go here")
    train.add_argument("--seed", type=int, default=0, help="seeds the run (and the --tiny model and data)")
    train.add_argument("--train-batch-size", type=int,
                       help=mode_help("pairs per device and step", "train_batch_size"))
    train.add_argument("--max-train-steps", type=int, help=mode_help("optimizer steps", "max_train_steps"))
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, help="batches per optimizer step")
    train.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    train.add_argument("--low-memory", action="store_true",
                       help="one sample's activations at a time (docs/training_memory.md); same gradients")
    train.add_argument("--learning-rate", type=float, help=mode_help("AdamW learning rate", "learning_rate"))
    train.add_argument("--lr-scheduler", default="cosine", help="diffusers.optimization.get_scheduler name")
    train.add_argument("--lr-warmup-steps", type=int, help=mode_help("warm-up steps", "lr_warmup_steps"))
    train.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    train.add_argument("--adam-beta2", type=float, default=0.999, help="AdamW beta2")
    train.add_argument("--adam-weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    train.add_argument("--adam-epsilon", type=float, default=1e-8, help="AdamW epsilon")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm")
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                       default="bf16" if torch.cuda.is_available() else "no",
                       help="dtype of the frozen base model and autocast; LoRA weights stay float32")
    train.add_argument("--checkpointing-steps", type=int,
                       help=mode_help("save a checkpoint every N steps", "checkpointing_steps"))
    train.add_argument("--checkpoints-total-limit", type=int, help="keep at most this many checkpoints")
    train.add_argument("--resume-from-checkpoint",
                       help="a checkpoint folder, or 'latest' for the newest in --output-dir")
    train.add_argument("--logging-steps", type=int, default=10, help="log the metrics every N steps")
    train.add_argument("--report-to", choices=("tensorboard", "wandb", "all"), help="experiment tracker")
    train.add_argument("--trace-dir",
                       help="each process appends one JSON line per optimizer step to TRACE_DIR/rank-<i>.jsonl: "
                            "the step, digests of the pairs it trained on and of its LoRA weights")

    args = parser.parse_args(argv)
    for name, (full, tiny) in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if not args.tiny and (args.pretrained_model_name_or_path is None or args.pairs is None):
        parser.error("--pretrained-model-name-or-path and --pairs are required (or use --tiny)")
    if args.loss_type in REFERENCE_FREE_LOSS_TYPES and args.beta_schedule != "constant":
        parser.error(f"--beta-schedule {args.beta_schedule}: --loss-type {args.loss_type} has no beta")
    return args


# --------------------------------------------------------------------------------------------
# --tiny: a small random model and random preference data


def build_tiny_model(family):
    """A randomly initialised transformer of ``family`` (few layers, 32 channels) and its
    noise scheduler (None for Wan: flow matching needs none)."""
    image_to_video = family.endswith("i2v")
    if family.startswith("cogvideox"):
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=8 if image_to_video else 4, out_channels=4,
            time_embed_dim=16, text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16,
            sample_frames=13, patch_size=2, max_text_seq_length=8, use_rotary_positional_embeddings=True)
        return transformer, CogVideoXDDIMScheduler(prediction_type="v_prediction")
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
    return transformer, None


def write_tiny_data(directory: Path, family: str, seed: int) -> Path:
    """Random latents for 4 prompt groups of 3 videos (one too static to use) in VideoGPA's
    meta_data.json format, and the pairs it selects as vgpa JSONL. Returns the json path."""
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    latent_shape, text_shape = (4, 4, 8, 8), (8, 16)
    groups, lines = [], []
    for g in range(4):
        condition = {"encoder_hidden_states": torch.randn(text_shape, generator=generator)}
        if family.endswith("i2v"):
            condition["image_latents"] = torch.randn((4, 1, 8, 8), generator=generator)
        torch.save(condition, directory / f"condition_{g}.pt")
        videos = []
        for v, (score, motion) in enumerate([(0.2, 0.05), (0.6, 0.04), (0.9, 0.0)]):
            name = f"latents_{g}_{v}.safetensors"
            save_file({"latents": torch.randn(latent_shape, generator=generator)}, str(directory / name))
            videos.append({"video_path": f"video_{g}_{v}.mp4", "generation_id": str(v),
                           "consistency_score": score + rng.uniform(0, 0.1), "motion_norm": motion,
                           "latent_path": name, "condition_path": f"condition_{g}.pt"})
        rng.shuffle(videos)
        groups.append({"group_id": f"tiny{g}", "prompt": f"tiny prompt {g}", "videos": videos})
        winner, loser = vt.select_videogpa_pair(videos)
        lines.append(json.dumps({"winner": winner["latent_path"], "loser": loser["latent_path"],
                                 "prompt_embeds": winner["condition_path"], "prompt": f"tiny prompt {g}"}))
    meta = directory / TINY_META
    meta.write_text(json.dumps({"groups": groups}, indent=1))
    (directory / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return meta


# --------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: Path) -> list:
    found = [p for p in output_dir.glob(CHECKPOINT_PREFIX + "*")
             if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_step)


def resolve_resume_path(args, output_dir: Path):
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(args.resume_from_checkpoint)
    if not path.is_dir() or not path.name[len(CHECKPOINT_PREFIX):].isdigit():
        raise FileNotFoundError(f"--resume-from-checkpoint {path}: not a {CHECKPOINT_PREFIX}<step> folder")
    return path


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete the oldest checkpoints so that ``keep`` - 1 remain before the next is saved."""
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints[: max(0, len(checkpoints) - keep + 1)]:
        logger.info(f"removing old checkpoint {path}")
        shutil.rmtree(path)


# --------------------------------------------------------------------------------------------
# --trace-dir: what each process trained on and holds, to check multi-process runs


def tensor_digest(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def lora_digest(model) -> str:
    """Digest of the whole LoRA weights (gathered from the shards under FSDP: every process calls it)."""
    state = vt.lora_state_dict(model)
    return tensor_digest(state[key] for key in sorted(state))


# --------------------------------------------------------------------------------------------


def use_fsdp_on_cpu(accelerator):
    """Apply the launcher's FSDP plugin to CPU processes too. accelerate (1.16) applies an FSDP
    plugin only on accelerator devices and runs CPU processes as plain data parallel; the CPU
    runs (and the tests) must shard as a GPU run does, through the same accelerate code."""
    state = accelerator.state
    if (state.distributed_type == DistributedType.MULTI_CPU and getattr(state, "fsdp_plugin", None) is None
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
        # Both shared states, as on a GPU: a later AcceleratorState() copies PartialState's.
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def main(args):
    _extras.require("train", "examples/train_dpo.py")
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # The data order of epoch e is a function of (seed, e) alone, identical on every process
        # (each takes its own share) and reproduced when a run resumes mid-epoch.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO)
    use_fsdp_on_cpu(accelerator)
    logger.info(accelerator.state, main_process_only=False)
    # Same seed on every process: the tiny model and data must be identical everywhere.
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # The frozen base runs in the mixed-precision dtype; the LoRA weights train in float32.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision, torch.float32)
    if args.tiny:
        transformer, noise_scheduler = build_tiny_model(args.tiny_family)
        pairs_path = Path(args.pairs) if args.pairs else output_dir / "tiny_data" / TINY_META
        # One process a machine writes the data, the others wait for it: a second writer would
        # truncate the files while the first one reads them.
        with accelerator.local_main_process_first():
            if not args.pairs and accelerator.is_local_main_process:
                write_tiny_data(pairs_path.parent, args.tiny_family, args.seed)
    else:
        transformer = AutoModel.from_pretrained(args.pretrained_model_name_or_path, subfolder="transformer",
                                                revision=args.revision, torch_dtype=weight_dtype)
        noise_scheduler = None
        needs_scheduler = args.prediction_type in ("v_prediction", "epsilon") or (
            args.prediction_type is None and vt.model_family(transformer) == "cogvideox")
        if needs_scheduler:
            # Any scheduler class reads the config; build the class it names.
            config = CogVideoXDDIMScheduler.load_config(args.pretrained_model_name_or_path, subfolder="scheduler",
                                                        revision=args.revision)
            noise_scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
        pairs_path = Path(args.pairs)
    family = vt.model_family(transformer)
    prediction_type = vt.resolve_prediction_type(family, noise_scheduler, args.prediction_type)

    sharded = accelerator.distributed_type == DistributedType.FSDP
    if not sharded:  # under FSDP each process moves only its shards to its device (accelerator.prepare)
        transformer.to(accelerator.device)
    if transformer.dtype != weight_dtype:
        transformer.to(dtype=weight_dtype)
    vt.add_lora_adapter(transformer, rank=args.rank, alpha=args.lora_alpha,
                        target_modules=args.lora_target_modules.split(","))
    cast_training_params(transformer, dtype=torch.float32)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]

    # Under FSDP accelerate itself saves and loads the sharded model and optimizer states
    # (torch.distributed.checkpoint); the hooks add the LoRA weights as ordinary files.

    def save_model_hook(models, weights, checkpoint_dir):
        for model in models:
            # Every process: a sharded model's LoRA weights are gathered from all of them.
            vt.save_lora_checkpoint(accelerator.unwrap_model(model), checkpoint_dir,
                                    write=accelerator.is_main_process)
            if accelerator.is_main_process:
                # The rank in the message itself: older accelerate releases do not prefix it.
                logger.info(f"process {accelerator.process_index} wrote the LoRA weights to {checkpoint_dir}",
                            main_process_only=False)
            if weights:
                weights.pop()  # accelerate would otherwise save the whole base model as well

    def load_model_hook(models, checkpoint_dir):
        while models and not sharded:
            vt.load_lora_checkpoint(accelerator.unwrap_model(models.pop()), checkpoint_dir)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    selection = {}
    if pairs_path.suffix == ".json":
        selection = dict(score_key=args.score_key, motion_key=args.motion_key, min_motion=args.min_motion,
                         min_gap=args.min_gap)
    pairs = vt.load_preference_pairs(pairs_path, data_root=args.data_root, **selection)
    dataset = vt.PreferencePairDataset(pairs)
    # The loader's own generator: starting an epoch then draws nothing from the global RNG that the
    # noise comes from, so a run resumed mid-epoch draws the noise the uninterrupted run drew.
    train_dataloader = DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(args.seed),
                                  collate_fn=vt.collate_preference_pairs, num_workers=args.dataloader_num_workers)

    # Each process draws its own noise and timesteps (the tiny model and data above are the same everywhere).
    set_seed(args.seed, device_specific=True)

    optimizer = torch.optim.AdamW(lora_parameters, lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    # The prepared scheduler steps once per process per optimizer step.
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    transformer, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, train_dataloader, lr_scheduler)
    # FSDP replaces the parameters by sharded ones (the optimizer is given them by accelerate).
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]

    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    if accelerator.is_main_process and args.report_to:
        accelerator.init_trackers("vgpa-dpo", config={k: str(v) for k, v in vars(args).items()})

    logger.info(f"{len(dataset)} preference pairs from {pairs_path}; {family}, {prediction_type}; "
                f"{sum(p.numel() for p in lora_parameters):,} LoRA parameters; "
                f"batch {args.train_batch_size} x {accelerator.num_processes} processes x "
                f"{args.gradient_accumulation_steps} accumulation; {args.max_train_steps} steps")

    global_step = 0
    if args.resume_from_checkpoint:
        resume_path = resolve_resume_path(args, output_dir)
        if resume_path is None:
            logger.info(f"no checkpoint in {output_dir}; starting a new run")
        else:
            logger.info(f"resuming from checkpoint {resume_path}")
            accelerator.load_state(str(resume_path))
            global_step = checkpoint_step(resume_path)
    first_epoch = global_step // steps_per_epoch
    skip_batches = (global_step % steps_per_epoch) * args.gradient_accumulation_steps

    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps",
                        disable=not accelerator.is_local_main_process)
    metric_names = ("loss", "accuracy", "implicit_accuracy", "reward_margin")
    running = dict.fromkeys(metric_names, 0.0)
    reference_free = args.loss_type in REFERENCE_FREE_LOSS_TYPES
    trace_file, trace_pairs = None, []
    if args.trace_dir:
        Path(args.trace_dir).mkdir(parents=True, exist_ok=True)
        trace_file = Path(args.trace_dir) / f"rank-{accelerator.process_index}.jsonl"
    for epoch in range(first_epoch, num_epochs):
        if global_step >= args.max_train_steps:
            break
        transformer.train()
        train_dataloader.set_epoch(epoch)
        loader = train_dataloader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
        for batch in loader:
            if trace_file is not None:
                trace_pairs += [tensor_digest([latents]) for latents in batch.winner_latents]
            with accelerator.accumulate(transformer):
                timesteps = vt.sample_timesteps(batch.winner_latents.shape[0], prediction_type=prediction_type,
                                                scheduler=noise_scheduler, device=accelerator.device)
                beta = None if reference_free else vt.scheduled_beta(
                    args.beta, args.beta_schedule, timesteps, prediction_type=prediction_type,
                    scheduler=noise_scheduler, flow_shift=args.flow_shift)
                step = dict(beta=beta, loss_type=args.loss_type, label_smoothing=args.label_smoothing,
                            sft_weight=args.sft_weight, backend=args.backend, scheduler=noise_scheduler,
                            prediction_type=prediction_type, flow_shift=args.flow_shift, timesteps=timesteps,
                            dtype=weight_dtype)
                if args.low_memory:  # runs the backward passes itself
                    result = vt.diffusion_dpo_step_low_memory(transformer, batch, backward=accelerator.backward,
                                                              **step)
                else:
                    result = vt.diffusion_dpo_step(transformer, batch, **step)
                    accelerator.backward(result.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_parameters, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for name in metric_names:
                value = getattr(result, name).detach().float()
                value = accelerator.reduce(value, reduction="mean").item()
                running[name] += value / args.gradient_accumulation_steps

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress_bar.update(1)
            if trace_file is not None:
                record = {"step": global_step, "rank": accelerator.process_index, "pairs": trace_pairs,
                          "lora": lora_digest(transformer)}
                with trace_file.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                trace_pairs = []
            logs = {**running, "lr": lr_scheduler.get_last_lr()[0]}
            running = dict.fromkeys(metric_names, 0.0)
            progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['accuracy']:.2f}",
                                     implicit_acc=f"{logs['implicit_accuracy']:.2f}",
                                     margin=f"{logs['reward_margin']:.3g}")
            accelerator.log(logs, step=global_step)
            if global_step % args.logging_steps == 0 or global_step == args.max_train_steps:
                logger.info(f"step {global_step}: " + ", ".join(f"{k} {v:.6g}" for k, v in logs.items()))
            if global_step % args.checkpointing_steps == 0:
                if args.checkpoints_total_limit is not None and accelerator.is_main_process:
                    prune_checkpoints(output_dir, args.checkpoints_total_limit)
                accelerator.wait_for_everyone()
                # Every process takes part: each adds its own RNG state (random_states_<rank>.pkl),
                # which an exact resumption needs; the weights, optimizer and scheduler states are
                # written by the main process only.
                save_path = output_dir / f"{CHECKPOINT_PREFIX}{global_step}"
                accelerator.save_state(str(save_path))
                logger.info(f"saved checkpoint {save_path}")
            if global_step >= args.max_train_steps:
                break

    accelerator.wait_for_everyone()
    vt.save_lora_checkpoint(accelerator.unwrap_model(transformer), output_dir, write=accelerator.is_main_process)
    logger.info(f"saved the final LoRA weights in {output_dir}")
    # One more barrier before the process group goes. gloo's worker thread releases a finished
    # collective's tensors, which takes the GIL for tensors Python made; tearing the group down
    # (here, or when the DDP model is freed) joins that thread with the GIL held (torch 2.13), so
    # a teardown right behind the last barrier could hang a process at exit. Waiting on a second
    # barrier, with the GIL released, lets the thread finish with the first.
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
