"""The one seeded initialisation of the tiny test models (checkpoints.py, families.py, tests, benchmarks).

ComfyUI's layers skip weight init (``comfy.ops`` makes ``reset_parameters`` a no-op), so every tensor of
a tiny model is given a value here, under a fixed seed, and checked finite.
"""

from __future__ import annotations


def torch_reset(cls):
    """torch.nn's own reset_parameters for a (ComfyUI subclass of a) torch layer, else None.

    comfy.ops' layers override reset_parameters with a no-op; the torch base class's method is
    torch's default init."""
    for c in cls.__mro__:
        if c.__module__.startswith("torch.nn.") and "reset_parameters" in vars(c):
            return vars(c)["reset_parameters"]
    return None


def seeded_init(module, seed: int, keep: tuple[str, ...] = ()):
    """Give every parameter of ``module`` a value under ``seed``; the global RNG state is restored.

    torch layers get torch's default init. Parameters no torch layer owns: those named in ``keep`` keep
    the value their constructor gave them; other 1-D ``weight``/``gamma``/``scale`` tensors (norm gains)
    are ones, 1-D ``bias`` zeros, everything else (modulation tables, position tables, learned tokens)
    normal with std ``1 / sqrt(last dim)``. Buffers keep their values (a buffer that a constructor leaves
    empty must be set by the caller: the finiteness check catches it)."""
    import torch

    covered = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            reset = torch_reset(type(m))
            if reset is not None:
                reset(m)
                covered.update(id(p) for p in m.parameters(recurse=False))
        for name, p in module.named_parameters():
            if id(p) in covered or name in keep:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("weight", "gamma", "scale") and p.squeeze().ndim <= 1 and p.numel() > 1:
                p.fill_(1.0)
            elif leaf == "bias":
                p.zero_()
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5 if p.ndim else 1.0)
    check_finite(module.state_dict(), type(module).__name__)
    return module


def check_finite(sd: dict, what: str):
    """Raise when a floating tensor of ``sd`` holds a NaN or an infinity."""
    import torch

    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"{what}: non-finite tensors {bad[:5]}")
