"""Gate scripts run as real bash subprocesses and are judged by their last line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_runner.gate import GateResult, GateVerdict, run_gate

# Generous bound so a hung gate fails the test instead of the whole run; never a
# statement about how long the gate should take.
HANG_GUARD = 10


async def gate(script: str, cwd: Path, **kwargs: Any) -> GateResult:
    with anyio.fail_after(HANG_GUARD):
        return await run_gate(script, cwd=cwd, **kwargs)


def is_running(pid: int) -> bool:
    """Whether ``pid`` is alive; a zombie nobody has reaped yet counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"}


async def assert_dies(pid: int) -> None:
    # SIGKILL is delivered asynchronously, so give the kernel a moment to finish it.
    with anyio.fail_after(5):
        # No event exists for the death of a process that is not our child, so poll.
        while is_running(pid):  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("json_data", "expected"),
    [
        ('{"city": "Oslo", "temp": -3}', {"city": "Oslo", "temp": -3}),
        ("[1, 2, 3]", [1, 2, 3]),
        ("null", None),
    ],
)
async def test_wake_true_wakes_with_data(tmp_path: Path, json_data: str, expected: Any) -> None:
    result = await gate(f'echo \'{{"wakeAgent": true, "data": {json_data}}}\'', tmp_path)

    assert result.verdict is GateVerdict.WAKE
    assert result.data == expected
    assert result.reason is None


@pytest.mark.anyio
async def test_wake_true_without_data_wakes_with_none(tmp_path: Path) -> None:
    result = await gate("echo '{\"wakeAgent\": true}'", tmp_path)

    assert result.verdict is GateVerdict.WAKE
    assert result.data is None


@pytest.mark.anyio
async def test_wake_false_skips_without_error(tmp_path: Path) -> None:
    result = await gate('echo \'{"wakeAgent": false, "data": {"ignored": 1}}\'', tmp_path)

    assert result.verdict is GateVerdict.SKIP
    assert result.data is None
    assert result.reason is None


@pytest.mark.anyio
async def test_only_the_last_line_counts_after_earlier_output(tmp_path: Path) -> None:
    script = """
        echo 'checking the feed...'
        echo '{"wakeAgent": false}'
        echo '{"wakeAgent": true, "data": "new item"}'
    """

    result = await gate(script, tmp_path)

    assert result.verdict is GateVerdict.WAKE
    assert result.data == "new item"
    assert "checking the feed..." in result.output_preview


@pytest.mark.anyio
async def test_trailing_blank_lines_are_ignored(tmp_path: Path) -> None:
    result = await gate('printf \'{"wakeAgent": true, "data": 7}\\r\\n\\n   \\n\\n\'', tmp_path)

    assert result.verdict is GateVerdict.WAKE
    assert result.data == 7


@pytest.mark.anyio
async def test_nonzero_exit_is_an_error_even_with_valid_json(tmp_path: Path) -> None:
    script = """
        echo '{"wakeAgent": true, "data": 1}'
        echo 'first complaint' >&2
        echo 'curl: (6) Could not resolve host' >&2
        echo '' >&2
        exit 3
    """

    result = await gate(script, tmp_path)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script exited with status 3: curl: (6) Could not resolve host"
    assert result.data is None


@pytest.mark.anyio
async def test_nonzero_exit_reason_trims_a_long_stderr_line(tmp_path: Path) -> None:
    result = await gate("printf 'e%.0s' $(seq 1000) >&2; exit 1", tmp_path)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script exited with status 1: " + "e" * 200


@pytest.mark.anyio
async def test_nonzero_exit_without_stderr_names_the_status(tmp_path: Path) -> None:
    result = await gate("exit 42", tmp_path)

    assert result.reason == "gate script exited with status 42"


@pytest.mark.anyio
async def test_a_script_that_runs_too_long_times_out(tmp_path: Path) -> None:
    result = await gate("echo started; sleep 30", tmp_path, timeout=1.0)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script timed out after 1 s"
    assert result.output_preview == "started\n"


@pytest.mark.anyio
async def test_timeout_kills_background_children_of_the_script(tmp_path: Path) -> None:
    script = """
        sleep 300 &
        echo $! > child.pid
        while true; do sleep 0.1; done
    """

    result = await gate(script, tmp_path, timeout=1.0)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script timed out after 1 s"
    await assert_dies(int((tmp_path / "child.pid").read_text()))


@pytest.mark.anyio
async def test_background_children_left_after_exit_neither_hold_the_gate_nor_survive(
    tmp_path: Path,
) -> None:
    script = """
        sleep 300 &
        echo $! > child.pid
        echo '{"wakeAgent": true, "data": "done"}'
    """

    result = await gate(script, tmp_path)

    assert result.verdict is GateVerdict.WAKE
    assert result.data == "done"
    await assert_dies(int((tmp_path / "child.pid").read_text()))


