"""`tinyllm serve`: a model behind an OpenAI-compatible HTTP API, with a page to play with it.

Starlette routes and uvicorn serves: `POST /v1/completions` (streamed as server-sent events with
"stream": true), `GET /v1/models`, and the page at `/` with its two static files, read from the package at
startup: a fixed table of routes to files, so no request path ever reaches the file system. Requests are
decoded together by a `tinyllm.batching.Engine` (continuous batching); a client that goes away mid-answer
frees its rows at the next step. With an API key, every /v1 request must carry `Authorization: Bearer KEY`
(the page asks for the key). SIGINT/SIGTERM (uvicorn's handlers) stop taking requests, give open answers a
few seconds to finish, close the rest and stop the decoding thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import signal
import sys
import time
from dataclasses import dataclass
from importlib.resources import files

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tinyllm.batching import Completion, Engine, Event, QueueFull
from tinyllm.completions_api import (
    CompletionBodies,
    Limits,
    RequestError,
    parse_completion_request,
    parse_json_object,
    usage,
)

PAGE = {  # route -> (file in tinyllm/page, media type): all that the page is made of
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'", "X-Content-Type-Options": "nosniff"}
DISCONNECT_POLL_S = 0.25  # how often a non-streamed answer checks that its client is still there


def page_files() -> dict[str, tuple[bytes, str]]:
    folder = files("tinyllm") / "page"
    return {route: ((folder / name).read_bytes(), media) for route, (name, media) in PAGE.items()}


@dataclass
class Service:
    """What the routes share: the decoding engine, the tokenizer, limits and identity."""

    engine: Engine
    tokenizer: object
    model_id: str
    model_info: dict
    limits: Limits
    defaults: dict  # the config schema's sample section
    api_key: str | None = None

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise RequestError(
                "missing or wrong API key: send Authorization: Bearer KEY", None, 401, "auth_error"
            )


def error_response(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body holds {declared} bytes; the limit is {limit}", None, 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"the body holds more than {limit} bytes", None, 413)
    return bytes(body)


def sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def completions(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        service.check_key(request)
        body = parse_json_object(await read_body(request, service.limits.max_body_bytes))
        ask = parse_completion_request(body, service.limits, service.defaults)
        prompts = [service.tokenizer.encode(p, bos=True, eos=False) for p in ask.prompts]
        longest = max(len(ids) for ids in prompts)
        if longest > service.limits.max_prompt_tokens:
            raise RequestError(
                f"the prompt is {longest} tokens; at most {service.limits.max_prompt_tokens}", "prompt"
            )
        events: asyncio.Queue[Event] = asyncio.Queue()
        emit = _threadsafe_put(asyncio.get_running_loop(), events)
        choices = [Completion(i * ask.n + j, ids, ask.settings, service.tokenizer, emit)
                   for i, ids in enumerate(prompts) for j in range(ask.n)]  # fmt: skip
        try:
            service.engine.submit(choices)
        except QueueFull as err:
            raise RequestError(
                f"the server is busy: {err}; retry later", None, 429, "rate_limit_error"
            ) from None
        except RuntimeError as err:
            raise RequestError(str(err), None, 503, "server_error") from None
    except RequestError as err:
        return error_response(err)
    answer = Answer(service, choices, events, ask.echo, sum(len(p) for p in prompts) * ask.n)
    if ask.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            answer.stream(ask.include_usage), media_type="text/event-stream", headers=headers
        )
    return await answer.whole(request)


def _threadsafe_put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
    def emit(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return emit


class Answer:
    """One request's choices on their way to the client, streamed or whole; the choices are cancelled
    (their rows freed) as soon as the client is gone."""

    def __init__(self, service: Service, choices: list[Completion], events, echo: bool, prompt_tokens: int):
        self.service, self.choices, self.events, self.prompt_tokens = service, choices, events, prompt_tokens
        self.bodies = CompletionBodies(service.model_id)
        self.texts = [c.text.prompt_text if echo else "" for c in choices]
        self.reasons: list[str | None] = [None] * len(choices)
        self.tokens = 0

    async def next_event(self) -> Event:
        event = await self.events.get()
        if event.finish_reason is not None:
            self.reasons[event.index] = event.finish_reason
            self.tokens += event.tokens
        return event

    async def stream(self, include_usage: bool):
        try:
            for index, text in enumerate(self.texts):
                if text:  # echo
                    yield sse(self.bodies.chunk(index, text, None))
            while None in self.reasons:
                event = await self.next_event()
                if event.error:
                    yield sse(RequestError(event.error, None, 500).body())
                    return
                yield sse(self.bodies.chunk(event.index, event.text, event.finish_reason))
            if include_usage:
                yield sse(self.bodies.usage_chunk(usage(self.prompt_tokens, self.tokens)))
            yield sse("[DONE]")
        finally:  # finished, or the client went away (Starlette cancels this generator then)
            self.service.engine.cancel(self.choices)

    async def whole(self, request: Request) -> Response:
        try:
            while None in self.reasons:
                try:
                    event = await asyncio.wait_for(self.next_event(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)  # nobody reads it; the rows are freed below
                    continue
                if event.error:
                    return error_response(RequestError(event.error, None, 500))
                self.texts[event.index] += event.text
        finally:
            self.service.engine.cancel(self.choices)
        reasons = [reason or "stop" for reason in self.reasons]
        return JSONResponse(self.bodies.whole(self.texts, reasons, usage(self.prompt_tokens, self.tokens)))


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    try:
        service.check_key(request)
    except RequestError as err:
        return error_response(err)
    model = {"id": service.model_id, "object": "model", "created": int(time.time()), "owned_by": "tinyllm"}
    return JSONResponse({"object": "list", "data": [{**model, **service.model_info}]})


async def page(request: Request) -> Response:
    content, media_type = request.app.state.page[request.url.path]
    return Response(content, media_type=media_type, headers=PAGE_HEADERS)


async def not_found(request: Request, exc) -> Response:
    status = getattr(exc, "status_code", 404)
    message = "not found" if status == 404 else f"{request.method} is not allowed here"
    return error_response(RequestError(f"{message}: {request.url.path}", None, status))


def build_app(service: Service) -> Starlette:
    routes = [Route("/v1/completions", completions, methods=["POST"]), Route("/v1/models", models)]
    routes += [Route(path, page) for path in PAGE]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        service.engine.start()
        yield
        await asyncio.to_thread(service.engine.close)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.service, app.state.page = service, page_files()
    return app


# --- starting it --------------------------------------------------------------------------------------------


def load_service(
    checkpoint, defaults: dict, tokenizer=None, device="auto", int8=False, limits=None, api_key=None
) -> Service:
    """The model of a tinyllm checkpoint (any experiment's, or an imported one) ready to serve; defaults:
    the sampling settings a request leaves out (the config schema's sample section)."""
    from pathlib import Path

    from tinyllm.checkpoint import load_model_and_tokenizer
    from tinyllm.devices import resolve_device
    from tinyllm.errors import ConfigError
    from tinyllm.generate import Decoder

    model, tokenizer = load_model_and_tokenizer(checkpoint, tokenizer, resolve_device(device))
    limits = limits or Limits()
    if limits.max_prompt_tokens is None:
        limits = dataclasses.replace(limits, max_prompt_tokens=model.args.max_seq_len)
    if limits.max_prompt_tokens > model.args.max_seq_len:
        raise ConfigError(
            f"--max-prompt-tokens {limits.max_prompt_tokens} exceeds the model's context of "
            f"{model.args.max_seq_len} tokens"
        )
    args = model.args
    info = {"max_seq_len": args.max_seq_len, "vocab_size": args.vocab_size, "parameters": model.num_params(),
            "dim": args.dim, "n_layers": args.n_layers, "weights": "int8" if int8 else "float32"}  # fmt: skip
    engine = Engine(Decoder(model, limits.max_batch, int8), limits.max_queue)
    name = (
        Path(checkpoint).stem
        if Path(checkpoint).parent.name in ("", "train")
        else Path(checkpoint).parent.name
    )
    return Service(engine, tokenizer, f"tinyllm-{name}", info, limits, defaults, api_key)


def listen(host: str, port: int):
    """A listening TCP socket on host:port (port 0: any free one); ConfigError when it cannot be had."""
    import socket

    from tinyllm.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror or err}; pick another --host/--port"
        ) from None
    return sock


