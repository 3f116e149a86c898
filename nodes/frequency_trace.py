"""FrequencyTrace + FrequencyCurves: the paper's Fig. 2b/2c for a real sampling run.

FrequencyTrace clones the MODEL and adds a SAMPLER_SAMPLE wrapper that records, at every
step, the sampler state x_t and the model's x_0 prediction. It only observes: the sampled
result is bit-identical to the same sampler without it, for every sampler node (KSampler,
KSamplerAdvanced, SamplerCustom/Advanced) and every sampler and scheduler. FrequencyCurves
turns one recorded run into curves, a chart IMAGE, data drawn by ShapeFirst's JS in the
node, and JSON/CSV files under ComfyUI's output directory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..shapefirst import chart, ui_keys
from ..shapefirst import trace as curves_math
from ._api import io
from ..shapefirst.records import to_json
from ._common import CATEGORY, LOGGER, ShapeFirstInputError, as_validation, check_fraction_open
from ._files import save_text_files
from ._patching import RunRecorder

TRACE_NODE = "FrequencyTrace"
CURVES_NODE = "FrequencyCurves"
FrequencyTraceType = io.Custom("SHAPEFIRST_FREQUENCY_TRACE")
_ids = itertools.count(1)


def _vp_coefficients(model_sampling, sigma: torch.Tensor) -> tuple[float, float, float]:
    """(c_in, a, b) at ``sigma``: VP state = c_in * x, and x_t = a * x_0 + b * eps in VP form.

    Derived from the model's own sampling object, so eps, v, EDM and flow models all work.
    """
    s = sigma.reshape(1).to(torch.float32).cpu()
    one = torch.ones((1, 1, 1, 1))
    zero = torch.zeros((1, 1, 1, 1))
    c_in = float(model_sampling.calculate_input(s, one.clone()).flatten()[0])
    a = float(model_sampling.calculate_input(s, model_sampling.noise_scaling(s, zero.clone(), one.clone())).flatten()[0])
    b = float(model_sampling.calculate_input(s, model_sampling.noise_scaling(s, one.clone(), zero.clone())).flatten()[0])
    return c_in, a, b


@dataclass
class RecordedRun:
    """Everything recorded for one sampling call (CPU float32 tensors)."""

    sigmas: list[float]
    noise: torch.Tensor
    c_in: list[float]
    signal_coef: list[float]
    noise_coef: list[float]
    xt: dict[int, torch.Tensor] = field(default_factory=dict)
    x0_pred: dict[int, torch.Tensor] = field(default_factory=dict)
    final: torch.Tensor | None = None  # sampler output in the model's latent space
    output: torch.Tensor | None = None  # the same, as the sampler node returns it (LATENT["samples"])

    @property
    def complete(self) -> bool:
        return self.final is not None


class FrequencyRecorder(RunRecorder):
    """Holds the last finished sampling run of the model it patched. Reset at the start of each run."""

    def __init__(self):
        self.id = next(_ids)
        super().__init__(f"frequency_trace.{self.id}")
        self.run: RecordedRun | None = None
        self._model = None

    def begin(self, guider, sigmas, extra_args, noise) -> None:
        model_sampling = guider.inner_model.model_sampling
        self._model = guider.inner_model
        coefs = [_vp_coefficients(model_sampling, s) for s in sigmas[:-1]]
        # a new run replaces the last one: nothing leaks from earlier prompts
        self.run = RecordedRun(
            sigmas=sigmas[:-1].tolist(),
            noise=noise.detach().to("cpu", torch.float32, copy=True),
            c_in=[c[0] for c in coefs], signal_coef=[c[1] for c in coefs], noise_coef=[c[2] for c in coefs],
        )

    def on_step(self, step, x0, x, total_steps) -> None:
        run = self.run
        if run is not None and 0 <= step < len(run.sigmas) and step not in run.xt:
            run.xt[step] = (x.detach().to("cpu", torch.float32) * run.c_in[step])
            run.x0_pred[step] = x0.detach().to("cpu", torch.float32, copy=True)

    def on_result(self, samples) -> None:
        run = self.run
        run.final = samples.detach().to("cpu", torch.float32, copy=True)
        run.output = self._model.process_latent_out(samples.detach().to(torch.float32)).cpu()

    def finish(self, completed: bool) -> None:
        self._model = None  # no reference to the loaded model survives the run
        if not completed:
            self.run = None  # an interrupted or failed run is no run: Frequency Curves says so


class FrequencyTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=TRACE_NODE,
            display_name="Frequency Trace (record sampling)",
            category=f"{CATEGORY}/frequency",
            description=(
                "Records x_t and the predicted x_0 at every step of the next sampling run with this model, "
                "for Frequency Curves (the paper's Fig. 2b/2c). It only observes: the sampled image is "
                "identical to sampling without it. Works with every sampler node, sampler and scheduler. "
                "Memory: two latents per step, kept on the CPU until the next run."
            ),
            inputs=[io.Model.Input("model", tooltip="The model to sample with. It is cloned, never modified.")],
            outputs=[
                io.Model.Output("traced_model", display_name="model", tooltip="The same model with recording attached; connect it to your sampler."),
                FrequencyTraceType.Output("trace", display_name="trace", tooltip="Connect to Frequency Curves."),
            ],
            not_idempotent=True,  # each trace node records its own run, even with identical inputs
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        recorder = FrequencyRecorder()
        return io.NodeOutput(recorder.install(model), recorder)


def _check_run(recorder, samples) -> RecordedRun:
    if not isinstance(recorder, FrequencyRecorder):
        raise ShapeFirstInputError(CURVES_NODE, "'trace' must come from a Frequency Trace node.")
    run = recorder.run
    if run is None or not run.complete:
        raise ShapeFirstInputError(
            CURVES_NODE, "no finished sampling run was recorded. Connect Frequency Trace's MODEL output to the "
                         "sampler whose LATENT output feeds this node's 'samples' input.")
    given = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(given, torch.Tensor):
        raise ShapeFirstInputError(CURVES_NODE, "'samples' must be the LATENT output of the traced sampler.")
    if tuple(given.shape) != tuple(run.output.shape) or not torch.equal(given.to("cpu", torch.float32), run.output):
        raise ShapeFirstInputError(
            CURVES_NODE, "'samples' is not the result of the run this trace recorded. Connect the LATENT output "
                         "of the sampler that uses Frequency Trace's MODEL (one sampler per trace node).")
    missing = [i for i in range(len(run.sigmas)) if i not in run.xt]
    if missing:
        raise ShapeFirstInputError(
            CURVES_NODE, f"the sampler reported no progress for steps {missing[:5]}; this sampler does not call "
                         "ComfyUI's step callback, so its curves cannot be drawn.")
    return run


def curves_chart(curves: curves_math.FrequencyCurves):
    return chart.render_figure("frequency_curves", {"curves": curves.curves})


class FrequencyCurves(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=CURVES_NODE,
            display_name="Frequency Curves over Sampling",
            category=f"{CATEGORY}/frequency",
            description=(
                "Curves of the low and high frequency parts over a recorded sampling run (the paper's Fig. 2b/2c): "
                "RMS norms of x_t and of the predicted x_0, and the variation ratios |x_t - x_0| / |x_0| per band "
                "for the denoising run and for forward noising of the final latent with the same schedule and "
                "noise. Draws them in the node, outputs a chart image and JSON, and saves JSON + CSV files."
            ),
            inputs=[
                FrequencyTraceType.Input("trace", tooltip="From Frequency Trace."),
                io.Latent.Input("samples", tooltip="The LATENT output of the sampler that used the traced model "
                                                   "(this also makes the curves run after sampling)."),
                io.Float.Input("low_fraction", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of the spectrum counted as low frequency, strictly between 0 and 1 "
                                       "(0.2 = the paper)."),
                io.String.Input("filename_prefix", default="shapefirst/frequency_curves",
                                tooltip="JSON and CSV files are saved under ComfyUI's output folder with this prefix."),
            ],
            outputs=[
                io.Image.Output("chart", display_name="chart", tooltip="The curves as an image."),
                io.String.Output("curves_json", display_name="curves_json", tooltip="The curves as JSON text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, low_fraction=None):
        if low_fraction is None:  # linked from another node: checked when it runs
            return True
        return as_validation(check_fraction_open, CURVES_NODE, "low_fraction", low_fraction)

    @classmethod
    def execute(cls, trace, samples, low_fraction=0.2, filename_prefix="shapefirst/frequency_curves") -> io.NodeOutput:
        import comfy.utils

        check_fraction_open(CURVES_NODE, "low_fraction", low_fraction)
        run = _check_run(trace, samples)
        n = len(run.sigmas)
        progress = comfy.utils.ProgressBar(n + 1)
        steps = range(n)
        curves = curves_math.compute_curves([run.xt[i] for i in steps], [run.x0_pred[i] for i in steps], run.final,
                                      run.noise, run.signal_coef, run.noise_coef, run.sigmas, low_fraction,
                                      on_step=lambda i: progress.update(1))
        data = curves.as_dict()
        files = save_text_files(filename_prefix, "shapefirst/frequency_curves",
                                {"json": to_json(data), "csv": curves.as_csv()})
        image = torch.from_numpy(curves_chart(curves))[None]
        progress.update(1)
        LOGGER.info("%s: %d steps, files %s", CURVES_NODE, n, ", ".join(f["filename"] for f in files))
        payload = dict(data, files=files)
        return io.NodeOutput(image, to_json(data), ui={ui_keys.CURVES: [payload]})
