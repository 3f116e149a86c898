"""Tables 1, 3 and 4 of the paper on ShapeFirst World, with the pack's own nodes (EOS Swap
Conditioning, EOS Swap K/V Patch) run through ComfyUI's executor.

* Table 1: "[SOS] + A + [EOS]_B" against A and B: Toy-CLIPScore (text) with each prompt, and the
  classifier's shape and colour, separately for pairs that differ in shape and pairs that differ in
  colour (the paper: nouns follow B, attributes of A leak through).
* Table 4: the same swap in the Keys only or the Values only of cross-attention (Appendix G).
* Table 3: semantic tokens or [EOS] replaced by zeros or by noise (Appendix F).
"""

from __future__ import annotations

from . import evaluate
from .findings_common import Images, bootstrap, fmt, pairs, per_unit, single_prompts

SWAPS = {"A": None, "B": None, "swap A->B (K and V)": "keys and values", "swap, Keys only": "keys only",
         "swap, Values only": "values only"}
TABLE3 = {  # paper's label -> (sem_from, eos_from)
    "Sem + EOS (original)": ("A", "A"), "Sem + Zero": ("A", "zeros"), "Sem + Rand": ("A", "noise"),
    "Zero + EOS": ("zeros", "A"), "Rand + EOS": ("noise", "A")}


def _scores(images, a: dict, b: dict | None = None) -> dict[str, list[float]]:
    n = images.shape[0]
    pred = evaluate.attributes(images)
    out = {"text_a": evaluate.text_score(images, [a["prompt"]] * n).tolist(),
           "shape_a": [float(p == a["shape"]) for p in pred["shape"]],
           "colour_a": [float(p == a["colour"]) for p in pred["colour"]]}
    if b is not None:
        out.update({"text_b": evaluate.text_score(images, [b["prompt"]] * n).tolist(),
                    "shape_b": [float(p == b["shape"]) for p in pred["shape"]],
                    "colour_b": [float(p == b["colour"]) for p in pred["colour"]]})
    return out


def swap_tables(harness, ckpt: str, ev: dict, mode, seed: int) -> dict:
    """{kind: {row: {metric: [per-pair values]}}} for Tables 1 and 4 (kind = shape / colour)."""
    chosen = pairs(ev, mode.pairs_per_kind)
    imgs = Images(ckpt, mode.samples, mode.steps, seed, kv_patch=True)
    index = []
    for p in chosen:
        a, b = p["a"]["prompt"], p["b"]["prompt"]
        row = {"A": imgs.sample(imgs.text(a)), "B": imgs.sample(imgs.text(b))}
        for name, apply_to in SWAPS.items():
            if apply_to:
                row[name] = imgs.sample(imgs.swap(a, b, apply_to=apply_to), kv=apply_to != "keys and values")
        index.append(row)
    out = imgs.run(harness)
    result: dict = {}
    for p, row in zip(chosen, index):
        table = result.setdefault(p["differs"], {})
        for name, i in row.items():
            for metric, values in _scores(out[i], p["a"], p["b"]).items():
                table.setdefault(name, {}).setdefault(metric, []).extend(per_unit(values, mode.samples))
    return result


def table3(harness, ckpt: str, ev: dict, mode, seed: int) -> dict:
    """{row: {metric: [per-prompt values]}}: text score with the prompt, image score with the
    original image (same noise), the classifier's shape and colour accuracy."""
    prompts = single_prompts(ev, mode.prompts)
    imgs = Images(ckpt, mode.samples, mode.steps, seed)
    index = []
    for t in prompts:
        row = {}
        for name, (sem, eos) in TABLE3.items():
            cond = imgs.text(t["prompt"]) if (sem, eos) == ("A", "A") else \
                imgs.swap(t["prompt"], t["prompt"], eos_from=eos, sem_from=sem)
            row[name] = imgs.sample(cond)
        index.append(row)
    out = imgs.run(harness)
    result: dict = {}
    for t, row in zip(prompts, index):
        original = out[row["Sem + EOS (original)"]]
        for name, i in row.items():
            s = _scores(out[i], t)
            s["image"] = evaluate.image_score(out[i], original).tolist()
            for metric, values in s.items():
                result.setdefault(name, {}).setdefault(metric, []).extend(per_unit(values, mode.samples))
    return result


def stats(values: list[float]) -> tuple[float, float, float]:
    return bootstrap(values)


def print_swap_tables(result: dict, mode) -> list[str]:
    lines = []
    cols = [("text_a", "Toy-CLIP (text) with A"), ("text_b", "with B"), ("shape_a", "shape = A's"),
            ("shape_b", "shape = B's"), ("colour_a", "colour = A's"), ("colour_b", "colour = B's")]
    for title, rows in (("Table 1: [EOS] swap A -> B", ["A", "B", "swap A->B (K and V)"]),
                        ("Table 4: the swap in Keys only / Values only", ["swap A->B (K and V)", "swap, Keys only",
                                                                          "swap, Values only"])):
        for kind, table in result.items():
            n = len(table["A"]["text_a"])
            lines += ["", f"### {title}, pairs that differ in {kind} ({n} pairs x {mode.samples} samples; mean "
                          "[95% bootstrap interval over pairs])",
                      "| image | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
            for r in rows:
                lines.append(f"| {r} | " + " | ".join(fmt(stats(table[r][k])) for k, _ in cols) + " |")
    return lines


def print_table3(result: dict, mode) -> list[str]:
    cols = [("text_a", "Toy-CLIP (text)"), ("image", "Toy-CLIP (image) to original"), ("shape_a", "shape right"),
            ("colour_a", "colour right")]
    n = len(result["Sem + EOS (original)"]["text_a"])
    lines = ["", f"### Table 3: semantic tokens or [EOS] replaced by zeros or noise ({n} prompts x {mode.samples} "
                 "samples)", "| conditioning | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in result.items():
        lines.append(f"| {name} | " + " | ".join(fmt(stats(row[k])) for k, _ in cols) + " |")
    return lines
