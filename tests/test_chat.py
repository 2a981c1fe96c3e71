"""``cronbox chat``: a real host, the real CLI in a subprocess, lines on its stdin
(piped, and typed into a pseudo-terminal) and replies on its stdout."""

from __future__ import annotations

import json
import os
import pty
import sys
from pathlib import Path

import anyio
import pytest

from cronbox_shared.models import MAX_PROMPT_BYTES, MessageKind
from host.chat import Heard
from host.service import Cronbox
from tests.hosting import make_settings, running_host

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CHAT_GUARD = 90.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_env(home: Path) -> dict[str, str]:
    return {**os.environ, "TZ": "UTC", "CRONBOX_HOME": str(home), "COLUMNS": "200"}


def test_a_reply_prints_on_one_line_with_its_control_characters_escaped() -> None:
    assert Heard("red \x1b[31malert\nnext", "m1").line() == "agent: red \\x1b[31malert\\nnext"
    assert Heard("boom\x07", "m2", failed=True).line() == "agent could not answer: boom\\x07"
    assert Heard("hi", "m1").record() == {"reply": "hi", "in_reply_to": "m1"}


async def test_each_piped_line_is_sent_and_its_reply_printed_before_the_chat_ends(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    settings = make_settings(home)
    store = Cronbox.from_settings(settings)
    session = store.create_session("talk")
    too_long = "x" * (MAX_PROMPT_BYTES + 1)
    lines = f"hello there\n\n{too_long}\nsecond line\n"
    async with running_host(settings):
        with anyio.fail_after(CHAT_GUARD):
            done = await anyio.run_process(
                [sys.executable, "-m", "host.cli", "chat", "talk"],
                input=lines.encode(), env=chat_env(home), check=False,
            )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert out.splitlines() == ["agent: echo: hello there", "agent: echo: second line"]
    # The blank line was not sent; the oversize one was refused in one sentence.
    [refusal] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "over 64 KiB" in refusal and "Traceback" not in err
    sent = [e.text for e in store.conversation(session.id) if e.kind is MessageKind.CHAT]
    assert sent[:2] == ["hello there", "second line"]


async def test_typed_lines_are_answered_and_ctrl_d_ends_the_chat(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = make_settings(home)
    Cronbox.from_settings(settings).create_session("tty")
    controller, terminal = pty.openpty()
    output = bytearray()

    async def read_until(text: bytes) -> None:
        while text not in output:
            output.extend(await anyio.to_thread.run_sync(os.read, controller, 4096))

    async with running_host(settings):
        with anyio.fail_after(CHAT_GUARD):
            process = await anyio.open_process(
                [sys.executable, "-m", "host.cli", "chat", "tty"],
                stdin=terminal, stdout=terminal, stderr=terminal, env=chat_env(home),
            )  # fmt: skip
            os.close(terminal)
            async with process:
                await read_until(b"Ctrl-D to end")
                os.write(controller, b"ping\n")
                await read_until(b"agent: echo: ping")
                os.write(controller, b"\x04")
                code = await process.wait()
    os.close(controller)
    text = output.decode(errors="replace")
    assert code == 0, text
    assert "chatting with session tty (agent echo)" in text
    assert "Traceback" not in text


async def test_with_json_a_message_the_agent_could_not_answer_is_one_error_record(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    settings = make_settings(home)
    Cronbox.from_settings(settings).create_session("broken", agent="fail")
    async with running_host(settings):
        with anyio.fail_after(CHAT_GUARD):
            done = await anyio.run_process(
                [sys.executable, "-m", "host.cli", "chat", "broken", "--json"],
                input=b"hi\n", env=chat_env(home), check=False,
            )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    [record] = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert record["error"] == "provider 'fail' always fails (test provider)"
    assert record["message"]
