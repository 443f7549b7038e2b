"""Continuous batching: completions decoded together on one Decoder, each joining and leaving at any step.

The `Engine` runs one decoding thread. Each step it lets waiting completions into free cache rows, advances
every live row by one token in one batched `Decoder.step` (rows sit at their own positions), samples each
row with its own settings, and retires the rows that finished or whose client went away, moving the last
row into the freed one so the live rows stay packed at the front. A newcomer's prompt but its last token is
prefilled into its row; the last token then rides along in the next batched step. A row whose cache is full
slides the way `generate` does: its newest max_seq_len // 2 tokens are prefilled again from position 0.

Completions talk to their callers through `emit(Event)`, called on the engine thread (a server hands the
event to its event loop). Text is decoded incrementally (`TextStream`): what could still become a stop
sequence, or is half of a UTF-8 character, is held back until it is known.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tinyllm.completions_api import Settings
from tinyllm.generate import Decoder, sample_next_token

log = logging.getLogger("tinyllm.serve")


@dataclass(frozen=True)
class Event:
    """New text of choice `index`; finish_reason ("stop", "length", "error") when it is its last."""

    index: int
    text: str
    finish_reason: str | None
    tokens: int  # completion tokens so far
    error: str | None = None


class TextStream:
    """The completion's text after the prompt, released as far as it is final."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str]):
        self.tokenizer, self.ids, self.stop = tokenizer, list(prompt_ids), tuple(stop)
        self.prompt_text = tokenizer.decode(self.ids)
        self.text, self.released = "", 0
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # a stop sequence's head may be pending

    def push(self, token: int) -> tuple[str, bool]:
        """(newly final text, whether a stop sequence ended the completion) after one more token."""
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids)
        self.text = full[len(self.prompt_text) :] if full.startswith(self.prompt_text) else full
        search_from = max(0, self.released - self.hold)
        hits = [at for at in (self.text.find(s, search_from) for s in self.stop) if at >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self.flush(), True
        final = len(self.text.rstrip("\ufffd")) - self.hold  # \ufffd: the start of a byte-spelled character
        if final <= self.released:
            return "", False
        new, self.released = self.text[self.released : final], final
        return new, False

    def flush(self) -> str:
        new, self.released = self.text[self.released :], len(self.text)
        return new


class Completion:
    """One choice in flight: its token history, cache position and text, and where its events go."""

    def __init__(self, index: int, prompt_ids, settings: Settings, tokenizer, emit: Callable[[Event], None]):
        self.index, self.settings, self.emit = index, settings, emit
        self.ids = list(prompt_ids)
        self.position = 0  # where the newest token goes in the cache
        self.new_tokens = 0
        self.end_id = tokenizer.bos_id  # a story ends where the model starts the next one
        self.text = TextStream(tokenizer, prompt_ids, settings.stop)
        seed = settings.seed if settings.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed((seed + index) % 2**63)  # choice i: seed + i
        self.finished = self.cancelled = False

    def add(self, token: int) -> None:
        """Take one sampled token; emit its text, and the end when it is the last."""
        reason = "stop" if token == self.end_id else None
        text = ""
        if reason is None:
            self.ids.append(token)
            self.new_tokens += 1
            text, stopped = self.text.push(token)
            if stopped:
                reason = "stop"
            elif self.new_tokens == self.settings.max_tokens:
                reason = "length"
        if reason is not None:
            text += self.text.flush()
            self.finished = True
        self.emit(Event(self.index, text, reason, self.new_tokens))

    def fail(self, message: str) -> None:
        self.finished = True
        self.emit(Event(self.index, "", "error", self.new_tokens, message))


class Batch:
    """The completions decoding on a Decoder: batch.active[r] owns cache row r."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.active: list[Completion] = []

    def free_rows(self) -> int:
        return self.decoder.rows - len(self.active)

    def admit(self, completion: Completion) -> None:
        """Prefill all of the prompt but its last token into the next free row (the step takes the last)."""
        completion.position = len(completion.ids) - 1
        if completion.position:
            self.decoder.prefill(self._tensor([completion.ids[:-1]]), first_row=len(self.active))
        self.active.append(completion)

    def step(self) -> None:
        """One token for every row: slide full rows, one batched decoder step, sample each row with its own
        generator (so a seeded completion draws the same tokens whatever else is in the batch)."""
        max_len = self.decoder.max_len
        for row, completion in enumerate(self.active):
            if completion.position == max_len:  # cache full: keep the newest half window
                completion.position = max(1, max_len // 2) - 1
                window = completion.ids[-completion.position - 1 : -1]
                if window:
                    self.decoder.prefill(self._tensor([window]), first_row=row)
        tokens = self._tensor([completion.ids[-1] for completion in self.active])
        logits = self.decoder.step(tokens, [completion.position for completion in self.active]).cpu()
        groups: dict[tuple, list[int]] = {}  # rows that sample alike share one sampler call
        for row, completion in enumerate(self.active):
            s = completion.settings
            groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(row)
        new_tokens = torch.empty(len(self.active), dtype=torch.long)
        for (temperature, top_k, top_p), rows in groups.items():
            generators = [self.active[row].generator for row in rows]
            index = torch.tensor(rows)
            new_tokens[index] = sample_next_token(logits[index], temperature, top_k, top_p, generators)
        for completion, token in zip(self.active, new_tokens.tolist(), strict=True):
            completion.position += 1
            completion.add(token)

    def retire(self) -> None:
        """Drop finished and cancelled rows; the last live row moves into each freed row."""
        row = 0
        while row < len(self.active):
            if self.active[row].finished or self.active[row].cancelled:
                last = len(self.active) - 1
                if row != last:
                    self.decoder.move(last, row)
                self.active[row] = self.active[last]
                self.active.pop()
            else:
                row += 1

    def _tensor(self, ids: list) -> torch.Tensor:
        return torch.tensor(ids, device=self.decoder.embedding.device)

    def fail(self, message: str) -> None:
        for completion in self.active:
            completion.fail(message)
        self.active.clear()


class QueueFull(Exception):
    """More completions wait than the engine's queue bound allows."""


class Engine:
    """The decoding thread: lets waiting completions into free rows and steps the batch while it has any."""

    def __init__(self, decoder: Decoder, max_waiting: int):
        self.batch, self.max_waiting = Batch(decoder), max_waiting
        self.waiting: deque[Completion] = deque()
        self.admitting = 0  # taken off the queue, not yet in a row
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="tinyllm-decode", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def submit(self, completions: Sequence[Completion]) -> None:
        """Queue completions (all or none); QueueFull when more would wait than the rows free now (they take
        them at the next step) and the queue bound together; RuntimeError once closed."""
        with self.wake:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            # Rows whose completion just ended count as free: its client may ask again before the retire.
            live = sum(not (c.finished or c.cancelled) for c in list(self.batch.active))
            free_rows = self.batch.decoder.rows - live - self.admitting
            if len(self.waiting) + len(completions) > self.max_waiting + free_rows:
                raise QueueFull(
                    f"{len(self.waiting)} completions already wait (queue bound {self.max_waiting})"
                )
            self.waiting.extend(completions)
            self.wake.notify()

    def cancel(self, completions: Sequence[Completion]) -> None:
        """The caller is gone: drop these now if they wait, at the next step if they decode."""
        with self.wake:
            for completion in completions:
                completion.cancelled = True
            self.waiting = deque(c for c in self.waiting if not c.cancelled)
            self.wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; completions still waiting or decoding end with an error event."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.thread.join(timeout)

    def load(self) -> tuple[int, int]:
        """(decoding, waiting) completions."""
        return len(self.batch.active), len(self.waiting)

    def _run(self) -> None:
        batch = self.batch
        while True:
            with self.wake:
                while not (self.waiting or batch.active or self.closed):
                    self.wake.wait()
                if self.closed:
                    break
                newcomers = [self.waiting.popleft() for _ in range(min(batch.free_rows(), len(self.waiting)))]
                self.admitting = len(newcomers)
            try:
                for completion in newcomers:
                    batch.admit(completion)
                with self.wake:
                    self.admitting = 0
                batch.retire()
                if batch.active:
                    batch.step()
                batch.retire()
            except Exception as err:  # a bug must not leave clients waiting forever: fail them, go on
                log.exception("decoding step failed")
                batch.fail(f"decoding failed: {err}")
                for completion in newcomers:  # any that never reached a row
                    if not completion.finished:
                        completion.fail(f"decoding failed: {err}")
                with self.wake:
                    self.admitting = 0
        batch.fail("the server is shutting down")
        for completion in self.waiting:
            completion.fail("the server is shutting down")
