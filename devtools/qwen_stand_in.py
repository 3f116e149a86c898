"""Test and demo only: a seeded stand-in of Qwen-Image's Qwen2.5-VL text encoder.

ComfyUI's Qwen2.5-VL class cannot be built small (its 152064 x 3584 token table and vision tower are
fixed), so the tiny Qwen-Image of :mod:`devtools.families` reads its 3584-wide context from this
stand-in, fed by core's real Qwen-Image tokenizer (see that module's docstring).
"""

from __future__ import annotations

QWEN_IMAGE_TEXT_WIDTH = 3584  # Qwen-Image's context width: fixed by its class (joint_attention_dim), not detected
QWEN_IMAGE_STAND_IN_ROWS = 2048  # rows of the stand-in text encoder's seeded table (token id modulo this)


def _qwen_image_stand_in_class():
    import torch

    class QwenImageStandInEncoder(torch.nn.Module):
        """Test and demo only: stands in for Qwen-Image's Qwen2.5-VL text encoder (see the module doc).

        Not a language model: each token of core's ``QwenImageTokenizer`` output becomes one
        3584-wide row of a seeded table (token id modulo ``QWEN_IMAGE_STAND_IN_ROWS``), so a prompt
        maps to the same rows every time and prompts of different token counts give contexts of
        different lengths. Like core's encoder it drops the chat template's system part and the user
        header (the rows start at the prompt's first token; the template's closing tokens stay) and
        returns no pooled output and no attention mask (core drops the mask when nothing is padded,
        which is always the case for one prompt)."""

        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__()
            self.table = torch.nn.Parameter(torch.empty(QWEN_IMAGE_STAND_IN_ROWS, QWEN_IMAGE_TEXT_WIDTH,
                                                        device=device, dtype=dtype or torch.float32),
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
                raise ValueError("Qwen-Image stand-in text encoder (tests and demo only): image inputs are "
                                 "not supported; encode text only")
            starts = [i for i, t in enumerate(ids) if t == 151644]  # <|im_start|>
            start = starts[1] if len(starts) > 1 else 0  # the user turn of core's template
            if ids[start + 1:start + 3] == [872, 198]:  # "user", newline
                start += 3
            index = torch.tensor(ids[start:], device=self.table.device) % QWEN_IMAGE_STAND_IN_ROWS
            return self.table[index].unsqueeze(0).float(), None, {}

    return QwenImageStandInEncoder


_STAND_IN: dict = {}


def qwen_image_stand_in_encoder():
    """The stand-in encoder class (defined on first use: this module imports without torch)."""
    if "qwen_image" not in _STAND_IN:
        _STAND_IN["qwen_image"] = _qwen_image_stand_in_class()
    return _STAND_IN["qwen_image"]
