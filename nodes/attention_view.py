"""AttentionMapView: the paper's views of one captured run.

* heatmap overlays, tokens x chosen steps, [SOS] and [EOS] included (Fig. 1a);
* per token class (SOS / SEM / EOS / padding) the attention weight averaged over pixels, per step
  (Fig. 3);
* shape convergence: F1 of the Canny edges of each token's map against the final image's, per
  step and relative to the last step (Fig. 1b);
* raw maps (safetensors) and metrics (JSON, CSV; contents from shapefirst.records) under ComfyUI's
  output folder; the maps as a
  sprite in the temp folder for the token selector and step slider drawn by js/attention_view.js.
"""

from __future__ import annotations

import torch

from ..shapefirst import chart, heatmaps, metrics, ui_keys
from ..shapefirst.records import raw_maps_file, to_json, view_metrics_csv
from ..shapefirst.tokens import SEM
from ._api import io
from ._common import CATEGORY, LOGGER, ShapeFirstInputError
from ._files import save_temp_png, save_text_files
from .attention_capture import AttentionCaptureType
from .attention_common import check_prompt_length, check_run, prompt_tokens, select_steps, select_tokens

VIEW_NODE = "AttentionMapView"
SPRITE_MAX_CELLS = 4096  # tokens x steps sent to the browser


def view_chart(steps, shares: dict, f1_mean, f1_rel):
    return chart.render_figure("attention_view", {"steps": steps, "class_shares": shares,
                                                  "edge_f1": {"mean": f1_mean, "relative": f1_rel}})


