"""ShapeFirst's development tools: runtime builder, in-process ComfyUI, server launcher, test
checkpoints, graph builder and the workflow generator. Never imported by the pack itself.

Importing this package (and ``devtools.paths`` / ``devtools.runtime``) needs the standard
library only; every module that talks to ComfyUI imports it lazily, after ``devtools.boot.boot``.
"""
