#!/usr/bin/env python3
"""Write the UI-format workflows under workflows/ from the descriptions below.

Run with the runtime's python (it boots ComfyUI to read the node definitions):
    .runtime/venv/bin/python scripts/make_workflows.py
The files are committed; tests/test_workflows.py checks they are what this script writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workflow_specs.attention import (fig1_attention_maps_over_steps, fig3_attention_token_classes,  # noqa: E402
                                      fig16_attention_kl_key_swap, fig16_attention_kl_two_conditionings)
from workflow_specs.common import DEFAULT_CKPT  # noqa: E402,F401
from workflow_specs.eos import (appendix_e_sos_eos_only, appendix_f_zero_noise, appendix_g_keys_values,  # noqa: E402
                                fig4_eos_swap_bird_chair, fig4_eos_swap_skyline_butterfly, fig5_eos_swap_first_steps)
from workflow_specs.frequency_guidance import (fast_txt2img, fig2_frequency_over_sampling, fig7_text_only_late,  # noqa: E402
                                               fig10_table2_truncation_sweep)

REPO = HERE.parent
WORKFLOWS = REPO / "workflows"


WORKFLOW_BUILDERS = {
    "fig1_attention_maps_over_steps.json": fig1_attention_maps_over_steps,
    "fig2_frequency_over_sampling.json": fig2_frequency_over_sampling,
    "fast_txt2img_truncated_cfg.json": fast_txt2img,
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
}


def build_all(object_info: dict) -> dict[str, str]:
    return {name: json.dumps(fn(object_info), indent=2) + "\n" for name, fn in WORKFLOW_BUILDERS.items()}


def main() -> int:
    import harness

    harness.quiet_logs()
    paths = harness.default_paths()
    with tempfile.TemporaryDirectory() as tmp:
        h = harness.ComfyHarness(paths["comfyui"], paths["pack"], Path(tmp)).boot()
        files = build_all(h.object_info())
    WORKFLOWS.mkdir(exist_ok=True)
    for name, text in files.items():
        (WORKFLOWS / name).write_text(text)
        print(f"wrote workflows/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
