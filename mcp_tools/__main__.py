"""``python -m mcp_tools``: serve the task tools over stdio for ``CRONBOX_SESSION_DIR``.

Exit code 2 with one line on stderr when the environment is wrong.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import anyio

from cronbox_shared.errors import CronboxError
from mcp_tools.config import ToolConfig
from mcp_tools.server import build_server

EXIT_BAD_ENV = 2


def main(environ: Mapping[str, str] | None = None) -> int:
    """Read the environment and serve until the client closes stdin."""
    try:
        config = ToolConfig.from_env(environ)
    except CronboxError as exc:
        print(f"mcp_tools: {exc}", file=sys.stderr)  # noqa: T201 - the one-line user error
        return EXIT_BAD_ENV
    anyio.run(build_server(config).run_stdio_async)
    return 0


if __name__ == "__main__":
    sys.exit(main())
