"""Trains the tiny CogVideoX and Wan models of examples/train_dpo.py for a few Diffusion-DPO
steps twice: sharded with FSDP2 over the processes of ``accelerate launch`` (each process takes
its share of every global batch), and in each process alone on the whole global batch. Both
runs see the same pairs, noise and timesteps. Launched by tests/test_training_fsdp.py:

    accelerate launch --config_file examples/accelerate/fsdp2_cpu.yaml tests/fsdp_equivalence_run.py OUT

The main process writes OUT/results.json (losses per step of both runs, how the LoRA weights
were sharded) and OUT/<family>/lora_single.safetensors (the unsharded run's LoRA weights); the
sharded run's LoRA weights are exported with vt.save_lora_checkpoint into OUT/<family>/.
"""

import copy
import importlib.util
import json
import sys
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

import vgpa.training as vt

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_dpo.py"
STEPS = 3
GLOBAL_PAIRS = 4  # split evenly over the processes
LATENT_SHAPE, TEXT_SHAPE = (4, 4, 8, 8), (8, 16)  # those of train_dpo.write_tiny_data


def load_script():
    spec = importlib.util.spec_from_file_location("train_dpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def global_batches(family, scheduler):
    """STEPS global batches with their noise and timesteps, identical in every process."""
    generator = torch.Generator().manual_seed(1234)
    prediction_type = vt.resolve_prediction_type(family, scheduler)
    batches = []
    for _ in range(STEPS):
        batch = vt.PreferenceBatch(torch.randn((GLOBAL_PAIRS,) + LATENT_SHAPE, generator=generator),
                                   torch.randn((GLOBAL_PAIRS,) + LATENT_SHAPE, generator=generator),
                                   torch.randn((GLOBAL_PAIRS,) + TEXT_SHAPE, generator=generator))
        noise = torch.randn((GLOBAL_PAIRS,) + LATENT_SHAPE, generator=generator)
        timesteps = vt.sample_timesteps(GLOBAL_PAIRS, prediction_type=prediction_type, scheduler=scheduler,
                                        generator=generator)
        batches.append((batch, noise, timesteps))
    return batches


def share(batch, noise, timesteps, part, parts):
    """Process ``part``'s consecutive share of a global batch."""
    size = GLOBAL_PAIRS // parts
    cut = slice(part * size, (part + 1) * size)
    return vt.PreferenceBatch(batch.winner_latents[cut], batch.loser_latents[cut], batch.prompt_embeds[cut]), \
        noise[cut], timesteps[cut]


def train(model, optimizer, batches, scheduler, *, part, parts, backward, clip, reduce):
    losses = []
    params = [p for p in model.parameters() if p.requires_grad]
    for batch, noise, timesteps in batches:
        batch, noise, timesteps = share(batch, noise, timesteps, part, parts)
        # beta 50: logits well away from 0, so the loss moves visibly from log 2 in a few steps.
        result = vt.diffusion_dpo_step(model, batch, beta=50.0, scheduler=scheduler, noise=noise,
                                       timesteps=timesteps)
        backward(result.loss)
        clip(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(reduce(result.loss.detach()).item())
    return losses


def main(out):
    script = load_script()
    accelerator = Accelerator()
    script.use_fsdp_on_cpu(accelerator)
    assert accelerator.is_fsdp2, accelerator.distributed_type
    results = {}
    for family in ("cogvideox", "wan"):
        torch.manual_seed(0)  # the same model in every process
        model, scheduler = script.build_tiny_model(family)
        # Random A and B: the policy differs from its reference from the first step on.
        vt.add_lora_adapter(model, rank=4, alpha=8, init_lora_weights=False)
        single = copy.deepcopy(model)
        batches = global_batches(family, scheduler)

        def sgd(m):
            # SGD, not AdamW: its update is linear in the gradient, so the rounding of averaging the
            # gradients over processes (float32 sums in another order) stays ~1e-7 relative in the
            # weights. Adam divides by the gradient's size and could make that difference in a
            # near-zero component a visible one. The optimizer acts on each shard elementwise either way.
            return torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)

        single_losses = train(single, sgd(single), batches, scheduler, part=0, parts=1,
                              backward=lambda loss: loss.backward(), clip=torch.nn.utils.clip_grad_norm_,
                              reduce=lambda x: x)

        # A plugin keeps the block classes of the first model it wrapped: a fresh one per model.
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        model, optimizer = accelerator.prepare(model, sgd(model))
        lora = {name: p for name, p in model.named_parameters() if p.requires_grad}
        sharded_losses = train(model, optimizer, batches, scheduler, part=accelerator.process_index,
                               parts=accelerator.num_processes, backward=accelerator.backward,
                               clip=accelerator.clip_grad_norm_,
                               reduce=lambda x: accelerator.reduce(x, reduction="mean"))
        results[family] = {
            "single": single_losses, "sharded": sharded_losses,
            "lora_dtensors": sum(isinstance(p, DTensor) for p in lora.values()), "lora_tensors": len(lora),
            "lora_local_numel": sum(p.to_local().numel() for p in lora.values() if isinstance(p, DTensor)),
            "lora_numel": sum(p.numel() for p in lora.values()),
        }
        vt.save_lora_checkpoint(model, out / family, write=accelerator.is_main_process)
        accelerator.wait_for_everyone()
        try:  # a whole file cannot be loaded into the shards
            vt.load_lora_checkpoint(model, out / family)
        except ValueError as error:
            results[family]["load_into_shards"] = str(error)
        if accelerator.is_main_process:
            safetensors.torch.save_file(vt.lora_state_dict(single), str(out / family / "lora_single.safetensors"))
    if accelerator.is_main_process:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    accelerator.wait_for_everyone()
    # A second barrier before the process group goes: see the end of examples/train_dpo.py.
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
