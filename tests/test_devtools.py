"""The development tools themselves: the harness's executor arguments for several ComfyUI
versions, and the test checkpoints' UNet layouts against ComfyUI's own tables of the real models."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import types
from pathlib import Path

import pytest

from devtools import checkpoints, paths
from devtools.harness import executor_kwargs

# Real models' UNet configs by the name ComfyUI's model_detection gives them in
# unet_config_from_diffusers_unet, for each supported_models class the specs use.
KNOWN_CONFIG = {"SD15": "SD15", "SD20": "SD21", "SDXL": "SDXL"}


def _fake_execution(tmp_path, init_source: str, body: str, main_source: str | None):
    """A stand-in for a ComfyUI version's execution module: its PromptExecutor signature and source.
    The class is written to a module file and imported (no exec: the Registry's checks flag it)."""
    (tmp_path / "execution.py").write_text(body)
    if main_source is not None:
        (tmp_path / "main.py").write_text(main_source)
    signature_file = tmp_path / "prompt_executor_signature.py"
    signature_file.write_text(f"class PromptExecutor:\n    def __init__{init_source}:\n        pass\n")
    spec = importlib.util.spec_from_file_location(f"prompt_executor_{tmp_path.name}", signature_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return types.SimpleNamespace(PromptExecutor=module.PromptExecutor, __file__=str(tmp_path / "execution.py"))


@pytest.mark.parametrize("version, init, body, main, expected", [
    ("0.3.64", "(self, server, cache_type=False, cache_size=None)", "CacheSet(cache_type, cache_size)\n", None,
     {"cache_type": False, "cache_size": 0}),
    ("0.3.75", "(self, server, cache_type=False, cache_args=None)",
     'cache_args.get("ram", 16.0)\nself.cache_args["ram"]\ncache_args.get("lru", 0)\n',
     'e = PromptExecutor(s, cache_type=t, cache_args={ "lru" : args.cache_lru, "ram" : args.cache_ram } )\n',
     {"cache_type": False, "cache_args": {"lru": 0, "ram": 0}}),
    ("2026", "(self, server, cache_type=False, cache_args=None, asset_manager=None)",
     'ram_headroom = int(self.cache_args["ram"] * 1)\nx = int(self.cache_args["ram_inactive"] * 1)\n',
     'e = PromptExecutor(s, cache_type=t, cache_args={ "lru" : args.cache_lru, "ram" : cache_ram, '
     '"ram_inactive" : cache_ram_inactive }, asset_manager=asset_manager )\n',
     {"cache_type": False, "cache_args": {"lru": 0, "ram": 0, "ram_inactive": 0}}),
])
def test_executor_arguments_follow_the_host(tmp_path, version, init, body, main, expected):
    assert executor_kwargs(_fake_execution(tmp_path, init, body, main)) == expected


@pytest.mark.comfy
def test_executor_arguments_of_the_runtime_cover_what_its_executor_reads(comfy):
    import execution

    kwargs = executor_kwargs(execution)
    source = inspect.getsource(execution)
    for key in ("ram", "ram_inactive", "lru"):
        if f'cache_args["{key}"]' in source or f'cache_args.get("{key}"' in source:
            assert key in kwargs["cache_args"]


def _known_unet_configs() -> dict:
    """The literal configs of real models in ComfyUI's model_detection.unet_config_from_diffusers_unet."""
    import comfy.model_detection

    tree = ast.parse(inspect.getsource(comfy.model_detection.unet_config_from_diffusers_unet))
    configs = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and isinstance(node.targets[0], ast.Name):
            value = ast.fix_missing_locations(_NamesToNone().visit(node.value))
            configs[node.targets[0].id] = ast.literal_eval(value)
    return configs


class _NamesToNone(ast.NodeTransformer):
    def visit_Name(self, node):  # `dtype` in the tables: not part of the architecture
        return ast.copy_location(ast.Constant(None), node)


@pytest.mark.comfy
@pytest.mark.parametrize("kind", sorted(checkpoints.SPECS))
def test_checkpoint_unet_matches_the_real_model(comfy, kind):
    """ComfyUI's detection of the built UNet against ComfyUI's own config of the real model: every key
    for a full-architecture spec, the keys a reduced spec claims to keep for the tiny ones."""
    import comfy.model_detection

    spec = checkpoints.SPECS[kind]
    detected = comfy.model_detection.detect_unet_config(checkpoints.unet_shapes(kind), checkpoints.UNET_PREFIX)
    real = _known_unet_configs()[KNOWN_CONFIG[spec.config_class]]
    keys = [k for k in real if k in detected] if spec.kept is None else list(spec.kept)
    assert spec.kept is not None or len(keys) >= 15, sorted(keys)
    assert {k: detected[k] for k in keys} == {k: real[k] for k in keys}
    assert {k: detected[k] for k in spec.unet} == spec.unet  # the spec says what detection reports


def test_each_host_builds_its_models_in_a_cache_of_its_own(runtime_paths):
    """A model built under one ComfyUI never stands in for another host's build (their classes differ:
    0.33's Flux requires txt_ids_dims): the cache folder is named after the host's own version file."""
    import re

    version = re.search(r"__version__\s*=\s*[\"']([^\"']+)",
                        (Path(runtime_paths["comfyui"]) / "comfyui_version.py").read_text()).group(1)
    assert Path(runtime_paths["models"]).name == f"comfyui-{version}"
    assert Path(runtime_paths["models"]).parent == paths.MODELS
