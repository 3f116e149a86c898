"""Fixtures for the model-family tests: tiny seeded files that core loaders detect, and text encoders.

Diffusion models and VAEs are files built once by ``devtools.families`` under the runtime's
models folder (``diffusion_models/``, ``vae/``) and loaded by core ``UNETLoader`` / ``VAELoader``.
ComfyUI's text-encoder loaders accept no reduced config (see ``devtools.families``), so the text
encoder is ComfyUI's own class at one layer (Qwen-Image: core's tokenizer and a seeded stand-in of
its encoder, which cannot be built small), handed to the graph by a test-only node
(``devtools.workflows.family_models.FAMILY_TE_NODE``) registered while a module runs and removed afterwards; core
``CLIPTextEncode`` encodes with it. Registered for every test module by conftest.py.
"""

from __future__ import annotations

import pytest

from devtools.workflows.family_models import ensure_files, text_encoder_node


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
    return ensure_files(runtime_paths["models"], family_names)


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
    with text_encoder_node():
        yield names