def uvicorn_server(service: Service):
    import uvicorn

    # A few seconds for open answers to finish after SIGINT/SIGTERM; then uvicorn closes them.
    config = uvicorn.Config(build_app(service), log_level="warning", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, say=print) -> None:
    """Serve until SIGINT or SIGTERM, saying what is served where."""
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    info, limits = service.model_info, service.limits
    say(f"tinyllm serve: {service.model_id}: {info['parameters'] / 1e6:.1f}M parameters (dim {info['dim']}, "
        f"{info['n_layers']} layers, context {info['max_seq_len']}), {info['weights']} weights, on "
        f"{service.engine.batch.decoder.embedding.device}")  # fmt: skip
    say(f"tinyllm serve: up to {limits.max_batch} completions at once, {limits.max_queue} waiting, "
        f"{limits.max_tokens} tokens each; API key {'required' if service.api_key else 'off'}")  # fmt: skip
    if not service.api_key and bound_host not in ("127.0.0.1", "::1", "localhost"):
        say(f"tinyllm serve: warning: {bound_host} is reachable from other machines and --api-key is off")
    url = f"http://{shown_host}:{bound_port}"
    say(f"tinyllm serve: {url}/ (the page), {url}/v1 (the API); Ctrl-C stops")
    # uvicorn handles SIGINT/SIGTERM while it runs and sends the signal again once it has stopped; by then
    # the stop was clean, so these no-op handlers make it an ordinary exit (status 0, no traceback).
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: None)
    # The decoding thread and the event loop share the GIL; by default a thread that wants it waits 5 ms,
    # long against a 10-30 ms batched step whose tokens the loop must send on.
    sys.setswitchinterval(0.0005)
    uvicorn_server(service).run(sockets=[sock])
    say("tinyllm serve: stopped")
