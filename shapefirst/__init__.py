"""ShapeFirst's pure-math library: tensors in, tensors out, no ComfyUI import.

Modules: ``frequency`` (low/high split, power spectrum), ``trace`` (frequency curves over a
sampling run), ``chart`` (line charts rendered with Pillow), ``imaging`` (preview strips),
``attention`` (cross-attention probabilities, aggregation, the per-run record),
``attention_tokens`` (token roles SOS/SEM/EOS/PAD), ``metrics`` (class shares, edge F1, KL),
``heatmaps`` (overlays, token x step grids, sprites).
Everything here is testable on CPU tensors without ComfyUI.
"""
