"""ShapeFirst's pure-math library: tensors in, tensors out, no ComfyUI import.

Modules: ``frequency`` (low/high split, power spectrum), ``trace`` (frequency curves over a
sampling run), ``chart`` (line charts rendered with Pillow), ``imaging`` (preview strips),
``guidance`` (the truncated-guidance window, guidance strength, accounting), ``tokens`` (token
roles SOS/SEM/EOS/PAD, labels), ``compose`` (per-class row composition for the [EOS] swaps),
``attention`` (cross-attention probabilities, aggregation, the per-run record), ``metrics`` (class
shares, edge F1, KL), ``heatmaps`` (overlays, token x step grids, sprites).
Everything here is testable on CPU tensors without ComfyUI.
"""
