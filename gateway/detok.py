"""Per-token text pieces of a completion, for streams and log-probs.

Decoding token by token breaks multi-byte characters (byte-level BPE) and leading-space rules, so
each piece is the growth of the decoded text over a short window (the approach of TGI / vLLM's
incremental detokeniser): a token whose bytes do not yet form whole characters gets an empty piece
and the next one carries the text. The pieces concatenate to the decoded text.
"""

from __future__ import annotations

from gateway.templates import ChatRenderer


def token_pieces(renderer: ChatRenderer, ids: list[int]) -> list[str]:
    pieces: list[str] = []
    prefix_offset = read_offset = 0
    for i in range(len(ids)):
        prefix_text = renderer.decode(ids[prefix_offset:read_offset])
        new_text = renderer.decode(ids[prefix_offset : i + 1])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            pieces.append(new_text[len(prefix_text) :])
            prefix_offset, read_offset = read_offset, i + 1
        else:
            pieces.append("")
    if read_offset < len(ids):  # trailing bytes that never completed a character
        tail = renderer.decode(ids[prefix_offset:])[len(renderer.decode(ids[prefix_offset:read_offset])) :]
        if tail:
            pieces[-1] += tail
    return pieces
