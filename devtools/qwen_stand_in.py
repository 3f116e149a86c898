"""Test and demo only: a seeded stand-in of the Qwen2.5-VL text encoder (Qwen-Image, HunyuanVideo 1.5).

ComfyUI's Qwen2.5-VL class cannot be built small (its 152064 x 3584 token table and vision tower are
fixed), so the tiny Qwen-Image of :mod:`devtools.families` reads its 3584-wide context from this
stand-in, fed by core's real Qwen-Image tokenizer (see that module's docstring); the tiny HunyuanVideo 1.5
of tests/tiny_hv15.py reads 64-wide rows from one fed by core's HunyuanVideo 1.5 tokenizer.
"""

from __future__ import annotations

QWEN_IMAGE_TEXT_WIDTH = 3584  # Qwen-Image's context width: fixed by its class (joint_attention_dim), not detected
QWEN_IMAGE_STAND_IN_ROWS = 2048  # rows of the stand-in text encoder's seeded table (token id modulo this)


def _stand_in_class(width: int, rows: int, label: str):
    import torch

    class QwenStandInEncoder(torch.nn.Module):
        """Test and demo only: stands in for a Qwen2.5-VL text encoder (Qwen-Image's, HunyuanVideo 1.5's;
        see the module doc).

        Not a language model: each token of core's tokenizer output (its ``qwen25_7b`` part) becomes one
        ``width``-wide row of a seeded table (token id modulo ``rows``), so a prompt maps to the same rows
        every time and prompts of different token counts give contexts of different lengths. Like core's
        encoder it drops the chat template's system part and the user header (the rows start at the
        prompt's first token; the template's closing tokens stay) and returns no pooled output and no
        attention mask (core drops the mask when nothing is padded, which is always the case for one
        prompt)."""

        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__()
            self.table = torch.nn.Parameter(torch.empty(rows, width, device=device, dtype=dtype or torch.float32),
                                            requires_grad=False)
            self.dtypes = {self.table.dtype}

        def reset_clip_options(self):
            pass

        def set_clip_options(self, options):
            pass

        def load_sd(self, sd):
            return self.load_state_dict(sd, strict=False)

        def encode_token_weights(self, token_weight_pairs):
            (pairs,) = token_weight_pairs["qwen25_7b"]  # the tokenizer never splits (no maximum length)
            ids = [p[0] for p in pairs]
            if not all(isinstance(i, int) for i in ids):
                raise ValueError(f"{label} stand-in text encoder (tests and demo only): image inputs are "
                                 "not supported; encode text only")
            starts = [i for i, t in enumerate(ids) if t == 151644]  # <|im_start|>
            start = starts[1] if len(starts) > 1 else 0  # the user turn of core's template
            if ids[start + 1:start + 3] == [872, 198]:  # "user", newline
                start += 3
            index = torch.tensor(ids[start:], device=self.table.device) % rows
            return self.table[index].unsqueeze(0).float(), None, {}

    return QwenStandInEncoder


_STAND_IN: dict = {}


def stand_in_encoder(width: int, rows: int = QWEN_IMAGE_STAND_IN_ROWS, label: str = "Qwen-Image"):
    """The stand-in encoder class giving ``width``-wide rows from a table of ``rows`` (defined on first use:
    this module imports without torch); ``label`` names the model in its errors."""
    key = (width, rows, label)
    if key not in _STAND_IN:
        _STAND_IN[key] = _stand_in_class(width, rows, label)
    return _STAND_IN[key]


def qwen_image_stand_in_encoder():
    """Qwen-Image's stand-in encoder class (3584-wide rows)."""
    return stand_in_encoder(QWEN_IMAGE_TEXT_WIDTH)
