"""Prompts, names and the txt2img base shared by every workflow description (defined once here)."""

from __future__ import annotations

from ..builder import WorkflowBuilder

# The standard SD1.5 file name: real users who have it can run the workflows as shipped.
DEFAULT_CKPT = "v1-5-pruned-emaonly.safetensors"
FIG1_PROMPT = "The square coaster was next to the circular mug."
DOG_PROMPT = "A dog standing on a bench during the day."  # Fig. 10 / Table 2
BIRD, CHAIR = "A blue bird", "A brown chair"  # Fig. 4
SKYLINE = ("The sharp, angular edges of the city skyline pierced the clouds, a symbol of human innovation "
           "and progress.")
BUTTERFLY = ("The delicate, fluttering wings of the butterfly signaled the arrival of spring, a natural symbol "
             "of rebirth and renewal.")
BIRD_ON_FLOWER = "A blue bird sitting on a red flower."  # Fig. 7


def _txt2img_base(b: WorkflowBuilder, prompt: str, size=512):
    ckpt = b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
    pos = b.add("CLIPTextEncode", "Prompt", 1, 0, text=prompt, clip=ckpt.out(1))
    neg = b.add("CLIPTextEncode", "Empty negative prompt (the paper's uncond)", 1, 1, text="", clip=ckpt.out(1))
    latent = b.add("EmptyLatentImage", None, 1, 2, size=(320, 130), width=size, height=size, batch_size=1)
    return ckpt, pos, neg, latent


def side_by_side(b: WorkflowBuilder, images: list, column: int, title: str, prefix: str) -> None:
    """Stitch decoded images left to right in order and save the strip."""
    strip = images[0].out(0)
    for k, image in enumerate(images[1:]):
        strip = b.add("ImageStitch", f"Side by side ({k + 2} images)", column, k * 0.7, size=(260, 130),
                      image1=strip, image2=image.out(0), direction="right", match_image_size=True,
                      spacing_width=8, spacing_color="white").out(0)
    b.add("SaveImage", title, column + 1, 0, size=(480, 300), images=strip, filename_prefix=prefix)
