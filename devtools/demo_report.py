"""What the demo writes about its runs: the lines of ``summary.md`` and the ``--ui`` start message.

Every link in the summary is relative to the output folder and points at a file in it: previews a
node keeps in ComfyUI's temp folder are copied next to the outputs first (the temp folder is
emptied by the next run). The truncated-guidance reports (what the nodes show in their view:
passes skipped, share of plain CFG's model work saved) come from the nodes' ``ui`` output and,
for the guider and the model patch, from the event they send instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

GUIDANCE_UI = "shapefirst_guidance"  # js/ui_keys.json
GUIDANCE_EVENT = "shapefirst.guidance"
DATA_KEYS = ("shapefirst_curves", "shapefirst_attention", "shapefirst_attention_kl")  # payloads with "files"
WORLD_NOTE = (
    "The SD1.5 workflows ran on ShapeFirst World, a small SD1.5-format model trained in this repository on "
    "procedural shapes (8 shapes, 8 colours, 64 px images; docs/world.md), with their prompts put in its words. "
    "For the paper's own pictures pass --ckpt with a real Stable Diffusion 1.x checkpoint, e.g. "
    "v1-5-pruned-emaonly.safetensors."
)
FAMILIES_NOTE = (
    "The other families' workflows (SD3.5, Wan, Flux, Qwen-Image) ran on tiny seeded models with RANDOM "
    "weights (their real architectures, no training): their numbers, curves and timings are real, their images "
    "are noise."
)


def _link(out: Path, path: Path, text: str | None = None, image: bool = False) -> str:
    rel = Path(os.path.relpath(path, out)).as_posix()
    return f"{'!' if image else ''}[{text or path.name}]({rel})"


def guidance_reports(ui: dict, messages: list) -> list[tuple[str, dict]]:
    """(node id, report) of every truncated-guidance node of a run: sampler reports from the ``ui``
    output, guider and model-patch reports from their events."""
    found = [(nid, r) for nid, payload in ui.items() for r in payload.get(GUIDANCE_UI, [])]
    found += [(str(d.get("node")), d.get("report", {})) for event, d in messages if event == GUIDANCE_EVENT]
    return found


def saved_share(reports: list[tuple[str, dict]]) -> float | None:
    """Share of plain CFG's model work that a run's truncated guidance did not do (None: none ran)."""
    full = sum(r.get("rows_full_cfg", 0) for _, r in reports)
    done = sum(r.get("rows_computed", 0) for _, r in reports)
    return None if not full else max(0.0, 1.0 - done / full)


def _guidance_line(node_id: str, r: dict) -> str:
    line = (f"node {node_id}: truncated guidance: {r.get('steps', 0)} steps, {r.get('guided_evaluations', 0)} of "
            f"{r.get('evaluations', 0)} model evaluations guided, {r.get('skipped_passes', 0)} text passes "
            f"skipped: **{100 * r.get('saved_fraction', 0.0):.1f}% of plain CFG's model work saved**")
    return line + (f" ({r['note']})" if r.get("note") else "")


def describe(ui: dict, messages: list, out: Path, temp_dir: Path, name: str) -> tuple[list[str], list[Path]]:
    """Markdown lines for one workflow's results: its images and data files (relative links; temp
    previews copied to ``out/previews/<name>/``) and the pack's reports; and the images of its first
    node that showed any (in ``out``)."""
    notes, first = [], []
    for node_id, payload in sorted(ui.items(), key=lambda item: node_order(item[0])):
        for image in payload.get("images", []):
            path = _image_path(image, out, temp_dir, name, node_id)
            notes.append(f"node {node_id}: {_link(out, path, image=True)}")
            if not first or first[0][0] == node_id:
                first.append((node_id, path))
        for key in DATA_KEYS:
            for entry in payload.get(key, []):
                files = [out / f.get("subfolder", "") / f["filename"] for f in entry.get("files", [])]
                if files:
                    notes.append(f"node {node_id}: data " + ", ".join(_link(out, f) for f in files))
        for curves in payload.get("shapefirst_curves", []):
            c = curves["curves"]
            notes.append(f"node {node_id}: {curves['steps']} steps; |x_t - x_0|/|x_0| at the first step: "
                         f"low {c['ratio_denoise_low'][0]:.3f}, high {c['ratio_denoise_high'][0]:.3f}")
        for table in payload.get("shapefirst_tokens", []):
            rows = sum(len(e.get("rows", [])) for e in table.get("encoders", []))
            notes.append(f"node {node_id}: EOS swap, {rows} token rows; {table.get('title', '')}")
    reports = sorted(guidance_reports(ui, messages), key=lambda item: node_order(item[0]))
    return notes + [_guidance_line(nid, r) for nid, r in reports], [path for _, path in first]


def node_order(node_id: str) -> tuple:
    """Node ids in numeric order ("12:4", a node inside a subgraph, after 12)."""
    return tuple(int(p) if p.isdigit() else 0 for p in str(node_id).split(":"))


def _image_path(image: dict, out: Path, temp_dir: Path, name: str, node_id: str) -> Path:
    """Where an image of the ``ui`` output lies in ``out``; a temp preview is copied there first."""
    sub, filename = image.get("subfolder", ""), image["filename"]
    if image.get("type") == "output":
        return out / sub / filename
    dest = out / "previews" / name / f"node{node_id}_{filename}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(temp_dir / sub / filename, dest)
    return dest


def summary(rows, ckpt: Path, is_world: bool, mode: str, size, steps, total, peak_mb: float | None,
            top: list[str] = ()) -> str:
    """summary.md: the settings, the headline saving, ``top`` (the World's pictures), a table of the runs
    and each run's files and reports.

    ``rows``: (workflow, result, seconds, CPU seconds, saved share or None, notes)."""
    truncated = [(r[0], r[4]) for r in rows if r[4] is not None]
    lines = ["# ShapeFirst demo run", "",
             f"- checkpoint: {ckpt.name}" + (" (ShapeFirst World, trained on shapes: docs/world.md)" if is_world else ""),
             "- workflows of other model families (SD3.5, Wan, Flux, Qwen-Image): "
             + ("the tiny seeded models of devtools/families.py (random weights)" if is_world
                else "skipped (they need that family's files)"),
             f"- mode: {mode}; image size: {size or 'as in each workflow'}; step cap: {steps or 'none'}"
             + ("" if steps is None else "; `--full` runs the paper's step counts"),
             f"- total: {total[0]:.0f} s wall, {total[1]:.0f} s CPU time of the process"
             + (f"; peak memory (resident) {peak_mb:.0f} MB" if peak_mb else ""), ""]
    if truncated:
        best = max(truncated, key=lambda t: t[1])
        lines += [f"**Truncated guidance** (the paper's eq. 9: guidance only in the first steps) ran in "
                  f"{len(truncated)} workflow(s) and saved up to {100 * best[1]:.1f}% of plain CFG's model work "
                  f"({best[0]}); each workflow's share is in the table, each node's report below.", ""]
    if is_world:
        lines += [f"> {WORLD_NOTE}", ">", f"> {FAMILIES_NOTE}", ""]
    lines += list(top)
    lines += ["## Every workflow", "", "| workflow | result | seconds | CPU seconds | model work saved by truncated guidance |",
              "|---|---|---|---|---|"]
    lines += [f"| [{name}](#{name}) | {status} | {secs:.1f} | {cpu:.1f} | "
              f"{'-' if saved is None else f'{100 * saved:.1f}%'} |"
              for name, status, secs, cpu, saved, _ in rows]
    for name, _, _, _, _, notes in rows:
        lines += ["", f"## {name}", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the --ui start message
LOADER_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "UNETLoader": "diffusion_models",
                  "CLIPLoader": "text_encoders", "DualCLIPLoader": "text_encoders",
                  "TripleCLIPLoader": "text_encoders", "VAELoader": "vae"}
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".sft", ".gguf")


def workflow_files(path: Path) -> list[tuple[str, str]]:
    """(models folder, file name) of every model file a UI-format workflow's loaders ask for."""
    wanted = []
    for node in json.loads(Path(path).read_text()).get("nodes", []):
        folder = LOADER_FOLDERS.get(node.get("type"))
        values = (node.get("widgets_values") or []) if folder else []
        for value in values:
            if isinstance(value, str) and value.endswith(MODEL_SUFFIXES) and (folder, value) not in wanted:
                wanted.append((folder, value))
    return wanted


def ui_message(workflows: list[Path], models: Path, ckpt: Path, world_copies: Path | None = None,
               ui_steps: int = 20) -> list[str]:
    """What to load in the UI, and which shipped workflows run on the files in ``models``.
    ``world_copies``: the folder holding the World's copies of the SD1.x workflows (None: ``ckpt``
    is the user's own)."""
    ready, choose, missing = [], [], []
    for wf in workflows:
        files = workflow_files(wf)
        absent = [(folder, name) for folder, name in files if not (models / folder / name).exists()]
        if not absent:
            ready.append(wf.stem)
        elif len(files) == 1 and files[0][0] == "checkpoints":  # an SD1.x workflow: one checkpoint, nothing else
            choose.append((wf.stem, files[0][1]))
        else:
            missing.append((wf.stem, absent))
    lines = ["open a workflow: Workflow > Browse Templates > comfyui-shapefirst."]
    if ready:
        lines.append(f"{len(ready)} workflow(s) run as shipped: {', '.join(ready)}.")
    if choose and world_copies is not None:
        world_names = sorted(p.stem for p in world_copies.glob("*.json"))
        lines.append(f"{len(world_names)} SD1.5 workflow(s) run on ShapeFirst World ({ckpt.name}, a small model "
                     "trained on shapes), each in seconds to half a minute on a CPU: open the Workflows sidebar "
                     "(press w) > "
                     f"{world_copies.name}/ (the templates with its checkpoint, 64 x 64 images, the prompts in its "
                     f"words and at most {ui_steps} steps per sampler; this folder is rewritten at every start, so "
                     f"save your changes under another name): {', '.join(world_names)}.")
        asked = sorted({name for _, name in choose})
        lines.append(f"The templates themselves ask for {', '.join(asked)} at 512 px: for the World choose "
                     f"{ckpt.name} in Load Checkpoint, set 64 x 64 and write in its words (8 shapes, 8 colours, "
                     "5 places, e.g. \"a red circle above a blue square\"; docs/world.md).")
    elif choose:
        asked = sorted({name for _, name in choose})
        lines.append(f"{len(choose)} SD1.x workflow(s) run on {ckpt.name}: they ask for {', '.join(asked)}; choose "
                     f"{ckpt.name} in their Load Checkpoint node. They: {', '.join(s for s, _ in choose)}.")
        lines.append("At a workflow's own size and steps (512 px, 50 steps) a CPU takes minutes per sampler: lower "
                     "width, height and steps for a first look.")
    if missing:
        lines.append(f"{len(missing)} workflow(s) need model files that are not in {models}; put them in "
                     "the folder named before each file and start again:")
        lines += [f"  {stem}: " + ", ".join(f"{folder}/{name}" for folder, name in absent) for stem, absent in missing]
    return lines
