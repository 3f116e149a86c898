#!/usr/bin/env python3
"""Write the UI-format workflows under workflows/ from the descriptions below.

Run with the runtime's python (it boots ComfyUI to read the node definitions):
    .runtime/venv/bin/python scripts/make_workflows.py
The files are committed; tests/test_workflows.py checks they are what this script writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workflow_tools import WorkflowBuilder  # noqa: E402

REPO = HERE.parent
WORKFLOWS = REPO / "workflows"
# The standard SD1.5 file name: real users who have it can run the workflows as shipped.
DEFAULT_CKPT = "v1-5-pruned-emaonly.safetensors"
FIG1_PROMPT = "The square coaster was next to the circular mug."


def fig2_frequency_over_sampling(info: dict) -> dict:
    b = WorkflowBuilder(info)
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0, text=FIG1_PROMPT, clip=ckpt.out(1))
    neg = b.add("CLIPTextEncode", "Empty negative prompt", 1, 1, text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2, size=(320, 130), width=512, height=512, batch_size=1)
    traced = b.add("FrequencyTrace", "Record x_t and x0 every step", 2, 0, size=(320, 80), model=ckpt.out(0))
    sampled = b.add("KSampler", "KSampler (DDIM, 50 steps, cfg 7.5)", 3, 0, model=traced.out(0), seed=42,
                    steps=50, cfg=7.5, sampler_name="ddim", scheduler="ddim_uniform", positive=pos.out(0),
                    negative=neg.out(0), latent_image=latent.out(0), denoise=1.0)
    curves = b.add("FrequencyCurves", "Fig. 2b/2c: frequency curves", 4, 0, size=(460, 720), trace=traced.out(1),
                   samples=sampled.out(0), low_fraction=0.2, filename_prefix="shapefirst/fig2_frequency_curves")
    split = b.add("FrequencySplitPreview", "Final latent: low / high parts", 3, 1, size=(320, 300),
                  samples=sampled.out(0), low_fraction=0.2, preview="vae decode", vae=ckpt.out(2))
    b.add("SaveImage", "Save chart", 5, 0, images=curves.out(0), filename_prefix="shapefirst/fig2_chart")
    b.add("SaveImage", "Save low / high preview", 5, 1, images=split.out(2), filename_prefix="shapefirst/fig2_low_high")
    image = b.add("VAEDecode", None, 2, 1, size=(320, 100), samples=sampled.out(0), vae=ckpt.out(2))
    b.add("SaveImage", None, 2, 1.5, images=image.out(0), filename_prefix="shapefirst/fig2")
    b.note(
        "ShapeFirst - Fig. 2 of Yi et al. (NeurIPS 2024): Stable Diffusion builds the overall shape (low "
        "frequencies) in the first steps and the details (high frequencies) after. Frequency Trace records "
        "every step; Frequency Curves draws how far x_t is from the final latent in each band, for this "
        "denoising run and for forward noising with the same schedule. Pick your SD1.5 checkpoint above.",
        0, 1,
    )
    return b.to_ui()


WORKFLOW_BUILDERS = {
    "fig2_frequency_over_sampling.json": fig2_frequency_over_sampling,
}


def build_all(object_info: dict) -> dict[str, str]:
    return {name: json.dumps(fn(object_info), indent=2) + "\n" for name, fn in WORKFLOW_BUILDERS.items()}


def main() -> int:
    import harness

    harness.quiet_logs()
    paths = harness.default_paths()
    with tempfile.TemporaryDirectory() as tmp:
        h = harness.ComfyHarness(paths["comfyui"], paths["pack"], Path(tmp)).boot()
        files = build_all(h.object_info())
    WORKFLOWS.mkdir(exist_ok=True)
    for name, text in files.items():
        (WORKFLOWS / name).write_text(text)
        print(f"wrote workflows/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
