"""Token roles of a tokenized prompt: [SOS], semantic tokens, [EOS], padding.

The paper (Sec. 5.1, Fig. 3) splits the 77 text positions into the start token [SOS], the
prompt's semantic tokens (SEM) and [EOS]; SD1.x pads with copies of [EOS], which the paper
counts as [EOS] too. Here the first end token is EOS and every later position is PAD, so a
view can show both splits (``paper_class`` merges PAD into EOS).

Input is what ComfyUI's tokenizers return per chunk with ``return_word_ids=True``: a list of
``(token, weight, word_id)`` where ``word_id > 0`` marks the prompt's words, plus the
tokenizer's start / end / pad token ids (start is None for T5).
"""

from __future__ import annotations

SOS, SEM, EOS, PAD = "SOS", "SEM", "EOS", "PAD"
ROLES = (SOS, SEM, EOS, PAD)


def _token_id(token):
    return token if isinstance(token, int) else None  # embeddings (tensors) are semantic


def chunk_roles(chunk, start_id: int | None, end_id: int | None, pad_id: int | None = None) -> list[str]:
    """Roles for one chunk of ``(token, weight, word_id)`` entries (``pad_id`` is informative:
    whatever follows the first end token is padding, whether it repeats the end or not)."""
    roles: list[str] = []
    seen_end = False
    for i, entry in enumerate(chunk):
        token, word_id = entry[0], (entry[2] if len(entry) > 2 else 0)
        tid = _token_id(token)
        if seen_end:
            roles.append(PAD)
        elif i == 0 and start_id is not None and tid == start_id:
            roles.append(SOS)
        elif word_id and word_id > 0:
            roles.append(SEM)
        elif tid is not None and tid == end_id:
            roles.append(EOS)
            seen_end = True
        elif tid is not None and pad_id is not None and tid == pad_id and i > 0:
            roles.append(PAD)  # padding without an end token (e.g. a chunk filled by the prompt)
            seen_end = True
        else:
            roles.append(SEM)
    return roles


def prompt_roles(chunks, start_id, end_id, pad_id=None) -> list[str]:
    """Roles for every position of a (possibly multi-chunk) prompt, chunk after chunk."""
    out: list[str] = []
    for chunk in chunks:
        out.extend(chunk_roles(chunk, start_id, end_id, pad_id))
    return out


def paper_class(role: str) -> str:
    """The paper's three classes: padding after the prompt counts as [EOS]."""
    return EOS if role == PAD else role


def clean_label(text: str) -> str:
    """A readable label for a BPE token: drop CLIP's word-end marker and SentencePiece's space."""
    text = str(text).replace("</w>", "").replace("\u2581", "")
    if text in ("<|startoftext|>",):
        return "[SOS]"
    if text in ("<|endoftext|>", "</s>"):
        return "[EOS]"
    return text or "?"


def token_labels(chunks, inverse_vocab: dict, roles: list[str] | None = None) -> list[str]:
    """Labels for every position; padding shows as [PAD] (with the EOS copy noted by role)."""
    labels = []
    flat = [entry for chunk in chunks for entry in chunk]
    for i, entry in enumerate(flat):
        tid = _token_id(entry[0])
        role = roles[i] if roles else None
        if role == PAD:
            labels.append("[PAD]")
        elif role == SOS:
            labels.append("[SOS]")
        elif role == EOS:
            labels.append("[EOS]")
        elif tid is None:
            labels.append("<embedding>")
        else:
            labels.append(clean_label(inverse_vocab.get(tid, f"#{tid}")))
    return labels
