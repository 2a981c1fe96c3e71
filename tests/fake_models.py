"""Local stand-ins for model vendors: HTTP servers on 127.0.0.1 that speak the real wire
protocols (OpenAI Chat Completions, Anthropic Messages), driven by the official SDKs.

A test gives the server a script of :class:`Turn` s, one per model call, and reads back
the requests it received (the JSON bodies and headers). A request with ``"stream":
true`` is answered the way the vendor streams: server-sent events (Anthropic's
``message_start`` … ``message_stop``; OpenAI's ``chat.completion.chunk`` s with tool-call
deltas, a usage chunk when ``stream_options.include_usage`` asks for one, and
``[DONE]``), the text and the tool arguments cut into several deltas.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Turn:
    """One model answer: text, tool calls, or an error response with its status."""

    text: str = ""
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    status: int = 200
    error: str = ""
    input_tokens: int = 11
    output_tokens: int = 7


def say(text: str) -> Turn:
    return Turn(text=text)


def call(name: str, arguments: dict[str, Any], text: str = "") -> Turn:
    return Turn(text=text, calls=((name, arguments),))


def fail(status: int, error: str) -> Turn:
    return Turn(status=status, error=error)


@dataclass
class FakeModel:
    """The script, the requests received, and the server's base address."""

    turns: list[Turn]
    base: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    repeat_last: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_turn(self) -> Turn:
        with self.lock:
            if len(self.turns) == 1 and self.repeat_last:
                return self.turns[0]
            if not self.turns:
                return fail(500, "the fake model's script is exhausted")
            return self.turns.pop(0)

    def user_texts(self) -> list[str]:
        """The prompt of each request: its last user message written as text (tool
        results and the conversation's earlier turns come before or are not text)."""
        texts = []
        for body in self.requests:
            prompts = [
                m["content"]
                for m in body["messages"]
                if m["role"] == "user" and isinstance(m["content"], str)
            ]
            texts.append(prompts[-1])
        return texts


def openai_body(turn: Turn, model: str, n: int) -> dict[str, Any]:
    tool_calls = [
        {"id": f"call_{n}_{i}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in enumerate(turn.calls)
    ]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1767225600,
        "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": turn.input_tokens, "completion_tokens": turn.output_tokens,
                  "total_tokens": turn.input_tokens + turn.output_tokens},
    }  # fmt: skip


def anthropic_body(turn: Turn, model: str, n: int) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
    content += [
        {"type": "tool_use", "id": f"toolu_{n}_{i}", "name": name, "input": args}
        for i, (name, args) in enumerate(turn.calls)
    ]
    return {
        "id": f"msg_{n}", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": "tool_use" if turn.calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens},
    }  # fmt: skip


DELTA_CHARS = 5


def pieces(text: str) -> list[str]:
    """``text`` cut into the small deltas a streaming vendor sends."""
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)]


def sse(event: str | None, data: Any) -> bytes:
    """One server-sent event."""
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {body}\n\n".encode()


def anthropic_events(turn: Turn, model: str, n: int) -> list[bytes]:
    """The Messages API's stream for one answer."""
    body = anthropic_body(turn, model, n)
    start = {**body, "content": [], "stop_reason": None,
             "usage": {"input_tokens": turn.input_tokens, "output_tokens": 1}}  # fmt: skip
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(body["content"]):
        opened: dict[str, Any]
        if block["type"] == "text":
            opened, deltas = (
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": part} for part in pieces(block["text"])],
            )
        else:
            opened = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in pieces(json.dumps(block["input"]))
            ]
        events.append(sse("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": opened}))  # fmt: skip
        events += [
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ]
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": body["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": turn.output_tokens}}))  # fmt: skip
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


def openai_events(turn: Turn, model: str, n: int, include_usage: bool) -> list[bytes]:
    """Chat Completions' stream of chunks for one answer."""
    base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk",
            "created": 1767225600, "model": model}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse(None, {**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in pieces(turn.text)]
    for i, (name, args) in enumerate(turn.calls):
        events.append(chunk({"tool_calls": [{
            "index": i, "id": f"call_{n}_{i}", "type": "function",
            "function": {"name": name, "arguments": ""}}]}))  # fmt: skip
        events += [
            chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
            for part in pieces(json.dumps(args))
        ]
    events.append(chunk({}, "tool_calls" if turn.calls else "stop"))
    if include_usage:
        usage = {"prompt_tokens": turn.input_tokens, "completion_tokens": turn.output_tokens,
                 "total_tokens": turn.input_tokens + turn.output_tokens}  # fmt: skip
        events.append(sse(None, {**base, "choices": [], "usage": usage}))
    events.append(sse(None, "[DONE]"))
    return events


def _handler(fake: FakeModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with fake.lock:
                fake.requests.append(body)
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                n = len(fake.requests)
            turn = fake.next_turn()
            route = urlsplit(self.path).path  # Claude Code adds ?beta=true
            if route.endswith("/chat/completions"):
                if turn.status != 200:
                    payload: dict[str, Any] = {"error": {
                        "message": turn.error, "type": "invalid_request_error",
                        "param": None, "code": None}}  # fmt: skip
                else:
                    payload = openai_body(turn, body.get("model", ""), n)
            elif route.endswith("/v1/messages"):
                if turn.status != 200:
                    payload = {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": turn.error},
                    }
                else:
                    payload = anthropic_body(turn, body.get("model", ""), n)
            else:
                turn, payload = fail(404, f"no route {self.path}"), {"error": "not found"}
            if turn.status == 200 and body.get("stream"):
                self.stream(turn, body, n)
                return
            data = json.dumps(payload).encode()
            self.send_response(turn.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def stream(self, turn: Turn, body: dict[str, Any], n: int) -> None:
            model = body.get("model", "")
            if urlsplit(self.path).path.endswith("/v1/messages"):
                events = anthropic_events(turn, model, n)
            else:
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                events = openai_events(turn, model, n, include)
            # HTTP/1.0: the stream ends when the connection closes.
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.end_headers()
            for event in events:
                self.wfile.write(event)
                self.wfile.flush()

    return Handler


@contextmanager
def fake_model(turns: list[Turn], *, repeat_last: bool = False) -> Iterator[FakeModel]:
    """Serve ``turns`` on 127.0.0.1 (any free port) until the block ends."""
    fake = FakeModel(list(turns), repeat_last=repeat_last)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    host, port = server.server_address[:2]
    fake.base = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
