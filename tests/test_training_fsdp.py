"""FSDP2 (torch.distributed.fsdp.fully_shard, through accelerate's FSDP plugin) with two
processes on the CPU: the sharded training equals one process on the same global batch, the
sharded checkpoints resume bitwise, and the exported LoRA file is the sharded state and loads
in one process. Shipped config: examples/accelerate/fsdp2_cpu.yaml."""

import json
from pathlib import Path

import pytest
import torch

from test_training import REPO, _assert_resume_is_exact, _launch_two_processes, _lora_file, _script_module, _trace

import peft  # noqa: E402  (test_training skips the module without the train extras)
import safetensors.torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

import vgpa.training as vt  # noqa: E402

CPU_CONFIG = REPO / "examples" / "accelerate" / "fsdp2_cpu.yaml"
EQUIVALENCE_RUN = Path(__file__).with_name("fsdp_equivalence_run.py")
DIFFUSERS_PREFIX = "transformer."


def _fresh_tiny_model(family):
    """The base model of fsdp_equivalence_run.py (the same seed)."""
    torch.manual_seed(0)
    return _script_module().build_tiny_model(family)[0]


def test_fsdp2_two_processes_match_one_process_and_export_the_lora(tmp_path):
    run = _launch_two_processes(tmp_path, config_file=CPU_CONFIG, script=EQUIVALENCE_RUN)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for family in ("cogvideox", "wan"):
        got = results[family]
        # Every LoRA weight is a DTensor of which each process holds half.
        assert got["lora_dtensors"] == got["lora_tensors"] > 0, got
        assert got["lora_local_numel"] * 2 == got["lora_numel"], got
        single, sharded = got["single"], got["sharded"]
        assert len(set(single)) == len(single), single  # the weights move every step
        # Step 1: the same weights; only the order of summing the pair losses differs (float32).
        assert sharded[0] == pytest.approx(single[0], rel=1e-6), (single, sharded)
        # Later steps: the gradients were averaged over the processes in another order; the
        # rounding (~1e-7 relative) shows in the loss amplified by beta = 50 (seen: <= 1e-5).
        assert sharded == pytest.approx(single, rel=1e-4), (single, sharded)

        assert "is sharded (FSDP2)" in got["load_into_shards"]

        # The exported file: the gathered sharded weights, close to the unsharded run's.
        exported = _lora_file(tmp_path / family)
        unsharded = safetensors.torch.load_file(str(tmp_path / family / "lora_single.safetensors"))
        assert exported.keys() == {DIFFUSERS_PREFIX + key for key in unsharded}
        for key, value in unsharded.items():
            torch.testing.assert_close(exported[DIFFUSERS_PREFIX + key], value, rtol=0, atol=1e-5)

        # It loads in one process with diffusers and with peft, bitwise as written.
        with_diffusers = _fresh_tiny_model(family)
        with_diffusers.load_lora_adapter(str(tmp_path / family), weight_name="pytorch_lora_weights.safetensors",
                                         prefix="transformer", adapter_name="default")
        with_peft = peft.PeftModel.from_pretrained(_fresh_tiny_model(family), str(tmp_path / family))
        for loaded in (with_diffusers, with_peft):
            state = vt.lora_state_dict(loaded)
            assert state.keys() == unsharded.keys()
            assert all(torch.equal(state[key], exported[DIFFUSERS_PREFIX + key]) for key in state)


def _sharded_lora(checkpoint):
    """The LoRA entries of a checkpoint's sharded model state (accelerate's DCP folder), read
    back whole in this one process, keyed as in the diffusers file."""
    reader = dcp.FileSystemReader(str(checkpoint / "pytorch_model_fsdp_0"))
    entries = reader.read_metadata().state_dict_metadata
    state = {key: torch.full(meta.size, float("nan"), dtype=meta.properties.dtype)
             for key, meta in entries.items() if "lora_" in key}
    dcp.load(state, storage_reader=reader, no_dist=True)
    # accelerate saves {"model": state dict}; peft names the adapter in the key.
    return {DIFFUSERS_PREFIX + key.removeprefix("model.").replace(".default.", "."): value
            for key, value in state.items()}


# _sharded_lora reads the checkpoint in this process alone (no_dist=True), which torch still warns about.
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_fsdp2_script_resumes_bitwise_from_a_sharded_checkpoint(tmp_path):
    seed = int(torch.randint(0, 10_000, ()).item())
    # 4 pairs, 1 per process and step: an epoch is 2 steps; the checkpoint at step 1 is mid-epoch.
    common = ["--tiny", "--seed", seed, "--max-train-steps", 3, "--checkpointing-steps", 1, "--train-batch-size", 1,
              "--gradient-checkpointing", "--logging-steps", 1]
    out = tmp_path / "run"
    first = _launch_two_processes(*common, "--output-dir", out, "--trace-dir", tmp_path / "trace",
                                  config_file=CPU_CONFIG)
    assert first.returncode == 0, first.stderr[-4000:]
    trace = _trace(tmp_path / "trace")
    assert [r["step"] for r in trace[0]] == [r["step"] for r in trace[1]] == [1, 2, 3]
    for r0, r1 in zip(trace[0], trace[1]):
        assert set(r0["pairs"]).isdisjoint(r1["pairs"]), (r0, r1)  # each process its own share
        assert r0["lora"] == r1["lora"], r0["step"]  # the same gathered LoRA weights everywhere
    assert len({r["lora"] for r in trace[0]}) == 3

    checkpoint = out / "checkpoint-1"
    # accelerate's sharded model and optimizer states (DCP), one RNG state per process, the LoRA files.
    assert {"pytorch_model_fsdp_0", "optimizer_0", "random_states_0.pkl", "random_states_1.pkl",
            "pytorch_lora_weights.safetensors", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    # The exported LoRA file is bitwise the sharded state it was gathered from.
    exported, sharded = _lora_file(checkpoint), _sharded_lora(checkpoint)
    assert exported.keys() == sharded.keys() and exported
    assert all(torch.equal(exported[key], sharded[key]) for key in exported)

    _assert_resume_is_exact(common, out, tmp_path, trace, step=1, config_file=CPU_CONFIG)
