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


def _comfy_cli_python() -> str | None:
    """A python with comfy-cli: this one (the runtime installs devtools/requirements-dev.txt) or
    $SHAPEFIRST_COMFY_CLI_PYTHON (e.g. a small venv of its own)."""
    import importlib.util
    import os
    import sys

    other = os.environ.get("SHAPEFIRST_COMFY_CLI_PYTHON")
    if other:
        return other
    return sys.executable if importlib.util.find_spec("comfy_cli") else None


def test_comfy_node_validate_passes_on_the_repository(tmp_path):
    """`comfy node validate` (comfy-cli, what `comfy node publish` runs first): the configuration parses with
    no warning and its security check (ruff S102 exec, S307 eval, E702 two statements on a line) finds nothing."""
    import os
    import subprocess
    import sys

    python = _comfy_cli_python()
    if python is None:
        pinned = next(line for line in (REPO / "devtools" / "requirements-dev.txt").read_text().splitlines()
                      if line.startswith("comfy-cli"))
        msg = (f"comfy-cli is not installed in the tests' python ({sys.executable}): pip install {pinned} there, "
               "or set SHAPEFIRST_COMFY_CLI_PYTHON to a python that has it")
        if os.environ.get("COMFYUI_PYTHON") or os.environ.get("SHAPEFIRST_COMFYUI_SRC"):
            pytest.skip(msg)  # a runtime of the user's own: the project's build did not install it
        pytest.fail(msg)  # the project's own runtime installs devtools/requirements-dev.txt
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"), DO_NOT_TRACK="1",
               RUFF_CACHE_DIR=str(tmp_path / "ruff-cache"))  # comfy-cli's config and ruff's cache stay out of the repo
    out = subprocess.run([python, "-m", "comfy_cli", "--skip-prompt", "node", "validate"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "All validation checks passed successfully" in text, text
    assert "Warning" not in text and "Error" not in text, text


def test_icon_and_urls_are_what_the_registry_accepts():
    """The Registry's pyproject rules (docs.comfy.org/registry/specifications) that comfy-cli does not check
    itself: the URL keys it reads, and an icon of SVG, PNG, JPG or GIF no larger than 800 x 400 px. The icon
    URL names a file of this repository."""
    from PIL import Image

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    urls, comfy = data["project"]["urls"], data["tool"]["comfy"]
    assert {"Homepage", "Documentation", "Repository", "Issues"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    icon = comfy["Icon"]
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", icon)
    assert match, icon
    local = REPO / match.group(1)
    assert local.suffix.lower() in {".svg", ".png", ".jpg", ".jpeg", ".gif"} and local.is_file()
    if local.suffix.lower() != ".svg":
        with Image.open(local) as im:
            assert im.width <= 800 and im.height <= 400, im.size
    assert re.fullmatch(r"(==|>=|<=|!=|~=|>|<)?\d+\.\d+\.\d+", comfy["requires-comfyui"])
