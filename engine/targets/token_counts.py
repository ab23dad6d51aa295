"""A server's token counts, never taken on trust.

An OpenAI-compatible server says how many tokens it read (``usage.prompt_tokens``), Ollama says
``prompt_eval_count``; embprof divides by them for tokens/s. Not every server counts tokens there:
infinity, with its defaults, reports the *characters* of the input, and a gateway may report words.
So each answered request's count is held against the characters and the words of the texts sent: a
count equal to the characters (or words) of the first request that tells them apart is no token
count, is kept out of tokens/s, and says so. A count that is neither is checked, where a tokenizer
of the served model is at hand, against that tokenizer's count of the same texts (with their special
tokens): the model named by ``--prompts-from`` (its folder's ``tokenizer.json``, read by the
``tokenizers`` library without torch), or llama.cpp's own ``/tokenize``. Without one, the counts are
the server's word, and every label says "unverified".

The verdict is a result (``TokenCounts``) filed as soon as the first count is judged, so that the
dashboard's labels say it while the run goes on, and again at the run's end with every request's tally.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from ..results import TokenCounts

__all__ = ["CHECKED_REQUESTS", "CountCheck", "Counter", "folder_counter"]

# The answered requests whose counts a tokenizer checks: the check runs outside the timed request but inside the run,
# so a server's own tokenizer (one HTTP request per text) is asked only for these.
CHECKED_REQUESTS = 8
# Counts the texts' tokens as the served model's tokenizer does (with the special tokens it adds).
Counter = Callable[[Sequence[str]], int | None]


def folder_counter(folder: Path) -> Counter | None:
    """A counter from a model folder's ``tokenizer.json`` (None without one, or one the library cannot read)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer this library cannot read: the counts stay unverified, and say so
        return None
    tokenizer.no_truncation()  # the server's count is of what it was sent; a cut would be the server's to report
    tokenizer.no_padding()

    def count(texts: Sequence[str]) -> int:
        return sum(len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=True))

    return count


class CountCheck:
    """The judgement of one run's reported counts; ``take`` is asked from any thread that sends a request."""

    def __init__(self, counter: Counter | None = None, source: str | None = None) -> None:
        self._counter = counter
        self._source = source if counter is not None else None
        self._lock = threading.Lock()
        self.counts: Literal["tokens", "characters", "words"] | None = None  # None until a count tells them apart
        self.requests = 0  # answered requests that reported a count
        self.matched = 0  # of them: counts equal to their characters or words (counts other than tokens)
        self.checked = 0  # counts held against the tokenizer
        self.agreed = 0  # of them: equal to the tokenizer's count
        self.first_differs: tuple[int, int] | None = None  # (reported, the tokenizer's) of the first that differed

    def take(self, texts: Sequence[str], reported: int | None) -> tuple[int | None, bool]:
        """The count to use as tokens for a request that sent ``texts`` (None: not tokens, or none reported), and
        whether this request decided what the counts are (the caller then files the verdict)."""
        if reported is None:
            return None, False
        chars = sum(len(t) for t in texts)
        words = sum(len(t.split()) for t in texts)
        with self._lock:
            decided = False
            if self.counts is None and chars != words:  # texts whose characters are their words tell nothing apart
                self.counts = "characters" if reported == chars else "words" if reported == words else "tokens"
                decided = True
            self.requests += 1
            if self.counts in ("characters", "words"):
                self.matched += reported == (chars if self.counts == "characters" else words)
                return None, decided
            check = self._counter is not None and self.checked < CHECKED_REQUESTS
            if check:
                self.checked += 1  # counted before the tokenizer runs: a request beside this one checks the next
        if check and self._counter is not None:
            local = self._counter(texts)
            with self._lock:
                if local is None:
                    self.checked -= 1
                elif local == reported:
                    self.agreed += 1
                elif self.first_differs is None:
                    self.first_differs = (reported, local)
        return reported, decided

    @property
    def has_counter(self) -> bool:
        return self._counter is not None

    def usable(self) -> bool:
        """Whether the counts may be divided by as tokens (characters and words may not)."""
        return self.counts not in ("characters", "words")

    def result(self) -> TokenCounts | None:
        """The verdict so far (None before any count was reported)."""
        with self._lock:
            if not self.requests:
                return None
            return TokenCounts(counts=self.counts or "tokens", requests=self.requests, matched=self.matched,
                               verified_by=self._source if self.checked else None, checked=self.checked, agreed=self.agreed,
                               first_differs=self.first_differs)
