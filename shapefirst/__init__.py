"""ShapeFirst's pure-math library: tensors in, tensors out, no ComfyUI import.

Modules: ``frequency`` (low/high split, power spectrum), ``trace`` (frequency curves over a
sampling run), ``chart`` (line charts rendered with Pillow), ``imaging`` (preview strips).
Everything here is testable on CPU tensors without ComfyUI.
"""
