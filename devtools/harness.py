"""Execute graphs in an in-process ComfyUI (booted by devtools.comfy) through its own validator
and executor. Used by the test suite, the demo, the workflow generator and the benchmarks.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import boot


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
    ui: dict  # node id -> the node's "ui" output (what the browser receives in "executed")
    executor: object  # the PromptExecutor that ran it (its cache holds every node's outputs)
    messages: list = field(default_factory=list)  # (event, data) sent to the "browser" during the run

    def output(self, node_id: str):
        """The raw output tuple of a node (tensors, dicts...) from the executor's cache."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if inspect.isawaitable(entry):  # newer ComfyUI: the cache's get is a coroutine
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        return getattr(entry, "outputs", entry)

    def output_value(self, node_id: str, index: int = 0):
        values = self.output(node_id)[index]
        return values[0] if isinstance(values, list) and len(values) == 1 else values


def executor_kwargs(execution, main_py: Path | None = None) -> dict:
    """PromptExecutor's cache arguments as the host's own main.py builds them for the classic cache.

    ComfyUI 0.3.64 takes ``cache_size``; 0.3.75 ``cache_args`` with "lru" and "ram"; later versions
    also read ``cache_args["ram_inactive"]`` on every run. The keys are read from the host's
    execution.py and main.py, each set to 0 (what main.py passes with --cache-classic)."""
    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    if "cache_args" in params:
        text = Path(execution.__file__).read_text()
        keys = set(re.findall(r"cache_args(?:\[|\.get\()\s*[\"']([A-Za-z_]\w*)[\"']", text))
        main_py = main_py or Path(execution.__file__).with_name("main.py")
        if main_py.exists():
            for literal in re.findall(r"cache_args\s*=\s*\{([^}]*)\}", main_py.read_text()):
                keys.update(re.findall(r"[\"']([A-Za-z_]\w*)[\"']\s*:", literal))
        return {"cache_type": False, "cache_args": dict.fromkeys(sorted(keys or {"lru", "ram"}), 0)}
    if "cache_size" in params:
        return {"cache_type": False, "cache_size": 0}
    return {"cache_type": False}


class ComfyHarness:
    def __init__(self, work_dir: Path, checkpoints_dir: Path | None = None, output_dir: Path | None = None,
                 cpu: bool = True):
        self.cpu = cpu
        self.output_dir = Path(output_dir) if output_dir else Path(work_dir) / "output"
        self.work_dir = Path(work_dir)
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else None
        self.server = _Server()
        self.executor = None

    # -- boot ---------------------------------------------------------------------------
    def boot(self) -> "ComfyHarness":
        boot.boot(self.work_dir, self.output_dir, self.checkpoints_dir, cpu=self.cpu)
        self.executor = self._new_executor()
        return self

    def _new_executor(self):
        import execution

        return execution.PromptExecutor(self.server, **executor_kwargs(execution))

    def release(self) -> None:
        """Free what the last run holds: the executor's cached outputs (models, latents, images) and the
        models ComfyUI keeps loaded, so the next graph needs only the memory of what it loads itself."""
        import gc

        import comfy.model_management as mm

        self.executor = self._new_executor()
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache()

    # -- introspection ------------------------------------------------------------------
    def object_info(self) -> dict:
        """What GET /object_info answers: every node type's definition."""
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

        return {name: info(name) for name in nodes.NODE_CLASS_MAPPINGS}

    # -- execution ----------------------------------------------------------------------
    def run(self, prompt: dict, fresh_cache: bool = True, outputs: list[str] = ()) -> RunResult:
        """Validate and execute an API-format prompt. Raises GraphError on any failure.

        ComfyUI runs only what output nodes need; ``outputs`` names further nodes to run (to
        inspect their results). ``fresh_cache=False`` keeps the cache of the previous run, as
        a re-queue in the UI does.
        """
        import execution

        if fresh_cache:
            self.executor = self._new_executor()
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
        return RunResult(dict(self.executor.history_result["outputs"]), self.executor, messages)


def _format_node_errors(node_errors: dict) -> str:
    parts = []
    for node_id, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            parts.append(f"[{info.get('class_type')} #{node_id}: {e.get('message')}: {e.get('details')}]")
    return " ".join(parts)
