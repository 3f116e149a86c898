"""Fixtures for the model-family tests: tiny seeded files that core loaders detect, and text encoders.

Diffusion models and VAEs are files built once by ``devtools.families`` under the runtime's
models folder (``diffusion_models/``, ``vae/``) and loaded by core ``UNETLoader`` / ``VAELoader``.
ComfyUI's text-encoder loaders accept no reduced config (see ``devtools.families``), so the text
encoder is ComfyUI's own class at one layer, handed to the graph by a test-only node
(``FAMILY_TE_NODE``) that this module registers for the session and removes afterwards; core
``CLIPTextEncode`` encodes with it. Registered for every test module by conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FAMILY_TE_NODE = "ShapeFirstTestFamilyTextEncoder"
TEXT_ENCODER_KINDS = ("sd3", "wan", "flux", "lumina2")
_CLIPS: dict = {}


def family_clip(kind: str):
    """The session's tiny text encoder of ``kind`` (built once; ComfyUI clones it per use)."""
    from devtools import families

    if kind not in _CLIPS:
        _CLIPS[kind] = families.build_text_encoder(kind)
    return _CLIPS[kind]


class FamilyTextEncoderNode:
    """Test-only loader node: outputs the tiny text encoder of a family as a CLIP."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (list(TEXT_ENCODER_KINDS), {"tooltip": "Which family's text encoder."})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"
    DESCRIPTION = "Test only: a seeded one-layer text encoder built from ComfyUI's own classes."

    def load(self, kind):
        return (family_clip(kind),)


@pytest.fixture(scope="session")
def family_files(comfy, runtime_paths) -> dict:
    """File names (for UNETLoader / VAELoader) of every small family file, built once per machine
    (the full-width families are in ``full_width_files``)."""
    from devtools import families

    return _ensure_files(runtime_paths, [f for f in families.FAMILIES if f not in families.FULL_WIDTH])


@pytest.fixture(scope="session")
def full_width_files(comfy, runtime_paths) -> dict:
    """Like ``family_files`` for the families built at their real width (Flux, ...): hundreds of MB each."""
    from devtools import families

    return _ensure_files(runtime_paths, families.FULL_WIDTH)


def _ensure_files(runtime_paths, family_names) -> dict:
    import folder_paths

    from devtools import families

    models = Path(runtime_paths["models"])
    names = {}
    for family in family_names:
        names[family] = families.ensure_diffusion_model(family, models).name
    for vae in families.VAES:
        names[f"vae:{vae}"] = families.ensure_vae(vae, models).name
    folder_paths.add_model_folder_path("diffusion_models", str(models / "diffusion_models"), is_default=True)
    folder_paths.add_model_folder_path("vae", str(models / "vae"), is_default=True)
    return names


@pytest.fixture(scope="module")
def family_models(family_files) -> dict:
    """``family_files``, with the test-only text-encoder node registered while the module runs (other
    modules list every node and must not see it)."""
    yield from _with_te_node(family_files)


@pytest.fixture(scope="module")
def full_width_models(full_width_files) -> dict:
    """``full_width_files`` with the test-only text-encoder node registered while the module runs."""
    yield from _with_te_node(full_width_files)


def _with_te_node(names):
    import nodes

    nodes.NODE_CLASS_MAPPINGS[FAMILY_TE_NODE] = FamilyTextEncoderNode
    try:
        yield names
    finally:
        nodes.NODE_CLASS_MAPPINGS.pop(FAMILY_TE_NODE, None)
        _CLIPS.clear()  # release the encoders while ComfyUI is still importable
