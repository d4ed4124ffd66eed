"""Every ```python block of README.md and of the pages in docs/ runs as a test, so that a
documented call cannot break unnoticed.

The blocks of one document run in its order in one namespace of their own, as a reader runs
them (a page's later examples continue its earlier ones), in a temporary working directory. A
comment on the line before a block changes how it runs, and says why:

- ``<!-- readme-test: skip: REASON -->``: not run; the test is reported as skipped with REASON.
  Only for blocks that are not code, e.g. a signature listing.
- ``<!-- readme-test: stand-ins: NAME (REASON) -->``: run after the names of the stand-in set
  NAME (below) are added to the namespace, for blocks whose inputs would need a GPU or large
  downloads (pretrained models).
"""

import re
import sys
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(skip|stand-ins):\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```python\s*$")


def python_blocks(text):
    """[(line number of the fence, code, directive kind or None, directive argument)]."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        if FENCE.match(lines[index]):
            start = index
            end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
            previous = lines[start - 1].strip() if start > 0 else ""
            directive = DIRECTIVE.match(previous)
            kind, argument = directive.groups() if directive else (None, None)
            blocks.append((start + 1, "\n".join(lines[start + 1:end]) + "\n", kind, argument))
            index = end
        index += 1
    return blocks


def document_blocks():
    """[(document, line, code, kind, argument)] of every document, the document as a path
    relative to the root."""
    return [(path.relative_to(ROOT).as_posix(),) + block
            for path in DOCUMENTS for block in python_blocks(path.read_text())]


BLOCKS = document_blocks()


# --------------------------------------------------------------------------------------------
# Stand-in sets: what a block needs that would otherwise be a download.


def _tiny_cogvideox(workdir: Path):
    """A tiny random CogVideoX T2V transformer and scheduler, a tiny VAE, a pipeline of them whose
    encode_prompt returns random embeddings (the real one needs the T5 download), random latents,
    a video and an image, and a LoRA checkpoint of another tiny transformer in
    runs/cogvideox-dpo."""
    pytest.importorskip("diffusers", reason="the training examples need the train extras")
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)

    import vgpa.training as vt

    def transformer():
        return CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            max_text_seq_length=8, use_rotary_positional_embeddings=True)

    generator = torch.Generator().manual_seed(0)
    policy, scheduler = transformer(), CogVideoXDDIMScheduler(prediction_type="v_prediction")
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4)
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=policy, scheduler=scheduler)
    pipe.encode_prompt = lambda prompt, **kwargs: (torch.randn(1, 8, 16, generator=generator), None)
    trained = transformer()
    vt.add_lora_adapter(trained, rank=4, alpha=8)
    vt.save_lora_checkpoint(trained, workdir / "runs" / "cogvideox-dpo")
    return {
        "transformer": policy, "scheduler": scheduler, "pipe": pipe,
        "winner_latents": torch.randn(1, 4, 3, 8, 8, generator=generator),
        "loser_latents": torch.randn(1, 4, 3, 8, 8, generator=generator),
        "prompt_embeds": torch.randn(1, 8, 16, generator=generator),
        "video": torch.rand(1, 3, 5, 16, 16, generator=generator) * 2 - 1,
        "image": torch.rand(1, 3, 16, 16, generator=generator) * 2 - 1,
        "prompt": "a cat walking",
    }


STAND_INS = {"tiny-cogvideox": _tiny_cogvideox}


# --------------------------------------------------------------------------------------------
# Running the blocks


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Runs every block once, document by document, in order, each document in one namespace of
    its own; returns {(document, line): ("ok" | "skip" | "fail", detail)}."""
    results = {}
    for document in dict.fromkeys(block[0] for block in BLOCKS):
        workdir = tmp_path_factory.mktemp("docs")
        namespace = {"__name__": "__readme__"}
        provided = {}
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(workdir)
            for _, line, code, kind, argument in (b for b in BLOCKS if b[0] == document):
                if kind == "skip":
                    continue
                try:
                    if kind == "stand-ins":
                        name = argument.split()[0]
                        if name not in provided:
                            provided[name] = STAND_INS[name](workdir)
                        namespace.update({k: v for k, v in provided[name].items() if k not in namespace})
                    exec(compile(code, f"{document}:{line}", "exec"), namespace)
                    results[document, line] = ("ok", "")
                except pytest.skip.Exception as exc:  # a stand-in set whose packages are not installed
                    results[document, line] = ("skip", str(exc))
                except Exception:  # any failure of the block is its test's failure
                    results[document, line] = ("fail", traceback.format_exc())
    return results


def test_documents_have_python_examples_and_known_directives():
    assert sum(block[0] == "README.md" for block in BLOCKS) >= 2
    assert len(BLOCKS) >= 20
    for document, line, _, kind, argument in BLOCKS:
        if kind == "stand-ins":
            assert argument.split()[0] in STAND_INS, f"{document}:{line}: unknown stand-in set {argument!r}"
        if kind is not None:
            assert argument and "(" in argument or kind == "skip", f"{document}:{line}: give the reason"


@pytest.mark.parametrize("document,line,code,kind,argument", BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in BLOCKS])
def test_documented_python_block_runs(outcomes, document, line, code, kind, argument):
    if kind == "skip":
        pytest.skip(f"{document}:{line} is excluded: {argument}")
    status, detail = outcomes[document, line]
    if status == "skip":
        pytest.skip(f"{document}:{line}: {detail}")
    if status == "fail":
        pytest.fail(f"{document}:{line} raised:\n{detail}\n--- block ---\n{code}", pytrace=False)


def test_plain_import_gives_the_metrics_module():
    """The documented `import vgpa; vgpa.metrics.mvcs(...)` in a fresh interpreter."""
    import subprocess

    code = "import vgpa; print(vgpa.metrics.mvcs.__name__, vgpa.metrics.consistency_score.__name__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["mvcs", "consistency_score"]
