"""``cronbox agent check``: one minimal call through a profile's provider.

It runs in the host's process with the host's environment (where the profile's key
lives), in a scratch directory, so a profile can be tried before any session uses it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from cronbox_shared.agents import AgentProfile
from cronbox_shared.errors import ProviderError
from cronbox_shared.models import preview
from cronbox_shared.settings import RunnerSettings

CHECK_PROMPT = "This is a connection check. Reply with the single word OK."


async def check_profile(profile: AgentProfile, environ: Mapping[str, str]) -> str:
    """One sentence on success (what the agent answered); ProviderError otherwise."""
    if profile.provider == "echo":
        return "provider echo is built in and answers offline"
    if profile.provider == "scripted":
        return "provider scripted is built in (tests) and needs no model"
    if profile.provider == "fail":
        raise ProviderError("provider fail always fails (test provider)")
    with tempfile.TemporaryDirectory(prefix="cronbox-check-") as scratch:
        settings = RunnerSettings(session_dir=Path(scratch), **profile.runner_fields())
        answer = await _call(settings, environ)
    return f"{profile.provider} answered: {preview(answer) or '(an empty reply)'}"


async def _call(settings: RunnerSettings, environ: Mapping[str, str]) -> str:
    if settings.provider == "command":
        from agent_runner.gate import decode_output, exit_reason, run_bounded
        from agent_runner.providers.command import parse_command
        from cronbox_shared.defaults import DEFAULTS

        argv = parse_command(settings.command)
        try:
            capture, code = await run_bounded(
                argv, cwd=settings.session_dir, env=dict(environ),
                timeout=settings.command_timeout, output_cap=DEFAULTS.gate_output_cap,
                stdin=CHECK_PROMPT.encode(),
            )  # fmt: skip
        except OSError as exc:
            raise ProviderError(f"command {argv[0]} could not be started: {exc}") from None
        if capture.timed_out or capture.overflowed:
            limit = "timed out" if capture.timed_out else "printed too much"
            raise ProviderError(f"command {argv[0]} {limit}")
        if code != 0:
            assert code is not None
            raise ProviderError(exit_reason(f"command {argv[0]}", code, bytes(capture.stderr_tail)))
        return decode_output(bytes(capture.stdout)).strip()
    if settings.provider == "openai":
        from agent_runner.providers.openai import OpenAIProvider

        return await OpenAIProvider(settings, environ).ask(CHECK_PROMPT)
    if settings.provider == "anthropic":
        from agent_runner.providers.anthropic import AnthropicProvider

        return await AnthropicProvider(settings, environ).ask(CHECK_PROMPT)
    if settings.provider == "claude-code":
        from agent_runner.providers.claude_code import ClaudeCodeProvider

        return await ClaudeCodeProvider(settings, environ).ask(CHECK_PROMPT)
    raise ProviderError(f"provider {settings.provider} cannot be checked")
