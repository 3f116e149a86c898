"""The pack as ComfyUI and the Comfy Registry see it: metadata, loading, node definitions."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUR_NODES = ("FrequencySplitPreview", "FrequencyTrace", "FrequencyCurves", "EOSSwapConditioning", "EOSSwapKVPatch")


def _requirements() -> set[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_pyproject_is_ready_for_the_registry_and_matches_requirements():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "urls"):
        assert project.get(key), key
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", project["name"])
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy.get(key), key
    assert set(project["dependencies"]) == _requirements()
    assert not any(re.match(r"torch\b", dep) for dep in project["dependencies"])  # ComfyUI owns torch
    assert "web" not in comfy  # js/ is registered once, through WEB_DIRECTORY


def test_pure_math_package_never_imports_comfy():
    for path in (REPO / "shapefirst").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                assert root not in {"comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths", "server"}, \
                    f"{path.name} imports {name}"


def test_comfy_api_is_imported_in_one_place():
    importers = [p.relative_to(REPO) for p in (REPO / "nodes").glob("*.py") if "comfy_api" in p.read_text()]
    assert importers == [Path("nodes/_api.py")]


def test_top_level_init_is_thin():
    tree = ast.parse((REPO / "__init__.py").read_text())
    kinds = {type(n).__name__ for n in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}


@pytest.mark.comfy
def test_every_node_is_registered_with_descriptions_and_tooltips(comfy):
    info = comfy.object_info()
    for name in OUR_NODES:
        node = info[name]
        assert node["python_module"] == "custom_nodes.comfyui-shapefirst"
        assert node["category"].startswith("ShapeFirst/")
        assert len(node["description"]) > 40
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(node["output_tooltips"]), f"{name} has an output without tooltip"


@pytest.mark.comfy
def test_pack_loads_without_warnings(runtime_paths, tmp_path):
    """A fresh process loads the pack through ComfyUI's own loader with no warning or error."""
    import subprocess
    import sys

    script = f"""
import logging, sys
sys.path.append({str(REPO)!r})
from devtools import boot
nodes = boot.boot(__import__("pathlib").Path({str(tmp_path)!r}), pack=False)
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r)
logging.getLogger().addHandler(H(level=logging.WARNING))
try:
    boot.load_pack()
    print("OK")
except boot.BootError:
    print("FAILED")
for r in records: print("LOG", r.levelname, r.getMessage())
print("NODES", sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k in {list(OUR_NODES)!r}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "OK" in out.stdout, out.stdout + out.stderr
    assert "LOG" not in out.stdout, out.stdout
    assert f"NODES {sorted(OUR_NODES)}" in out.stdout