class AttentionMapView(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=VIEW_NODE,
            display_name="Attention Map View (tokens x steps, metrics)",
            category=f"{CATEGORY}/attention",
            description=(
                "Views of one captured run: heatmaps of chosen tokens over chosen steps, [SOS] and [EOS] included "
                "(the paper's Fig. 1a); the attention weight of each token class (SOS / SEM / EOS / padding) "
                "averaged over pixels per step (Fig. 3); and shape convergence, the F1 of Canny edges of each "
                "token's map against the final image, relative to the last step (Fig. 1b). Saves raw maps "
                "(safetensors) and metrics (JSON, CSV) under the output folder; a token selector and a step "
                "slider scrub through the maps in the node."),
            inputs=[
                AttentionCaptureType.Input("capture", tooltip="From Attention Map Capture."),
                io.Image.Input("images", tooltip="The decoded output of the sampler that used the captured model "
                                                 "(also makes this node run after sampling)."),
                io.Clip.Input("clip", tooltip="The CLIP that encoded the prompt, for token labels and classes."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The exact prompt text of the recorded branch (the negative prompt for "
                                        "'uncond'). Must tokenize to as many positions as were captured."),
                io.Combo.Input("branch", options=["cond", "uncond"], default="cond",
                               tooltip="Which branch to show: cond = positive prompt; uncond needs record_uncond."),
                io.String.Input("tokens", default="auto",
                                tooltip="Token positions for the heatmaps and F1: 'auto' = [SOS], every word token "
                                        "and [EOS]; or numbers and ranges, e.g. '0, 2-5, 9' (0 = [SOS])."),
                io.String.Input("steps", default="auto",
                                tooltip="Steps for the heatmap grid: 'auto' = 6 spread over the run (first and last "
                                        "included), 'all', or step numbers from 0, e.g. '0, 5, 10'."),
                io.Int.Input("batch_index", default=0, min=0, max=4095,
                             tooltip="Which image of the batch (0 = first). Video: which kept frame, video x kept "
                                     "frames + k (frame_stride of the capture); drawn over the decoded frame at the "
                                     "same time."),
                io.Int.Input("cell_size", default=128, min=32, max=512,
                             tooltip="Size in px of one heatmap cell in the grid image."),
                io.Int.Input("edge_size", default=128, min=32, max=1024,
                             tooltip="Working size (long side, px) for the Canny edges of maps and image in the F1 (the image is shrunk to it, maps enlarged). 128 keeps CPUs quick; maps are at most 64x64 anyway."),
                io.Float.Input("canny_low", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Canny low threshold (kornia; on [0, 1] intensities). 0.1 = kornia's default."),
                io.Float.Input("canny_high", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Canny high threshold, at least canny_low. 0.2 = kornia's default."),
                io.Int.Input("edge_tolerance", default=1, min=0, max=16,
                             tooltip="An edge pixel counts as matched within this many px (0 = exact)."),
                io.String.Input("filename_prefix", default="shapefirst/attention",
                                tooltip="Raw maps (.safetensors) and metrics (.json, .csv) are saved under ComfyUI's "
                                        "output folder with this prefix."),
            ],
            outputs=[
                io.Image.Output("heatmaps", display_name="heatmaps", tooltip="Grid of heatmaps: rows = tokens, columns = steps."),
                io.Image.Output("chart", display_name="chart", tooltip="Token-class weights and edge F1 over steps."),
                io.String.Output("metrics_json", display_name="metrics_json", tooltip="Every metric as JSON text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, canny_low=None, canny_high=None):
        if canny_low is not None and canny_high is not None and canny_low > canny_high:
            return f"{VIEW_NODE}: canny_low ({canny_low}) must not exceed canny_high ({canny_high}); lower canny_low."
        return True

    @classmethod
    def execute(cls, capture, images, clip, prompt, branch="cond", tokens="auto", steps="auto", batch_index=0,
                cell_size=128, edge_size=128, canny_low=0.1, canny_high=0.2, edge_tolerance=1,
                filename_prefix="shapefirst/attention") -> io.NodeOutput:
        import comfy.utils

        if canny_low > canny_high:
            raise ShapeFirstInputError(VIEW_NODE, f"canny_low ({canny_low}) must not exceed canny_high ({canny_high}).")
        run, b = check_run(VIEW_NODE, capture, images, branch, batch_index)
        labels, roles = prompt_tokens(VIEW_NODE, clip, prompt)
        check_prompt_length(VIEW_NODE, run, b, roles)
        kept = run.tokens_kept(b)
        picked = select_tokens(VIEW_NODE, tokens, roles, kept)
        recorded = run.steps(b)
        grid_steps = select_steps(VIEW_NODE, steps, recorded)

        maps = run.stacked(b, batch_index)  # (S, T_kept, gh, gw)
        shares = metrics.class_shares(run.stacked_token_means(b, batch_index), roles)
        image = images[run.image_index(batch_index, images.shape[0])].to("cpu", torch.float32)
        progress = comfy.utils.ProgressBar(len(recorded) * len(picked) + 2)
        f1 = metrics.shape_convergence(image, maps[:, picked], edge_size, canny_low, canny_high, edge_tolerance,
                                       on_map=progress.update)
        sem = [k for k, i in enumerate(picked) if roles[i] == SEM] or list(range(len(picked)))
        f1_mean = f1[sem].mean(dim=0).tolist()
        f1_rel = metrics.relative(f1_mean)

        cols = [recorded.index(s) for s in grid_steps]
        row_labels = [f"{i} {labels[i]}" for i in picked]
        grid = heatmaps.token_step_grid(image, maps[cols][:, picked].transpose(0, 1), row_labels,
                                        [f"step {s}" for s in grid_steps], cell=cell_size)
        chart_image = torch.from_numpy(view_chart(recorded, shares, f1_mean, f1_rel))[None]
        progress.update(1)

        sigmas = [run.sigmas[s] for s in recorded]
        data = {
            "node": VIEW_NODE, "branch": branch, "batch_index": batch_index, "steps": recorded,
            "total_steps": run.total_steps, "sigmas": sigmas, "grid": list(run.grid), "latent": list(run.latent_hw),
            "layers": run.layer_names, "tokens_kept": kept,
            "video": {"frames": run.frames, "total_frames": run.total_frames, "videos": run.videos,
                      "frame": run.frames[batch_index % len(run.frames)],
                      "image": run.image_index(batch_index, images.shape[0])} if run.frames else None,
            "tokens": [{"index": i, "label": labels[i], "role": roles[i]} for i in range(len(roles))],
            "selected_tokens": picked, "grid_steps": grid_steps, "class_shares": shares,
            "edge_f1": {"per_token": {str(i): f1[k].tolist() for k, i in enumerate(picked)},
                        "mean": f1_mean, "relative": f1_rel, "mean_over": [picked[k] for k in sem],
                        "tolerance_px": edge_tolerance, "canny": [canny_low, canny_high]},
            "capture_bytes": run.nbytes(),
        }
        files = save_text_files(filename_prefix, "shapefirst/attention", {
            "safetensors": raw_maps_file(run, labels, roles), "json": to_json(data),
            "csv": view_metrics_csv(recorded, sigmas, shares, f1_mean, f1_rel)})
        ui = dict(data, files=files, **cls._browser_maps(image, maps, picked, recorded))
        progress.update(1)
        LOGGER.info("%s: %d steps x %d tokens, files %s", VIEW_NODE, len(recorded), len(picked),
                    ", ".join(f["filename"] for f in files))
        return io.NodeOutput(grid, chart_image, to_json(data), ui={ui_keys.ATTENTION: [ui]})

    @staticmethod
    def _browser_maps(image, maps, picked, recorded) -> dict:
        """Sprite (rows = picked tokens, columns = recorded steps) and the image, as temp PNGs."""
        rows = picked
        cols = list(range(len(recorded)))
        if len(rows) * len(cols) > SPRITE_MAX_CELLS:
            stride = -(-len(rows) * len(cols) // SPRITE_MAX_CELLS)
            cols = cols[::stride]
        sel = maps[cols][:, rows].transpose(0, 1)  # (rows, cols, gh, gw)
        sprite = save_temp_png(heatmaps.sprite(sel), "maps")
        longest = max(image.shape[0], image.shape[1])
        small = image if longest <= 512 else heatmaps.upsample(
            image.permute(2, 0, 1), metrics.working_size(image.shape[0], image.shape[1], 512)).permute(1, 2, 0)
        picture = save_temp_png(heatmaps.to_uint8(small), "image")
        return {"sprite": sprite, "picture": picture, "sprite_rows": rows,
                "sprite_steps": [recorded[c] for c in cols], "cell": list(maps.shape[-2:])}
