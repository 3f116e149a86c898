"""EOS swap workflows (Section 5.1, Fig. 4-6, Appendices E, F, G)."""

from __future__ import annotations

from shapefirst.swap import SWAP_DEFAULTS  # the node's own defaults (one place); re-exported for the specs

from ..builder import WorkflowBuilder
from .common import BIRD, BUTTERFLY, CHAIR, DEFAULT_CKPT, SKYLINE, side_by_side

# The width its token table opens to (js/token_table.js): a narrower node would widen over its neighbour.
SWAP_SIZE = (420, 800)
# Rows from one swap node to the next in a column: Nodes 2.0 draws it taller than 800 (about 850).
SWAP_ROWS = 3.0


class _SwapSheet:
    """Checkpoint, negative prompt and latent; one sampler + decode per image; the images stitched
    left to right in order and saved. Same seed everywhere, so only the conditioning differs."""

    def __init__(self, info: dict, name: str):
        self.b = WorkflowBuilder(info)
        self.name = name
        self.ckpt = self.b.add("CheckpointLoaderSimple", "Load Checkpoint (SD1.5)", 0, 0, ckpt_name=DEFAULT_CKPT)
        self.negative = self.b.add("CLIPTextEncode", "Empty negative prompt", 0, 1, size=(320, 120), text="",
                                   clip=self.ckpt.out(1))
        self.latent = self.b.add("EmptyLatentImage", None, 0, 1.5, size=(320, 130), width=512, height=512,
                                 batch_size=1)
        self.model = self.ckpt.out(0)
        self.images = []

    def text(self, title: str, text: str, row: float):
        return self.b.add("CLIPTextEncode", title, 1, row, size=(320, 120), text=text, clip=self.ckpt.out(1))

    def swap(self, title: str, a: str, b: str, row: float, **opts):
        return self.b.add("EOSSwapConditioning", title, 2, row, size=SWAP_SIZE, clip=self.ckpt.out(1),
                          prompt_a=a, prompt_b=b, **{**SWAP_DEFAULTS, **opts})

    def image(self, title: str, positive, row: float):
        sampler = self.b.add("KSampler", f"Sample: {title}", 3 + len(self.images) % 2, row, size=(320, 262),
                             model=self.model, seed=42, steps=50, cfg=7.5, sampler_name="ddim",
                             scheduler="ddim_uniform", positive=positive, negative=self.negative.out(0),
                             latent_image=self.latent.out(0), denoise=1.0)
        decoded = self.b.add("VAEDecode", title, 5, row, size=(220, 50), samples=sampler.out(0), vae=self.ckpt.out(2))
        self.images.append(decoded)

    def finish(self, note: str) -> dict:
        side_by_side(self.b, self.images, 6, "Save: " + ", ".join(t for t in self.titles),
                     f"shapefirst/{self.name}")
        self.b.note(note, 0, 2.2)
        return self.b.to_ui()

    @property
    def titles(self):
        return [self.b.title(n) for n in self.images]


def _fig4(info: dict, name: str, a: str, b: str, label_a: str, label_b: str) -> dict:
    s = _SwapSheet(info, name)
    pa, pb = s.text(f"Prompt A ({label_a})", a, 0), s.text(f"Prompt B ({label_b})", b, 0.5)
    ab = s.swap(f"{label_a} + [EOS] of {label_b}", a, b, 1)
    ba = s.swap(f"{label_b} + [EOS] of {label_a}", b, a, 1 + SWAP_ROWS)
    s.image(label_a, pa.out(0), 0)
    s.image(label_b, pb.out(0), 1)
    s.image(f"{label_a} + EOS {label_b}", ab.out(0), 2)
    s.image(f"{label_b} + EOS {label_a}", ba.out(0), 3)
    return s.finish(
        "ShapeFirst - Fig. 4 of Yi et al. (NeurIPS 2024): the [EOS] token carries the prompt. Left to right: A, B, "
        "\"[SOS] + A + [EOS] of B\" and \"[SOS] + B + [EOS] of A\". The swapped images follow the prompt that gave "
        "the [EOS] (its shapes), while colours and textures of the other may leak through. Same seed everywhere.")


def fig4_eos_swap_bird_chair(info: dict) -> dict:
    return _fig4(info, "fig4_eos_swap_bird_chair", BIRD, CHAIR, "bird", "chair")


def fig4_eos_swap_skyline_butterfly(info: dict) -> dict:
    return _fig4(info, "fig4_eos_swap_skyline_butterfly", SKYLINE, BUTTERFLY, "skyline", "butterfly")


