"""AttentionMapCompare: KL divergence per step between the attention maps of two captured runs.

The paper's Fig. 16 compares sampling with and without a swap of the [EOS] Keys: the KL
divergence between the two runs' per-pixel distributions over text tokens stays small. This
node works for any two captures of runs with the same latent size and token count (two
prompts, two conditionings, a swap and no swap).
"""

from __future__ import annotations

from ..shapefirst import chart, metrics, ui_keys
from ..shapefirst.attention import BRANCH_NAMES
from ..shapefirst.records import kl_csv, to_json
from ._api import io
from ._common import CATEGORY, LOGGER, ShapeFirstInputError
from ._files import save_text_files
from .attention_capture import AttentionCaptureType
from .attention_common import check_run

COMPARE_NODE = "AttentionMapCompare"


def compare_runs(run_a, run_b, branch: int, index: int) -> dict:
    """KL(A || B) and KL(B || A) per common recorded step, mean over pixels (natural log)."""
    if run_a.grid != run_b.grid:
        raise ShapeFirstInputError(
            COMPARE_NODE, f"the captures' grids differ ({run_a.grid} vs {run_b.grid}); sample both at the same "
                          "image size with the same max_grid.")
    ta, tb = run_a.token_count.get(branch, 0), run_b.token_count.get(branch, 0)
    if ta != tb:
        raise ShapeFirstInputError(
            COMPARE_NODE, f"capture_a recorded {ta} token positions and capture_b {tb}; KL needs the same positions: "
                          "use prompts that fit in the same number of 77-token chunks.")
    for name, run in (("capture_a", run_a), ("capture_b", run_b)):
        kept = run.tokens_kept(branch)
        if kept < run.token_count[branch]:
            raise ShapeFirstInputError(
                COMPARE_NODE, f"{name} kept maps for {kept} of {run.token_count[branch]} token positions; KL needs "
                              f"every position: set max_tokens to at least {run.token_count[branch]} in its capture.")
    common = sorted(set(run_a.steps(branch)) & set(run_b.steps(branch)))
    if not common:
        raise ShapeFirstInputError(COMPARE_NODE, "the two captures share no recorded step; record the same steps "
                                                 "(same step count and step_stride) in both.")
    pa = run_a.stacked(branch, index)[[run_a.steps(branch).index(s) for s in common]]
    pb = run_b.stacked(branch, index)[[run_b.steps(branch).index(s) for s in common]]
    return {"steps": common, "kl_a_b": metrics.kl_per_step(pa, pb), "kl_b_a": metrics.kl_per_step(pb, pa),
            "sigmas_a": [run_a.sigmas[s] for s in common], "sigmas_b": [run_b.sigmas[s] for s in common]}


class AttentionMapCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=COMPARE_NODE,
            display_name="Attention Map Compare (KL per step)",
            category=f"{CATEGORY}/attention",
            description=(
                "KL divergence, per sampling step, between the cross-attention maps of two captured runs: for every "
                "pixel the distribution over text tokens of run A against run B, averaged over pixels (natural log). "
                "The paper's Fig. 16 compares sampling with and without an [EOS] Key swap. Needs two captures of "
                "the same image size and token count with every token kept. Draws the curves, saves JSON and CSV."),
            inputs=[
                AttentionCaptureType.Input("capture_a", tooltip="From the first Attention Map Capture (e.g. no swap)."),
                io.Image.Input("images_a", tooltip="Decoded output of the sampler that used capture A's model "
                                                   "(orders this node after that run)."),
                AttentionCaptureType.Input("capture_b", tooltip="From the second Attention Map Capture (e.g. Key swap)."),
                io.Image.Input("images_b", tooltip="Decoded output of the sampler that used capture B's model."),
                io.Combo.Input("branch", options=["cond", "uncond"], default="cond",
                               tooltip="Which branch to compare: cond = positive prompt; uncond needs record_uncond."),
                io.Int.Input("batch_index", default=0, min=0, max=4095, tooltip="Which image of the batch (0 = first)."),
                io.String.Input("filename_prefix", default="shapefirst/attention_kl",
                                tooltip="JSON and CSV files are saved under ComfyUI's output folder with this prefix."),
            ],
            outputs=[
                io.Image.Output("chart", display_name="chart", tooltip="KL(A||B) and KL(B||A) over the steps."),
                io.String.Output("kl_json", display_name="kl_json", tooltip="The KL values as JSON text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, capture_a, images_a, capture_b, images_b, branch="cond", batch_index=0,
                filename_prefix="shapefirst/attention_kl") -> io.NodeOutput:
        import torch

        run_a, b = check_run(COMPARE_NODE, capture_a, images_a, branch, batch_index, what="capture_a")
        run_b, _ = check_run(COMPARE_NODE, capture_b, images_b, branch, batch_index, what="capture_b")
        if capture_a is capture_b:
            raise ShapeFirstInputError(COMPARE_NODE, "capture_a and capture_b are the same capture; connect two "
                                                     "Attention Map Capture nodes, one per run.")
        data = dict(compare_runs(run_a, run_b, b, batch_index), node=COMPARE_NODE,
                    branch=BRANCH_NAMES[b], batch_index=batch_index)
        files = save_text_files(filename_prefix, "shapefirst/attention_kl",
                                {"json": to_json(data), "csv": kl_csv(data)})
        image = torch.from_numpy(chart.render_figure("attention_kl", data))[None]
        LOGGER.info("%s: %d steps, files %s", COMPARE_NODE, len(data["steps"]), ", ".join(f["filename"] for f in files))
        return io.NodeOutput(image, to_json(data), ui={ui_keys.ATTENTION_KL: [dict(data, files=files)]})
