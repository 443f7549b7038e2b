"""The OpenAI completions API as `tinyllm serve` speaks it: request validation and the response bodies.

A request is checked field by field before anything is decoded: a wrong type, an out-of-range or non-finite
number, an unknown field or a feature this server lacks is a RequestError (HTTP 400) whose message and
`param` name the field, in OpenAI's error shape. Defaults are the config schema's sample section
(temperature 1.0, top_k 300, top_p 1.0, max_tokens = sample.max_new_tokens), so the API samples as the
pipeline does; `top_k` is an extension of the API (null = every token).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

MAX_STOP_SEQUENCES = 4  # as OpenAI's API
MAX_STOP_LENGTH = 64
MAX_SEED = 2**63 - 1
# Accepted with the value that means "off", refused otherwise: this server does not implement them.
UNSUPPORTED = {"logprobs": None, "best_of": None, "suffix": None, "logit_bias": None,
               "frequency_penalty": 0, "presence_penalty": 0}  # fmt: skip
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
         "stream_options", "echo", "user", *UNSUPPORTED}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """How one completion samples (already validated); tinyllm.batching decodes with them."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Limits:
    """What one server accepts; past these a request is refused (400, or 429 for the queue)."""

    max_batch: int = 32  # completions decoded together (cache rows)
    max_queue: int = 64  # completions waiting for a row
    max_tokens: int = 1024  # per completion
    max_prompt_tokens: int | None = None  # per prompt, BOS included; None: the model's context
    max_choices: int = 8  # prompts x n in one request
    max_body_bytes: int = 256 * 1024


class RequestError(Exception):
    """A request this server refuses: HTTP status, a one-line message, the field it is about."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = ""):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str]
    n: int
    settings: Settings
    stream: bool
    include_usage: bool
    echo: bool


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object; RequestError for bytes that are not UTF-8 JSON of an object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"the body is not UTF-8 (byte {err.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as err:
        raise RequestError(f"the body is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise RequestError(f"the body must be a JSON object, not {type(value).__name__}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _number(body: dict, name: str, default, low, high, integer: bool = False, nullable: bool = False):
    """body[name] checked: a number (an integer with integer) in [low, high], or null where nullable."""
    value = body.get(name, default)
    if value is None and (nullable or name not in body):
        return default
    is_bool = isinstance(value, bool)
    kind = int if integer else (int, float)
    if is_bool or not isinstance(value, kind) or (isinstance(value, float) and not math.isfinite(value)):
        expected = "an integer" if integer else "a number"
        raise RequestError(f"{name} must be {expected}{' or null' if nullable else ''}, got {value!r}", name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}", name)
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise RequestError(f"{name} must be true or false, got {value!r}", name)


def _strings(body: dict, name: str, most: int, longest: int, allow_empty: bool) -> list[str]:
    """body[name] as a list of strings: a string, or a list of 1..most strings of up to longest characters."""
    value = body.get(name)
    values = [value] if isinstance(value, str) else value
    if (
        not isinstance(values, list)
        or not 1 <= len(values) <= most
        or not all(isinstance(v, str) for v in values)
    ):
        raise RequestError(f"{name} must be a string or a list of 1 to {most} strings", name)
    for v in values:
        if len(v) > longest or (not v and not allow_empty):
            raise RequestError(f"each {name} must hold 1 to {longest} characters, got {len(v)}", name)
    return values


def parse_completion_request(body: dict, limits: Limits, defaults: dict) -> CompletionRequest:
    """Check every field of a POST /v1/completions body; defaults: the config schema's sample section."""
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise RequestError(f"unrecognized request argument: {unknown[0]}", unknown[0])
    for name, off in UNSUPPORTED.items():
        if body.get(name, off) not in (off, None):
            raise RequestError(f"{name} is not supported by this server; leave it out", name)
    if not isinstance(body.get("model", ""), str):
        raise RequestError("model must be a string", "model")
    if "prompt" not in body:
        raise RequestError('prompt is required (a string; "" starts a story from nothing)', "prompt")
    prompts = _strings(body, "prompt", limits.max_choices, 64 * limits.max_prompt_tokens, allow_empty=True)
    stop = (
        _strings(body, "stop", MAX_STOP_SEQUENCES, MAX_STOP_LENGTH, False)
        if body.get("stop") is not None
        else []
    )
    n = _number(body, "n", 1, 1, limits.max_choices, integer=True)
    if n * len(prompts) > limits.max_choices:
        raise RequestError(
            f"{len(prompts)} prompts x n={n} exceed {limits.max_choices} choices a request", "n"
        )
    max_tokens = min(defaults["max_new_tokens"], limits.max_tokens)
    settings = Settings(
        max_tokens=_number(body, "max_tokens", max_tokens, 1, limits.max_tokens, integer=True, nullable=True),
        temperature=float(_number(body, "temperature", defaults["temperature"], 0, 2, nullable=True)),
        top_k=None
        if body.get("top_k", 0) is None
        else _number(body, "top_k", defaults["top_k"], 1, 2**31 - 1, True),
        top_p=float(_number(body, "top_p", defaults["top_p"], 0, 1, nullable=True)),
        stop=tuple(stop),
        seed=_number(body, "seed", None, 0, MAX_SEED, integer=True, nullable=True),
    )
    if settings.top_p == 0:
        raise RequestError("top_p must be above 0 (1 keeps every token)", "top_p")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise RequestError('stream_options must be null or {"include_usage": true|false}', "stream_options")
    if options is not None and not isinstance(options.get("include_usage", False), bool):
        raise RequestError("stream_options.include_usage must be true or false", "stream_options")
    if "user" in body and not isinstance(body["user"], str):
        raise RequestError("user must be a string", "user")
    return CompletionRequest(
        prompts=prompts,
        n=n,
        settings=settings,
        stream=_flag(body, "stream"),
        include_usage=bool((options or {}).get("include_usage", False)),
        echo=_flag(body, "echo"),
    )


class CompletionBodies:
    """The JSON bodies of one completion's answer, all under one id and creation time."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), model

    def _head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def chunk(self, index: int, text: str, finish_reason: str | None) -> dict:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head(), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head(), "choices": [], "usage": usage}

    def whole(self, texts: list[str], reasons: list[str], usage: dict) -> dict:
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]  # fmt: skip
        return {**self._head(), "choices": choices, "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
