"""Eq. 9 written out step by step in the tests, independently of the pack's patch: CFG (core's
sampling_function) for the steps before k, one prediction (core's calc_cond_batch) after."""

from __future__ import annotations


class Eq9Reference:
    """A core CFGGuider whose predict_noise follows eq. 9; set ``schedule`` (the sampled sigmas)
    before sampling if it is not given here."""

    def __init__(self, comfy_samplers, model, positive, negative, cfg, k, tail, schedule=None):
        self.guider = comfy_samplers.CFGGuider(model)
        self.guider.set_conds(positive, negative)
        self.guider.set_cfg(cfg)
        self.samplers, self.k, self.tail, self.schedule = comfy_samplers, k, tail, schedule
        self.guider.predict_noise = self.predict_noise

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        g = self.guider
        step = min(range(len(self.schedule)), key=lambda i: abs(self.schedule[i] - float(timestep[0])))
        if step < self.k:
            return self.samplers.sampling_function(g.inner_model, x, timestep, g.conds["negative"],
                                                   g.conds["positive"], g.cfg, model_options=model_options, seed=seed)
        keep = g.conds["negative"] if self.tail == "uncond" else g.conds["positive"]
        return self.samplers.calc_cond_batch(g.inner_model, [keep], x, timestep, model_options)[0]