def fig5_eos_swap_first_steps(info: dict) -> dict:
    s = _SwapSheet(info, "fig5_eos_swap_first_steps")
    pa = s.text("Prompt A (bird), no swap", BIRD, 0)
    s.image("bird, no swap", pa.out(0), 0)
    for k, end in enumerate((0.1, 0.2, 0.4, 1.0)):
        title = f"bird + EOS chair, first {round(end * 100)}% of steps"
        swap = s.swap(title, BIRD, CHAIR, 1 + SWAP_ROWS * k, end_percent=end)
        s.image(f"EOS chair for the first {round(end * 100)}%", swap.out(0), k + 1)
    return s.finish(
        "ShapeFirst - Fig. 5/6 of Yi et al.: the text acts in the first steps. \"[SOS] + bird + [EOS] of chair\" is "
        "used only for the first k% of sampling (end_percent), plain \"bird\" afterwards; k = 0, 10, 20, 40, 100. "
        "Already 20% gives nearly the full swap. The percent is ComfyUI's (timestep based, as Conditioning Set "
        "Timestep Range); with ddim_uniform it is the fraction of steps.")


def appendix_e_sos_eos_only(info: dict) -> dict:
    s = _SwapSheet(info, "appendix_e_sos_eos_only")
    pa = s.text("Prompt (bird)", BIRD, 0)
    sos = s.swap("77 x [SOS] of the prompt", BIRD, BIRD, 1, layout="77 x [SOS]", pooled_from="A")
    eos = s.swap("[SOS] + 76 x [EOS] of the prompt", BIRD, BIRD, 1 + SWAP_ROWS, layout="[SOS] + 76 x [EOS]",
                 eos_from="A", pooled_from="A")
    s.image("prompt", pa.out(0), 0)
    s.image("77 x [SOS]", sos.out(0), 1)
    s.image("[SOS] + 76 x [EOS]", eos.out(0), 2)
    return s.finish(
        "ShapeFirst - Appendix E of Yi et al.: [SOS] carries no text. Left to right: the prompt, a prompt made of 77 "
        "copies of its [SOS] (conveys nothing), and [SOS] followed by its [EOS] rows (conveys the prompt). Turn "
        "padding_is_eos off to use 76 copies of the single [EOS] instead of the [EOS] region.")


def appendix_f_zero_noise(info: dict) -> dict:
    s = _SwapSheet(info, "appendix_f_zero_noise")
    pa = s.text("Prompt (Sem + EOS, original)", BIRD, 0)
    s.image("Sem + EOS", pa.out(0), 0)
    variants = [("Sem + Zero", {"eos_from": "zeros"}), ("Sem + Rand", {"eos_from": "noise"}),
                ("Zero + EOS", {"sem_from": "zeros", "eos_from": "A"}), ("Rand + EOS", {"sem_from": "noise", "eos_from": "A"})]
    for k, (title, opts) in enumerate(variants):
        swap = s.swap(title, BIRD, BIRD, 1 + SWAP_ROWS * k, pooled_from="A", **opts)
        s.image(title, swap.out(0), k + 1)
    return s.finish(
        "ShapeFirst - Appendix F (Table 3) of Yi et al.: semantic tokens or [EOS] replaced by zeros or by Gaussian "
        "noise (seeded, scaled like the prompt's rows). Without [EOS] (Sem + Zero / Rand) the prompt is mostly lost; "
        "without the semantic tokens (Zero / Rand + EOS) it survives.")


def appendix_g_keys_values(info: dict) -> dict:
    s = _SwapSheet(info, "appendix_g_keys_values")
    patch = s.b.add("EOSSwapKVPatch", "K/V patch (needed for keys only / values only)", 1, 2.5, size=(320, 60),
                    model=s.ckpt.out(0))
    s.model = patch.out(0)
    pa, pb = s.text("Prompt A (bird)", BIRD, 0), s.text("Prompt B (chair)", CHAIR, 0.5)
    s.image("bird", pa.out(0), 0)
    s.image("chair", pb.out(0), 1)
    for k, mode in enumerate(("keys only", "values only", "keys and values")):
        swap = s.swap(f"bird + EOS chair in {mode}", BIRD, CHAIR, 1 + SWAP_ROWS * k, apply_to=mode)
        s.image(f"EOS chair, {mode}", swap.out(0), k + 2)
    return s.finish(
        "ShapeFirst - Appendix G (Table 4) of Yi et al.: where the [EOS] swap acts in cross-attention. Keys only: "
        "the image stays with A (the attention map barely changes); values only: it moves to B, nearly as much as "
        "swapping both. EOS Swap K/V Patch lets each cross-attention take its Keys and Values from two contexts.")
