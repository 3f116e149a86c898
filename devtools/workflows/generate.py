"""Write the UI-format workflows under workflows/ from the descriptions in specs/.

    python3 scripts/make_workflows.py

It boots ComfyUI to read the node definitions. The files are committed; tests/test_workflows.py
checks they are what this writes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..paths import WORKFLOWS
from .specs.attention import (fig1_attention_maps_over_steps, fig3_attention_token_classes,
                              fig16_attention_kl_key_swap, fig16_attention_kl_two_conditionings)
from .specs.attention_dit import sd3_attention_maps_token_classes, wan21_attention_maps_token_classes
from .specs.eos import (appendix_e_sos_eos_only, appendix_f_zero_noise, appendix_g_keys_values,
                        fig4_eos_swap_bird_chair, fig4_eos_swap_skyline_butterfly, fig5_eos_swap_first_steps)
from .specs.eos_families import flux_eos_swap_pooled, qwen_image_eos_swap_end_of_turn
from .specs.families import (everyday_truncated_cfg_model_patch, qwen_image_truncated_cfg, sd3_eos_swap_ab,
                              sd35_truncated_cfg, wan21_t2v_truncated_cfg)
from .specs.frequency_guidance import (custom_sampler_truncated_cfg_guider, fast_txt2img,
                                       fig2_frequency_over_sampling, fig7_text_only_late,
                                       fig10_table2_truncation_sweep)

WORKFLOW_BUILDERS = {
    "fig1_attention_maps_over_steps.json": fig1_attention_maps_over_steps,
    "fig2_frequency_over_sampling.json": fig2_frequency_over_sampling,
    "fast_txt2img_truncated_cfg.json": fast_txt2img,
    "custom_sampler_truncated_cfg_guider.json": custom_sampler_truncated_cfg_guider,
    "fig10_table2_truncation_sweep.json": fig10_table2_truncation_sweep,
    "fig7_text_only_late.json": fig7_text_only_late,
    "fig4_eos_swap_bird_chair.json": fig4_eos_swap_bird_chair,
    "fig4_eos_swap_skyline_butterfly.json": fig4_eos_swap_skyline_butterfly,
    "fig5_eos_swap_first_steps.json": fig5_eos_swap_first_steps,
    "appendix_e_sos_eos_only.json": appendix_e_sos_eos_only,
    "appendix_f_zero_noise.json": appendix_f_zero_noise,
    "appendix_g_keys_values.json": appendix_g_keys_values,
    "fig3_attention_token_classes.json": fig3_attention_token_classes,
    "fig16_attention_kl_two_conditionings.json": fig16_attention_kl_two_conditionings,
    "fig16_attention_kl_key_swap.json": fig16_attention_kl_key_swap,
    "everyday_truncated_cfg_model_patch.json": everyday_truncated_cfg_model_patch,
    "sd35_truncated_cfg.json": sd35_truncated_cfg,
    "wan21_t2v_truncated_cfg.json": wan21_t2v_truncated_cfg,
    "qwen_image_truncated_cfg.json": qwen_image_truncated_cfg,
    "sd3_eos_swap_ab.json": sd3_eos_swap_ab,
    "sd3_attention_maps_token_classes.json": sd3_attention_maps_token_classes,
    "wan21_attention_maps_token_classes.json": wan21_attention_maps_token_classes,
    "flux_eos_swap_pooled.json": flux_eos_swap_pooled,
    "qwen_image_eos_swap_end_of_turn.json": qwen_image_eos_swap_end_of_turn,
}


def build_all(object_info: dict) -> dict[str, str]:
    return {name: json.dumps(fn(object_info), indent=2) + "\n" for name, fn in WORKFLOW_BUILDERS.items()}


def main(out: Path = WORKFLOWS) -> int:
    from .. import boot
    from ..harness import ComfyHarness

    boot.quiet_logs()
    with tempfile.TemporaryDirectory() as tmp:
        files = build_all(ComfyHarness(Path(tmp)).boot().object_info())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0
