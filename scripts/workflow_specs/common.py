"""Names and the txt2img base shared by every workflow description."""

from __future__ import annotations

from workflow_tools import WorkflowBuilder

# The standard SD1.5 file name: real users who have it can run the workflows as shipped.
DEFAULT_CKPT = "v1-5-pruned-emaonly.safetensors"
FIG1_PROMPT = "The square coaster was next to the circular mug."
DOG_PROMPT = FIG10_PROMPT = "A dog standing on a bench during the day."
FIG4_PROMPT_A, FIG4_PROMPT_B = "A blue bird", "A brown chair"


def _txt2img_base(b: WorkflowBuilder, prompt: str, size=512):
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0, text=prompt, clip=ckpt.out(1))
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 1, 1, text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2, size=(320, 130), width=size, height=size, batch_size=1)
    return ckpt, pos, neg, latent


