"""SentencePiece-style tokenizer built from the GGUF vocabulary (llama.cpp's "llama"/SPM algorithm).

Spaces become U+2581, the text is split into characters, and the adjacent pair whose concatenation is a
vocabulary piece with the highest score is merged until none is left (ties: leftmost first). Characters
that are not pieces fall back to ``<0xXX>`` byte tokens. User-defined pieces are matched whole first.
"""

from __future__ import annotations

import heapq
from typing import Any

SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class Tokenizer:
    def __init__(self, metadata: dict[str, Any]) -> None:
        self.pieces: list[str] = list(metadata["tokenizer.ggml.tokens"])
        self.scores: list[float] = [float(s) for s in metadata["tokenizer.ggml.scores"]]
        self.types: list[int] = [int(t) for t in metadata["tokenizer.ggml.token_type"]]
        self.bos_id = int(metadata["tokenizer.ggml.bos_token_id"])
        self.eos_id = int(metadata["tokenizer.ggml.eos_token_id"])
        self.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", True))
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", False))
        self.index: dict[str, int] = {}
        for i, piece in enumerate(self.pieces):
            self.index.setdefault(piece, i)
        self.user_defined = sorted(
            (p for p, t in zip(self.pieces, self.types, strict=True) if t == USER_DEFINED and p),
            key=len,
            reverse=True,
        )
        self._byte_ids = [self.index.get(f"<0x{b:02X}>", -1) for b in range(256)]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        ids: list[int] = [self.bos_id] if (self.add_bos if add_bos is None else add_bos) else []
        for fragment, is_piece in self._partition(text):
            if is_piece:
                ids.append(self.index[fragment])
            else:
                ids.extend(self._spm(fragment))
        return ids

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            if self.types[i] == CONTROL:
                continue
            piece = self.pieces[i]
            if self.types[i] == BYTE:
                out.append(int(piece[3:5], 16))
            else:
                out.extend(piece.replace(SPACE, " ").encode("utf-8", errors="surrogateescape"))
        return out.decode("utf-8", errors="replace")

    def _partition(self, text: str) -> list[tuple[str, bool]]:
        """Split out user-defined pieces (longest match at each position)."""
        if not self.user_defined:
            return [(text, False)]
        firsts = {p[0] for p in self.user_defined}
        out: list[tuple[str, bool]] = []
        start = i = 0
        while i < len(text):
            if text[i] in firsts:
                match = next((p for p in self.user_defined if text.startswith(p, i)), None)
                if match is not None:
                    if start < i:
                        out.append((text[start:i], False))
                    out.append((match, True))
                    i += len(match)
                    start = i
                    continue
            i += 1
        if start < len(text):
            out.append((text[start:], False))
        return out

    def _spm(self, text: str) -> list[int]:
        if not text:
            return []
        if self.add_space_prefix:
            text = " " + text
        symbols = list(text.replace(" ", SPACE))
        nxt = self._spm_merge(symbols)
        return self._spm_ids(symbols, nxt)

    def _spm_merge(self, symbols: list[str]) -> list[int]:
        """Merge neighbouring symbols, best-scored pair first, in place; return each symbol's next one
        (-1 at the end; merged-away symbols are skipped by the chain from 0)."""
        n = len(symbols)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        alive = [True] * n
        heap: list[tuple[float, int, int, str]] = []

        def push(left: int) -> None:
            right = nxt[left]
            if right < 0:
                return
            merged = symbols[left] + symbols[right]
            tid = self.index.get(merged)
            if tid is not None:
                heapq.heappush(heap, (-self.scores[tid], left, right, merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            if (
                not (alive[left] and alive[right])
                or nxt[left] != right
                or symbols[left] + symbols[right] != merged
            ):
                continue
            symbols[left] = merged
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            if prev[left] >= 0:
                push(prev[left])
            push(left)
        return nxt

    def _spm_ids(self, symbols: list[str], nxt: list[int]) -> list[int]:
        """The token ids of the merged symbols (bytes for a symbol not in the vocabulary)."""
        ids: list[int] = []
        i = 0
        while i >= 0:
            piece = symbols[i]
            tid = self.index.get(piece)
            if tid is not None:
                ids.append(tid)
            else:
                ids.extend(self._byte_ids[b] for b in piece.encode("utf-8", errors="surrogateescape"))
            i = nxt[i]
        return ids