@pytest.mark.anyio
async def test_cancelling_the_caller_kills_the_script_and_its_children(tmp_path: Path) -> None:
    script = """
        sleep 300 &
        echo $! > child.pid
        sleep 300
    """
    # A FIFO: reading it blocks until the script has started its child and written it.
    os.mkfifo(tmp_path / "child.pid")

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_gate(script, cwd=tmp_path))
            child_pid = await anyio.to_thread.run_sync(
                (tmp_path / "child.pid").read_text, abandon_on_cancel=True
            )
            tg.cancel_scope.cancel()

    await assert_dies(int(child_pid))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "script",
    [
        "head -c 2097152 /dev/zero | tr '\\0' x",
        "yes",  # never stops on its own
    ],
)
async def test_output_over_the_cap_is_an_error(tmp_path: Path, script: str) -> None:
    result = await gate(script, tmp_path)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script output exceeded 1 MiB"
    assert len(result.output_preview) <= 500


@pytest.mark.anyio
async def test_output_cap_is_configurable(tmp_path: Path) -> None:
    result = await gate("head -c 5000 /dev/zero | tr '\\0' x", tmp_path, output_cap=4096)

    assert result.reason == "gate script output exceeded 4 KiB"


@pytest.mark.anyio
@pytest.mark.parametrize("script", ["true", "echo; echo '   '; echo"])
async def test_no_output_is_an_error(tmp_path: Path, script: str) -> None:
    result = await gate(script, tmp_path)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script printed nothing"


@pytest.mark.anyio
async def test_last_line_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    script = """
        echo '{"wakeAgent": true}'
        echo "all good, $(printf 'y%.0s' $(seq 300))"
    """

    result = await gate(script, tmp_path)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == "gate script's last line is not JSON: all good, " + "y" * 90


@pytest.mark.anyio
@pytest.mark.parametrize(
    "line",
    [
        '{"wakeAgent": "true"}',
        '{"wakeAgent": 1}',
        '{"data": 1}',
        "[true]",
        "true",
    ],
)
async def test_last_line_without_a_boolean_wake_agent_is_an_error(
    tmp_path: Path, line: str
) -> None:
    result = await gate(f"echo '{line}'", tmp_path)

    assert result.verdict is GateVerdict.ERROR
    assert result.reason == (
        'gate script\'s last line must be a JSON object with a boolean "wakeAgent"'
    )


@pytest.mark.anyio
async def test_script_runs_in_the_given_cwd(tmp_path: Path) -> None:
    workdir = tmp_path / "session"
    workdir.mkdir()
    (workdir / "marker.txt").write_text("here")

    result = await gate(
        'printf \'{"wakeAgent": true, "data": "%s"}\\n\' "$(cat marker.txt)"', workdir
    )

    assert result.verdict is GateVerdict.WAKE
    assert result.data == "here"


@pytest.mark.anyio
async def test_env_vars_pass_through_to_the_script(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "GATE_FEED_URL": "https://example.com/feed"}

    result = await gate(
        'printf \'{"wakeAgent": true, "data": ["%s", "%s"]}\\n\' "$GATE_FEED_URL" "${HOME-}"',
        tmp_path,
        env=env,
    )

    assert result.verdict is GateVerdict.WAKE
    assert result.data == ["https://example.com/feed", ""]  # env replaces, not extends


@pytest.mark.anyio
async def test_stdin_is_empty_so_reading_it_does_not_hang(tmp_path: Path) -> None:
    result = await gate("cat; echo '{\"wakeAgent\": false}'", tmp_path)

    assert result.verdict is GateVerdict.SKIP


@pytest.mark.anyio
async def test_invalid_utf8_output_is_replaced_not_fatal(tmp_path: Path) -> None:
    result = await gate(
        'printf \'\\xff\\xfe\\n\'; echo \'{"wakeAgent": true, "data": "ok"}\'', tmp_path
    )

    assert result.verdict is GateVerdict.WAKE
    assert result.output_preview.startswith("\ufffd\ufffd\n")


@pytest.mark.anyio
async def test_output_preview_keeps_the_tail_of_stdout(tmp_path: Path) -> None:
    script = """
        printf 'a%.0s' $(seq 1000); echo
        echo '{"wakeAgent": false}'
    """

    result = await gate(script, tmp_path)

    assert len(result.output_preview) == 500
    assert result.output_preview.endswith('{"wakeAgent": false}\n')
