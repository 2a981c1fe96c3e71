"""Local stand-ins for model vendors: HTTP servers on 127.0.0.1 that speak the real wire
protocols (OpenAI Chat Completions, Anthropic Messages), driven by the official SDKs.

A test gives the server a script of :class:`Turn` s, one per model call, and reads back
the requests it received (the JSON bodies and headers).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
        """The first user message of each request, as text."""
        texts = []
        for body in self.requests:
            first = next(m for m in body["messages"] if m["role"] == "user")
            content = first["content"]
            texts.append(content if isinstance(content, str) else json.dumps(content))
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
            if self.path.endswith("/chat/completions"):
                if turn.status != 200:
                    payload: dict[str, Any] = {"error": {
                        "message": turn.error, "type": "invalid_request_error",
                        "param": None, "code": None}}  # fmt: skip
                else:
                    payload = openai_body(turn, body.get("model", ""), n)
            elif self.path.endswith("/v1/messages"):
                if turn.status != 200:
                    payload = {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": turn.error},
                    }
                else:
                    payload = anthropic_body(turn, body.get("model", ""), n)
            else:
                turn, payload = fail(404, f"no route {self.path}"), {"error": "not found"}
            data = json.dumps(payload).encode()
            self.send_response(turn.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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
