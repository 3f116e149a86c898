"""Cross-attention probabilities: computed from q and k, aggregated over heads, layers and steps.

The paper's maps (Yi et al., Sec. 4 and Fig. 1) are softmax(Q K^T / sqrt(d)) for every text
position, averaged over heads and over all cross-attention layers, with each layer resampled to
one common grid. Everything here is plain torch on whatever device the tensors live on:

* ``head_mean_probs`` computes the probabilities of one attention call in bounded chunks;
* ``joint_text_probs`` takes the image-query x text-key part of a joint attention call, in either order;
* ``fold_repeats`` undoes ComfyUI's repetition of a shorter context (cond/uncond batching);
* ``take_frames`` / ``frames_to_batch`` keep the query rows of chosen frames of a video latent;
* ``resample`` moves a map to the common grid and keeps every pixel's distribution summing to 1;
* ``EvalAccumulator`` sums the layers of one model evaluation as they come;
* ``AttentionRun`` is what a capture holds for one sampling run (CPU, float16 maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

COND, UNCOND = 0, 1
BRANCH_NAMES = {COND: "cond", UNCOND: "uncond"}
# Elements of one chunk of the (batch, heads, queries, keys) score tensor: 4M floats = 16 MB.
CHUNK_ELEMENTS = 1 << 22


def head_mean_probs(q: torch.Tensor, k: torch.Tensor, heads: int, skip_reshape: bool = False,
                    mask: torch.Tensor | None = None, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) averaged over heads, in float32: (B, N, K).

    ``q``: (B, N, heads*d) and ``k``: (B, K, heads*d), or with ``skip_reshape`` (B, heads, N, d)
    and (B, heads, K, d), the two layouts ComfyUI's attention functions accept. ``mask`` is
    added to the scores (float) or keeps keys where True (bool), as ComfyUI's attention does.
    Queries are processed in chunks so the temporary scores stay near ``chunk_elements``; one
    batched matrix product per chunk, as cheap as the attention call itself.
    """
    if skip_reshape:
        b, h, n, d = q.shape
        qf, kf = q.reshape(b * h, n, d), k.reshape(b * h, k.shape[2], d)
    else:
        b, n, inner = q.shape
        h = heads
        if inner % h:
            raise ValueError(f"heads {heads} does not divide the query width {inner}")
        d = inner // h
        qf = q.reshape(b, n, h, d).transpose(1, 2).reshape(b * h, n, d)
        kf = k.reshape(b, k.shape[1], h, d).transpose(1, 2).reshape(b * h, k.shape[1], d)
    kn = kf.shape[1]
    kt = kf.to(torch.float32).transpose(1, 2)
    scale = d ** -0.5
    if mask is not None:
        mask = _expand_mask(mask, b, h, n, kn)
        mask = mask.expand(b, h, mask.shape[2], kn).reshape(b * h, mask.shape[2], kn)
    out = torch.empty((b, n, kn), dtype=torch.float32, device=q.device)
    step = max(1, chunk_elements // max(1, b * h * kn))
    for start in range(0, n, step):
        stop = min(n, start + step)
        scores = torch.bmm(qf[:, start:stop].to(torch.float32) * scale, kt)
        if mask is not None:
            m = mask[:, start:stop] if mask.shape[1] == n else mask
            if m.dtype == torch.bool:
                scores = scores.masked_fill(~m, -torch.finfo(scores.dtype).max)
            else:
                scores = scores + m.to(scores.dtype)
        probs = scores.softmax(dim=-1).view(b, h, stop - start, kn)
        out[:, start:stop] = probs.sum(dim=1)
    return out.mul_(1.0 / h)


def joint_text_probs(q: torch.Tensor, k: torch.Tensor, heads: int, text: tuple[int, int], image: tuple[int, int],
                     skip_reshape: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Joint attention over one sequence holding text and image tokens (SD3, Flux, Qwen-Image, Lumina 2:
    [text; image]; HunyuanVideo: [image; text]): the image queries' probabilities on the text keys,
    (B, image tokens, text tokens), renormalised over the text keys. ``text`` and ``image`` are the
    (start, length) of each part in the sequence (``shapefirst.families.JointLayout.spans``), so the
    order is read from the model's description, never assumed.

    Per head this is softmax over the text keys only of q_img k_txt^T / sqrt(d), which equals
    the image-query x text-key block of the joint softmax divided by its row sum (the share of
    the query's attention that goes to text); then the mean over heads. Renormalised because:
    each pixel's map is then a distribution over the prompt's tokens, like a UNet's
    cross-attention map, so the two are read (and averaged, resampled, viewed) the same way;
    the raw block shrinks as the image-token count grows (more image keys share the softmax),
    which would make resolutions and steps incomparable; and it needs only the image x text
    scores, never the image x image ones (cheap, bounded memory). The share itself is not kept.
    """
    (t0, tn), (i0, n) = text, image
    rows, cols = slice(i0, i0 + n), slice(t0, t0 + tn)
    if skip_reshape:
        qi, kt = q[:, :, rows], k[:, :, cols]
    else:
        qi, kt = q[:, rows], k[:, cols]
    if mask is not None:  # over the joint sequence: keep the same block (query rows only when it has them)
        if mask.shape[-2] > 1 and (mask.ndim >= 3 or mask.dtype != torch.bool):  # (B, K) bool: keys only
            mask = mask[..., rows, :]
        mask = mask[..., cols]
    return head_mean_probs(qi, kt, heads, skip_reshape=skip_reshape, mask=mask)


def _expand_mask(mask: torch.Tensor, b: int, h: int, n: int, kn: int) -> torch.Tensor:
    """A mask broadcastable to (B, heads, N or 1, K), from the shapes ComfyUI accepts."""
    if mask.ndim == 2:  # (N, K), or (B, K) for boolean key masks
        if mask.dtype == torch.bool and mask.shape[0] == b and mask.shape[1] == kn:
            return mask[:, None, None, :]
        return mask[None, None]
    if mask.ndim == 3:  # (B, N, K)
        return mask[:, None]
    return mask  # (B, heads, N, K)


def fold_repeats(probs: torch.Tensor, length: int) -> torch.Tensor:
    """Undo ``context.repeat(1, r, 1)``: (..., r*length) -> (..., length), summing the copies.

    Repeating keys r times splits each token's probability into r equal parts, so the sum of
    the copies is exactly the probability under the unrepeated context.
    """
    total = probs.shape[-1]
    if total == length:
        return probs
    if length <= 0 or total % length:
        raise ValueError(f"{total} keys are not a whole number of repeats of {length} tokens")
    return probs.reshape(*probs.shape[:-1], total // length, length).sum(dim=-2)


def take_frames(q: torch.Tensor, frames: list[int], total: int, skip_reshape: bool = False) -> torch.Tensor:
    """The query rows of the chosen ``frames`` of a video's token sequence ordered (frame, h, w).

    ``q``: (B, total * n, C), or with ``skip_reshape`` (B, heads, total * n, d). Keeps the layout;
    returns ``q`` itself when every frame is kept. Computing probabilities only for these rows
    keeps the work and memory of a capture proportional to the frames kept."""
    if list(frames) == list(range(total)):
        return q
    axis = 2 if skip_reshape else 1
    n_all = q.shape[axis]
    if total <= 0 or n_all % total:
        raise ValueError(f"{n_all} query positions are not {total} frames of equal size")
    n = n_all // total
    shape = q.shape[:axis] + (total, n) + q.shape[axis + 1:]
    index = torch.as_tensor(list(frames), device=q.device)
    kept = q.reshape(shape).index_select(axis, index)
    return kept.reshape(q.shape[:axis] + (len(frames) * n,) + q.shape[axis + 1:])


def frames_to_batch(probs: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames * n, T) probabilities -> (B * frames, n, T): each frame of each video one entry,
    ordered (video, frame)."""
    b, nf, t = probs.shape
    if frames <= 0 or nf % frames:
        raise ValueError(f"{nf} query positions are not {frames} frames of equal size")
    return probs.reshape(b * frames, nf // frames, t)


def infer_hw(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) of a layer with ``tokens`` query positions inside a latent of height x width.

    Tries the downsampling factors a UNet or a patch embedding uses (1, 2, 4, ..., 64), with
    ceil rounding as ComfyUI's stride-2 convolutions do for odd sizes."""
    for f in (1, 2, 4, 8, 16, 32, 64):
        h, w = -(-height // f), -(-width // f)
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} query positions do not tile a {height}x{width} latent")


def resample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (..., h, w) maps to ``size``: area averaging to shrink, bilinear to enlarge.

    Both are convex combinations of input pixels, so per-pixel distributions over tokens
    (the leading axes) keep summing to 1."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, h, w).to(torch.float32)
    if size[0] <= h and size[1] <= w:
        y = F.interpolate(x, size=size, mode="area")
    else:
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.reshape(*lead, *size)


def grid_for(shapes, max_side: int) -> tuple[int, int]:
    """The common grid: the finest layer resolution among ``shapes``, shrunk to ``max_side``."""
    h, w = max(shapes, key=lambda s: s[0] * s[1])
    side = max(h, w)
    if side <= max_side:
        return h, w
    s = max_side / side
    return max(1, round(h * s)), max(1, round(w * s))


def store_bytes(images: int, branches: int, steps: int, tokens: int, grid: tuple[int, int]) -> int:
    """Bytes of the float16 map store: 2 * images * branches * steps * tokens * grid pixels."""
    return 2 * images * branches * steps * tokens * grid[0] * grid[1]


@dataclass
class EvalAccumulator:
    """Sums one model evaluation's layers per branch, grouped by resolution (float32).

    ``add`` takes a (B, T, h, w) map of one layer (or of one more chunk of the same branch);
    ``mean`` resamples every resolution's sum to the grid once and divides by the number of
    maps added, which equals averaging the resampled layers (resampling is linear)."""

    keep_layers: bool = False
    sums: dict = field(default_factory=dict)  # branch -> {(h, w): tensor}
    counts: dict = field(default_factory=dict)  # branch -> number of maps added
    layers: dict = field(default_factory=dict)  # branch -> {layer: [sum, count]}
    names: dict = field(default_factory=dict)  # branch -> layer names in call order

    def add(self, branch: int, layer: str, maps: torch.Tensor) -> None:
        names = self.names.setdefault(branch, [])
        if layer not in names:
            names.append(layer)
        by_res = self.sums.setdefault(branch, {})
        hw = tuple(maps.shape[-2:])
        if hw in by_res:
            if by_res[hw].shape != maps.shape:
                raise ValueError(f"maps of shape {tuple(maps.shape)} do not match {tuple(by_res[hw].shape)}")
            by_res[hw] += maps
        else:
            by_res[hw] = maps.to(torch.float32).clone()
        self.counts[branch] = self.counts.get(branch, 0) + 1
        if self.keep_layers:
            entry = self.layers.setdefault(branch, {}).get(layer)
            if entry is None:
                self.layers[branch][layer] = [maps.to(torch.float32).clone(), 1]
            else:
                entry[0] += maps
                entry[1] += 1

    def branches(self) -> list[int]:
        return sorted(self.sums)

    def resolutions(self, branch: int) -> list[tuple[int, int]]:
        return list(self.sums.get(branch, {}))

    def mean(self, branch: int, grid: tuple[int, int]) -> torch.Tensor:
        by_res = self.sums[branch]
        total = None
        for _, s in sorted(by_res.items()):
            r = resample(s, grid)
            total = r if total is None else total + r
        return total / self.counts[branch]

    def layer_means(self, branch: int) -> dict[str, torch.Tensor]:
        return {name: s / c for name, (s, c) in self.layers.get(branch, {}).items()}


@dataclass
class AttentionRun:
    """One sampling run's cross-attention record (CPU tensors).

    ``maps[branch][step]``: (B, T_kept, gh, gw) float16, averaged over heads and layers;
    ``token_means[branch][step]``: (B, T) float32, each token's weight averaged over pixels,
    for all T positions even when fewer maps are kept; ``layers[branch][step][name]``:
    per-layer (B, T_kept, h, w) float16 when layers are kept.
    """

    sigmas: list[float]
    planned_steps: list[int]
    latent_hw: tuple[int, int]
    batch: int
    max_tokens: int
    grid: tuple[int, int] | None = None
    maps: dict = field(default_factory=dict)
    token_means: dict = field(default_factory=dict)
    token_count: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    layer_shapes: dict = field(default_factory=dict)  # name -> (h, w)
    layer_names: list = field(default_factory=list)  # cross-attention layers, in call order
    complete: bool = False
    model_kind: str = ""
    # video latents (B, C, F, H, W): the (token) frames kept, of ``total_frames``; each kept frame of
    # each video is one entry of the maps' batch axis, ordered (video, frame): batch = videos * len(frames)
    frames: list = field(default_factory=list)
    total_frames: int = 0
    videos: int = 0

    @property
    def total_steps(self) -> int:
        return len(self.sigmas)

    def branches(self) -> list[int]:
        return sorted(b for b, steps in self.maps.items() if steps)

    def image_index(self, entry: int, images: int) -> int:
        """Index, in a decoded batch of ``images``, of the picture of map entry ``entry``.

        Images: the entry itself. Video: the decoded frames of each video follow each other
        (``images // videos`` per video); kept frame f of ``total_frames`` maps to the decoded frame
        at the same relative time, f * (P - 1) / (total_frames - 1) rounded (first to first, last to
        last; Wan's 4x temporal compression: latent frame f is decoded frame 4f)."""
        if not self.frames:
            return entry
        video, j = divmod(entry, len(self.frames))
        per = images // max(1, self.videos)
        f = self.frames[j]
        at = round(f * (per - 1) / (self.total_frames - 1)) if self.total_frames > 1 else 0
        return video * per + min(per - 1, max(0, at))

    def steps(self, branch: int = COND) -> list[int]:
        return sorted(self.maps.get(branch, {}))

    def tokens_kept(self, branch: int = COND) -> int:
        return min(self.max_tokens, self.token_count.get(branch, 0))

    def has(self, branch: int, step: int) -> bool:
        return step in self.maps.get(branch, {})

    def store(self, branch: int, step: int, mean_map: torch.Tensor, layers: dict | None = None,
              to_host=lambda t: t.to("cpu")) -> None:
        """Keep one step: ``mean_map`` (B, T, gh, gw) float32 on any device, moved by ``to_host`` (an
        asynchronous copy during sampling: settled by the caller before the run is read)."""
        t = mean_map.shape[1]
        self.token_count[branch] = t
        self.token_means.setdefault(branch, {})[step] = to_host(mean_map.mean(dim=(-2, -1)).to(torch.float32))
        keep = min(t, self.max_tokens)
        self.maps.setdefault(branch, {})[step] = to_host(mean_map[:, :keep].to(torch.float16))
        if layers:
            self.layers.setdefault(branch, {})[step] = {
                name: to_host(m[:, :keep].to(torch.float16)) for name, m in layers.items()}
            for name, m in layers.items():
                self.layer_shapes[name] = tuple(m.shape[-2:])

    def stacked(self, branch: int = COND, image: int = 0) -> torch.Tensor:
        """(S, T_kept, gh, gw) float32 over the recorded steps of one image."""
        steps = self.steps(branch)
        return torch.stack([self.maps[branch][s][image].to(torch.float32) for s in steps])

    def stacked_token_means(self, branch: int = COND, image: int = 0) -> torch.Tensor:
        steps = self.steps(branch)
        return torch.stack([self.token_means[branch][s][image] for s in steps])

    def nbytes(self) -> int:
        n = 0
        for per_step in (self.maps, self.token_means):
            n += sum(t.numel() * t.element_size() for steps in per_step.values() for t in steps.values())
        for steps in self.layers.values():
            n += sum(t.numel() * t.element_size() for layers in steps.values() for t in layers.values())
        return n


def planned_steps(total: int, stride: int) -> list[int]:
    """Steps recorded with ``stride``: 0, stride, 2*stride, ... and always the last one."""
    if total <= 0:
        return []
    stride = max(1, int(stride))
    steps = list(range(0, total, stride))
    if steps[-1] != total - 1:
        steps.append(total - 1)
    return steps


def to_maps(probs: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, N, T) probabilities of an h*w layer -> (B, T, h, w) maps."""
    b, n, t = probs.shape
    if n != hw[0] * hw[1]:
        raise ValueError(f"{n} positions do not fill a {hw[0]}x{hw[1]} layer")
    return probs.transpose(1, 2).reshape(b, t, hw[0], hw[1])
