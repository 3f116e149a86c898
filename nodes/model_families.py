"""Which described family a loaded MODEL is (``shapefirst/families.py``), and where its text layers are.

``describe(model)`` looks at the network the model runs (``get_model_object("diffusion_model")``, so an
object patch of another node is what is seen, by every feature alike) and matches it against the
descriptions by exact class: a network no description matches is named as unknown, never read as the
nearest family. ``require(model, feature, node, what, fix)`` returns the match or raises the node's
error with the family's reason and the fix.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ..shapefirst import families as fam
from ._common import ShapeFirstInputError


def dotted(obj_or_type) -> str:
    t = obj_or_type if isinstance(obj_or_type, type) else type(obj_or_type)
    return f"{t.__module__}.{t.__qualname__}"


@dataclass
class Network:
    """A loaded network, its family (None: no description matches) and its text layers (CROSS)."""

    net: object
    family: fam.ModelFamily | None
    layers: list  # dotted paths of the text attention layers under the network
    unknown: str = ""  # why no family matched, when the class has descriptions

    @property
    def class_name(self) -> str:
        return type(self.net).__name__

    @property
    def label(self) -> str:
        if self.family is None or self.family.name == self.class_name:
            return self.class_name if self.family is None else self.family.name
        return f"{self.family.name}, {self.class_name}"

    def layer(self, path: str):
        return self.net.get_submodule(path)

    def attribute(self, name: str | None, default=None):
        return default if not name else getattr(self.net, name, default)

    def patch(self) -> tuple[int, int]:
        """(latent frames per token frame, latent pixels per token side) of the network's patches."""
        size = self.attribute(self.family.patch_size if self.family else None, 1)
        if isinstance(size, int):
            return 1, size
        return int(size[0]), int(size[-1])

    def text_pad(self) -> int | None:
        layout = self.family.joint if self.family else None
        return self.attribute(layout.text_pad) if layout and layout.text_pad else None

    def why_not(self, feature: str) -> str | None:
        """The reason ``feature`` does not apply (shown to the user), or None when it does."""
        if self.family is None:
            if feature == fam.TRUNCATION:
                return None
            detail = f" ({self.unknown})" if self.unknown else ""
            return f"no ShapeFirst model description matches its network {self.class_name}{detail}"
        support = self.family.support(feature)
        if not support.ok:
            return self._format(support.why)
        if self.family.attention == fam.CROSS and feature != fam.TRUNCATION and not self.layers:
            return "it has no cross-attention layers (no text reaches the image by attention)"
        kv = self.family.kv
        if feature == fam.KV_PATCH and kv and kv.embedder:
            embedder = self.attribute(kv.embedder)
            if embedder is None or (kv.embedder_class and dotted(embedder) != kv.embedder_class):
                return f"its text embedder {kv.embedder} is {type(embedder).__name__}, not the one described"
        return None

    def _format(self, why: str) -> str:
        names = [f for _, f, _, _ in string.Formatter().parse(why) if f]
        return why.format(**{n: getattr(self.net, n, "?") for n in names}) if names else why


def _layers(net, spec: fam.TextLayers) -> list[tuple[str, object]]:
    if spec.blocks:
        blocks = getattr(net, spec.blocks, None) or []
        return [(f"{spec.blocks}.{i}.{spec.attribute}", getattr(b, spec.attribute, None)) for i, b in enumerate(blocks)]
    out = []
    for name, m in net.named_modules():
        if dotted(m) == spec.holder and not getattr(m, spec.skip_if or "", False):
            layer = getattr(m, spec.attribute, None)
            if layer is not None:
                out.append((f"{name}.{spec.attribute}" if name else spec.attribute, layer))
    return out


def _holds(net, condition) -> bool:
    attribute, test, *expected = condition
    value = net
    for part in attribute.split("."):
        value = getattr(value, part, None)
    if test == "==":
        return value == expected[0]
    return (value is None) == (test == "is None")


def _matches(net, family: fam.ModelFamily) -> tuple[bool, list, str]:
    for condition in family.when:
        if not _holds(net, condition):
            return False, [], f"not: {' '.join(map(str, condition))}"
    if family.attention != fam.CROSS:
        return True, [], ""
    found = _layers(net, family.layers)
    other = sorted({type(m).__name__ for _, m in found if dotted(m) != family.layers.layer_class})
    if other:
        return False, [], f"its text layers are {', '.join(other)}"
    return True, [p for p, _ in found], ""


def describe(model) -> Network:
    """The network ``model`` (a ModelPatcher) runs, matched against the family descriptions."""
    net = model.get_model_object("diffusion_model")
    cls = dotted(net)
    reasons = []
    for family in fam.FAMILIES:
        if family.model_class != cls:
            continue
        ok, layers, why = _matches(net, family)
        if ok:
            return Network(net, family, layers)
        reasons.append(f"not {family.name}: {why}")
    return Network(net, None, [], "; ".join(reasons))


def require(model, feature: str, node: str, what: str, fix: str) -> Network:
    """``describe(model)`` when ``feature`` applies to it, else the node's error: what, why, the fix."""
    network = describe(model)
    why = network.why_not(feature)
    if why:
        raise ShapeFirstInputError(node, f"{what} does not apply to this model ({network.label}): {why}. {fix}")
    return network


def supported_list(feature: str) -> str:
    """The families ``feature`` applies to, for a message: 'A, B or C'."""
    return fam.spoken_list(fam.supported(feature))
