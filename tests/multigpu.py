"""Core's multi-GPU CFG splitting on a CPU-only machine, for the host tests.

Newer ComfyUI (0.33.0) runs the cond and uncond chunks of one evaluation on several devices from a
thread pool (``_calc_cond_batch_multigpu``, ``comfy.multigpu.MultiGPUThreadPool``). Two "devices" that
are both the CPU make the host's own splitting code run the two branches on two pool threads at once,
as it does on two GPUs. Hosts without the pool skip.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

SPLIT_KEY = "test.multigpu_split"


def needs_pool():
    import comfy.samplers

    if not hasattr(comfy.samplers, "_calc_cond_batch_multigpu"):
        pytest.skip("this ComfyUI has no multi-GPU CFG splitting")


@contextmanager
def two_cpu_devices():
    """Yields ``split(model)``: a clone of ``model`` whose evaluations core splits over two pool threads."""
    needs_pool()
    import comfy.patcher_extension as pe
    from comfy.multigpu import MultiGPUThreadPool

    devices = [torch.device("cpu"), torch.device("cpu", 0)]
    pool = MultiGPUThreadPool(devices)

    def wrapper(executor, model_, conds, x_in, timestep, model_options):
        options = {**model_options, "multigpu_clones": {d: model_.current_patcher for d in devices},
                   "multigpu_thread_pool": pool}
        return executor(model_, conds, x_in, timestep, options)

    def split(model):
        m = model.clone()
        m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, SPLIT_KEY, wrapper)
        return m

    try:
        yield split
    finally:
        pool.shutdown()
