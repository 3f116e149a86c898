"""Run a shipped workflow of another model family (SD3.5, Wan, ...) on the tiny seeded models of
``devtools.families``: used by the workflow tests and by the quick demo.

Shipped workflows load what real users have (a checkpoint, TripleCLIPLoader/CLIPLoader, UNETLoader,
VAELoader). ComfyUI's text-encoder loaders accept no reduced config, so the text encoder of the
tiny model is ComfyUI's own class at one layer (Qwen-Image: core's tokenizer and a seeded stand-in
of its encoder, which cannot be built small; ``devtools.families`` says why), handed to the graph
by a node registered only while such a run needs it (``FAMILY_TE_NODE``); core CLIPTextEncode
encodes with it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

FAMILY_TE_NODE = "ShapeFirstTestFamilyTextEncoder"
# text-encoder loaders of the other families -> the kind of tiny text encoder used instead
TE_LOADERS = {"TripleCLIPLoader": lambda inputs: "sd3", "CLIPLoader": lambda inputs: inputs["type"],
              "DualCLIPLoader": lambda inputs: inputs["type"]}
VIDEO_FRAMES = 5  # video latents: 5 frames (2 latent frames)
FULL_WIDTH_STEPS = 2  # samplers of the real-width families (seconds per evaluation) run at most this many steps
_CLIPS: dict = {}


def family_clip(kind: str):
    """The process's tiny text encoder of ``kind`` (built once; ComfyUI clones it per use)."""
    from devtools import families

    if kind not in _CLIPS:
        _CLIPS[kind] = families.build_text_encoder(kind)
    return _CLIPS[kind]


class FamilyTextEncoderNode:
    """Test and demo only: outputs the tiny text encoder of a family as a CLIP."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(text_encoder_kinds()), {"tooltip": "Which family's text encoder."})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"
    DESCRIPTION = ("Test only: a seeded one-layer text encoder built from ComfyUI's own classes (Qwen-Image: "
                   "core's tokenizer and a seeded stand-in of its Qwen2.5-VL encoder).")

    def load(self, kind):
        return (family_clip(kind),)


@contextmanager
def text_encoder_node():
    """The family text-encoder node registered with ComfyUI while the block runs (other code lists
    every node and must not see it afterwards); the built encoders are released at the end."""
    import nodes

    nodes.NODE_CLASS_MAPPINGS[FAMILY_TE_NODE] = FamilyTextEncoderNode
    try:
        yield
    finally:
        nodes.NODE_CLASS_MAPPINGS.pop(FAMILY_TE_NODE, None)
        _CLIPS.clear()


def ensure_files(models_dir, family_names) -> dict:
    """File names (for UNETLoader / VAELoader) of the tiny families, built once, and their folders
    registered with ComfyUI: {family: unet file, "vae:<name>": vae file}."""
    import folder_paths

    from devtools import families

    models = Path(models_dir)
    names = {family: families.ensure_diffusion_model(family, models).name for family in family_names}
    for vae in families.VAES:
        names[f"vae:{vae}"] = families.ensure_vae(vae, models).name
    folder_paths.add_model_folder_path("diffusion_models", str(models / "diffusion_models"), is_default=True)
    folder_paths.add_model_folder_path("vae", str(models / "vae"), is_default=True)
    return names


def family_of(prompt: dict) -> str | None:
    """The tiny family a workflow's API prompt needs (None: an SD1.x workflow)."""
    kinds = {TE_LOADERS[n["class_type"]](n["inputs"]) for n in prompt.values() if n["class_type"] in TE_LOADERS}
    if len(kinds) > 1:
        raise ValueError(f"one text-encoder family per workflow, found {sorted(kinds)}")
    return family_of_text_encoder(kinds.pop()) if kinds else None


def text_encoder_kinds() -> dict:
    """{kind of tiny text encoder: the first tiny family (``devtools.families.FAMILIES``) that uses it}."""
    from devtools import families

    kinds: dict = {}
    for name, spec in families.FAMILIES.items():
        kinds.setdefault(spec.text_encoder, name)
    return kinds


def family_of_text_encoder(kind: str) -> str:
    """The tiny family a workflow whose text-encoder loader is of ``kind`` runs on."""
    kinds = text_encoder_kinds()
    if kind not in kinds:
        raise ValueError(f"no tiny model family uses a {kind!r} text encoder (known: {', '.join(kinds)})")
    return kinds[kind]


def with_family_models(prompt: dict, family: str, names: dict) -> dict:
    """A copy of a family workflow's prompt on the tiny models: its text-encoder loader replaced by the
    family text-encoder node, the checkpoint by UNETLoader + VAELoader (rewired), every model file name
    by the tiny file's, video latents shortened, the real-width families' steps capped. The shipped file keeps
    what real users load."""
    from devtools import families

    spec = families.FAMILIES[family]
    out = json.loads(json.dumps(prompt))
    vae_id = str(max(int(k) for k in out) + 1)
    te_ids = [nid for nid, n in out.items() if n["class_type"] in TE_LOADERS]
    ckpt_ids = [nid for nid, n in out.items() if n["class_type"] == "CheckpointLoaderSimple"]
    for nid in te_ids:
        out[nid] = {**out[nid], "class_type": FAMILY_TE_NODE, "inputs": {"kind": spec.text_encoder}}
    for nid in ckpt_ids:
        out[nid] = {**out[nid], "class_type": "UNETLoader", "inputs": {"unet_name": names[family],
                                                                        "weight_dtype": "default"}}
    if ckpt_ids:
        out[vae_id] = {"class_type": "VAELoader", "inputs": {"vae_name": names[f"vae:{spec.vae}"]},
                       "_meta": {"title": "tiny VAE"}}
    for node in out.values():
        inputs = node["inputs"]
        for name, value in inputs.items():  # checkpoint outputs: MODEL stays, CLIP -> family encoder, VAE -> loader
            if isinstance(value, list) and value[0] in ckpt_ids and value[1] in (1, 2):
                inputs[name] = [te_ids[0], 0] if value[1] == 1 else [vae_id, 0]
        if node["class_type"] == "UNETLoader":
            inputs["unet_name"] = names[family]
        if node["class_type"] == "VAELoader":
            inputs["vae_name"] = names[f"vae:{spec.vae}"]
        if "length" in inputs and node["class_type"].startswith("Empty"):
            inputs["length"] = min(inputs["length"], VIDEO_FRAMES)
        if family in families.FULL_WIDTH and isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], FULL_WIDTH_STEPS)
    return out
