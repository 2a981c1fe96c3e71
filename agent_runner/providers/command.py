"""The ``command`` provider: any CLI agent, the rendered prompt on stdin, stdout the reply.

The profile's ``command = ["prog", "arg"]`` runs in the session's workspace under the
same limits as a gate script: killed with its whole process group after ``timeout``
seconds or once it prints more than the gate output cap. A non-zero exit fails the
batch with the program's last stderr line. Its environment is the runner's minus every
secret, except the profile's own key (``api_key_env``), which a CLI agent may need.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from agent_runner.gate import decode_output, exit_reason, run_bounded
from agent_runner.provider import Batch, ProviderResult, one_reply
from cronbox_shared.defaults import DEFAULTS
from cronbox_shared.environment import gate_environment
from cronbox_shared.errors import ProviderError, RunnerConfigError
from cronbox_shared.settings import RunnerSettings


def parse_command(text: str) -> list[str]:
    """The program and its arguments from the JSON list the host renders."""
    name = RunnerSettings.env_name("command")
    try:
        argv = json.loads(text) if text.strip() else None
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise RunnerConfigError(f'{name} "{text[:80]}" is not a JSON list of program and arguments')
    return argv


class CommandProvider:
    """Runs the profile's command once per batch; its stdout is the one reply."""

    def __init__(
        self,
        settings: RunnerSettings,
        environ: Mapping[str, str] | None = None,
        output_cap: int = DEFAULTS.gate_output_cap,
    ) -> None:
        self.settings = settings
        self.argv = parse_command(settings.command)
        env = os.environ if environ is None else environ
        self.env = gate_environment(env, settings.secret_names)
        key = settings.api_key_env
        if key and key in env:
            self.env[key] = env[key]
        self.output_cap = output_cap

    async def run(self, batch: Batch) -> ProviderResult:
        program = self.argv[0]
        try:
            capture, returncode = await run_bounded(
                self.argv, cwd=batch.context.workspace, env=self.env,
                timeout=self.settings.command_timeout, output_cap=self.output_cap,
                stdin=batch.prompt.encode(),
            )  # fmt: skip
        except OSError as exc:
            raise ProviderError(f"command {program} could not be started: {exc}") from None
        if capture.overflowed:
            raise ProviderError(f"command {program} printed more than {self.output_cap} bytes")
        if capture.timed_out:
            raise ProviderError(
                f"command {program} timed out after {self.settings.command_timeout:g} s"
            )
        assert returncode is not None
        if returncode != 0:
            raise ProviderError(
                exit_reason(f"command {program}", returncode, bytes(capture.stderr_tail))
            )
        return one_reply(batch, decode_output(bytes(capture.stdout)).strip())
