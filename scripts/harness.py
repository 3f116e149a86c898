"""Run ComfyUI in-process with the ShapeFirst pack loaded, and execute graphs through its
own validator and executor. Used by the test suite, the demo and the benchmarks.

Must run under the runtime's python (see scripts/runtime.py). Boot once per process:
ComfyUI keeps its node registry and model cache in module globals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LOG = logging.getLogger("shapefirst.harness")


class GraphError(RuntimeError):
    """A graph ComfyUI refused (validation) or that failed while executing."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


class _Server:
    """The little of PromptServer that the executor talks to; keeps every message."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class RunResult:
    prompt_id: str
    ui: dict  # node id -> the node's "ui" output (what the browser receives in "executed")
    messages: list = field(default_factory=list)
    executor: object = None

    def output(self, node_id: str):
        """The raw output tuple of a node (tensors, dicts...) from the executor's cache."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if asyncio.iscoroutine(entry):  # newer ComfyUI: the cache's get is async
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        return getattr(entry, "outputs", entry)

    def output_value(self, node_id: str, index: int = 0):
        values = self.output(node_id)[index]
        return values[0] if isinstance(values, list) and len(values) == 1 else values


class ComfyHarness:
    def __init__(self, comfyui_dir: Path, pack_dir: Path, work_dir: Path, checkpoints_dir: Path | None = None,
                 output_dir: Path | None = None, cpu: bool = True):
        self.cpu = cpu
        self.comfyui_dir = Path(comfyui_dir)
        self.output_dir = Path(output_dir) if output_dir else Path(work_dir) / "output"
        self.pack_dir = Path(pack_dir)
        self.work_dir = Path(work_dir)
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else None
        self.server = _Server()
        self.executor = None
        self.loaded = False

    # -- boot ---------------------------------------------------------------------------
    def boot(self) -> "ComfyHarness":
        if str(self.comfyui_dir) not in sys.path:
            sys.path.insert(0, str(self.comfyui_dir))
        import comfy.cli_args

        comfy.cli_args.args.cpu = self.cpu  # before anything imports comfy.model_management
        import utils.extra_config  # noqa: F401  (before `nodes`, or `utils` resolves to comfy/utils.py)
        import folder_paths

        for d in (self.output_dir, self.work_dir / "temp", self.work_dir / "input"):
            d.mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(self.output_dir.resolve()))
        folder_paths.set_temp_directory(str(self.work_dir / "temp"))
        folder_paths.set_input_directory(str(self.work_dir / "input"))
        if self.checkpoints_dir:
            folder_paths.add_model_folder_path("checkpoints", str(self.checkpoints_dir), is_default=True)
        import execution
        import nodes

        if Path(nodes.__file__).resolve().parent != self.comfyui_dir.resolve():
            raise GraphError(f"`nodes` resolved to {nodes.__file__}, not ComfyUI's nodes.py: put ComfyUI first on "
                             "sys.path (the pack's own nodes/ package must only be imported as part of the pack)")
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        ok = asyncio.run(nodes.load_custom_node(str(self.pack_dir), module_parent="custom_nodes"))
        if not ok:
            raise GraphError(f"ComfyUI could not load the pack at {self.pack_dir}")
        self.loaded = True
        self.executor = execution.PromptExecutor(self.server, cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        return self

    # -- introspection ------------------------------------------------------------------
    def object_info(self, class_type: str | None = None) -> dict:
        """What GET /object_info answers, for one node type or all of them."""
        import nodes
        from comfy_api.internal import _ComfyNodeInternal

        def info(name: str) -> dict:
            cls = nodes.NODE_CLASS_MAPPINGS[name]
            if issubclass(cls, _ComfyNodeInternal):
                return cls.GET_NODE_INFO_V1()
            types = cls.INPUT_TYPES()
            return {
                "input": types,
                "input_order": {k: list(v.keys()) for k, v in types.items()},
                "output": cls.RETURN_TYPES,
                "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
                "name": name,
                "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
                "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
                "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
                "category": getattr(cls, "CATEGORY", "sd"),
            }

        if class_type is not None:
            return info(class_type)
        return {name: info(name) for name in nodes.NODE_CLASS_MAPPINGS}

    # -- execution ----------------------------------------------------------------------
    def validate(self, prompt: dict) -> tuple[bool, dict, list, dict]:
        import execution

        return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict, fresh_cache: bool = True, outputs: list[str] = ()) -> RunResult:
        """Validate and execute an API-format prompt. Raises GraphError on any failure.

        ComfyUI runs only what output nodes need; ``outputs`` names further nodes to run (to
        inspect their results). ``fresh_cache=False`` keeps the cache of the previous run, as
        a re-queue in the UI does.
        """
        import execution

        if fresh_cache:
            self.executor = execution.PromptExecutor(self.server, cache_type=False, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        prompt_id = str(uuid.uuid4())
        valid, error, to_run, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid and error.get("type") == "prompt_no_outputs" and outputs:
            valid, to_run, node_errors = True, [], {}
        for extra in outputs:  # nodes asked for explicitly are validated like output nodes
            ok, reasons, _ = asyncio.run(execution.validate_inputs(prompt_id, prompt, str(extra), {}))
            if not ok:
                valid, error = False, {"message": f"node {extra} is invalid", "details": str(reasons)}
        if not valid:
            raise GraphError(f"ComfyUI refused the graph: {error.get('message')} {error.get('details', '')} "
                             f"{_format_node_errors(node_errors)}", {"error": error, "node_errors": node_errors})
        self.server.messages = []
        to_run = list(to_run) + [str(o) for o in outputs if str(o) not in to_run]
        self.executor.execute(prompt, prompt_id, {"client_id": "shapefirst-harness"}, to_run)
        messages = list(self.server.messages)
        if not self.executor.success:
            err = next((d for e, d in messages if e == "execution_error"), {})
            raise GraphError(f"{err.get('node_type', '?')} (node {err.get('node_id', '?')}) failed: "
                             f"{err.get('exception_message', 'unknown error')}", err)
        return RunResult(prompt_id, dict(self.executor.history_result["outputs"]), messages, self.executor)


def _format_node_errors(node_errors: dict) -> str:
    parts = []
    for node_id, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            parts.append(f"[{info.get('class_type')} #{node_id}: {e.get('message')}: {e.get('details')}]")
    return " ".join(parts)


def default_paths() -> dict:
    """Paths of the runtime built by scripts/runtime.py (or COMFYUI_PATH)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import runtime

    rt = runtime.ensure_runtime()
    return {
        "comfyui": rt.comfyui,
        "pack": rt.custom_nodes / runtime.PACK_DIR_NAME,
        "models": rt.models,
    }


def quiet_logs() -> None:
    logging.basicConfig(level=os.environ.get("SHAPEFIRST_LOG", "WARNING"))
