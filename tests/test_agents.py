# ruff: noqa: E501 - the README example is quoted exactly, comments and all
"""Agent profiles: agents.toml as the README gives it, the checks at session create and
host start, and ``cronbox agent list`` / ``cronbox agent check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_runner.providers import provider_names
from cronbox_shared.agents import PROVIDERS, AgentProfile, load_profiles
from cronbox_shared.errors import AgentConfigError, MissingAgentKey, UnknownAgent
from cronbox_shared.settings import RunnerSettings
from host.service import Cronbox
from tests.cli_harness import as_json, cli_for, fresh_home, ok
from tests.fake_models import fail, fake_model, say
from tests.hosting import make_settings, running_host

README_EXAMPLE = """
[agents.local]
provider = "openai"                     # anthropic | openai | claude-code | command | echo
model = "llama3.1"
base_url = "http://127.0.0.1:11434/v1"  # optional; the vendor's default otherwise
api_key_env = "OLLAMA_API_KEY"          # optional; name of the HOST environment variable holding the key
system = "You are a helpful assistant."  # optional system prompt
max_turns = 8                            # model calls per wake, tool round trips included
max_tokens = 4096                        # per model call
"""


def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "agents.toml"
    path.write_text(text)
    return path


def test_the_readme_profile_parses_as_written(tmp_path: Path) -> None:
    write(tmp_path, README_EXAMPLE)
    assert load_profiles(tmp_path) == {
        "local": AgentProfile(
            provider="openai", model="llama3.1", base_url="http://127.0.0.1:11434/v1",
            api_key_env="OLLAMA_API_KEY", system="You are a helpful assistant.",
            max_turns=8, max_tokens=4096,
        )
    }  # fmt: skip


def test_no_agents_file_means_only_the_built_in_profiles(tmp_path: Path) -> None:
    assert load_profiles(tmp_path) == {}


def test_every_provider_a_profile_may_name_is_served_by_the_runner() -> None:
    assert set(PROVIDERS) <= set(provider_names())


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ('[agents.x]\nprovider = "gpt"\n', 'profile x: provider "gpt" is unknown; use one of'),
        ('[agents.x]\nprovider = "openai"\n', "profile x: provider openai needs model = ..."),
        ('[agents.x]\nprovider = "command"\n', "profile x: provider command needs command ="),
        ('[agents.x]\nprovider = "echo"\ncolour = 1\n', 'profile x: "colour" is not a profile'),
        ('[agents.x]\nprovider = "echo"\nmax_turns = 0\n', "profile x: max_turns input should"),
        ('[agents.x]\nprovider = "echo"\napi_key_env = "A-B"\n', 'api_key_env "A-B" is not a'),
        ('[agents.x]\nprovider = "openai"\nmodel = "m"\nbase_url = "ftp://h"\n', "not an http"),
        ("[agents.x\n", "is not valid TOML"),
        ('[agent.x]\nprovider = "echo"\n', 'unknown table "agent"; profiles go in [agents.NAME]'),
    ],
)
def test_a_bad_profile_is_one_sentence_naming_it(tmp_path: Path, text: str, sentence: str) -> None:
    write(tmp_path, text)
    with pytest.raises(AgentConfigError) as caught:
        load_profiles(tmp_path)
    message = str(caught.value)
    assert sentence in message and "\n" not in message


def test_session_create_refuses_an_unknown_profile_or_an_unset_key_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    store = Cronbox(tmp_path / "home")
    write(store.home, README_EXAMPLE)
    with pytest.raises(UnknownAgent, match='unknown agent profile "remote"; use one of: echo'):
        store.create_session("s", agent="remote")
    with pytest.raises(MissingAgentKey, match="reads its API key from OLLAMA_API_KEY, which is"):
        store.create_session("s", agent="local")
    assert store.list_sessions() == []
    monkeypatch.setenv("OLLAMA_API_KEY", "k")
    session = store.create_session("s", agent="local")
    with pytest.raises(UnknownAgent):
        store.update_session(session.id, agent="remote")
    assert store.get_session(session.id).agent == "local"


def test_the_host_renders_the_profile_and_grants_its_key_as_the_one_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_settings import sweeper_for

    monkeypatch.setenv("OLLAMA_API_KEY", "sk-local")
    monkeypatch.setenv("CRONBOX_MODEL", "operator-model")  # the profile's fields win
    store = Cronbox(tmp_path / "home")
    write(store.home, README_EXAMPLE)
    session = store.create_session("s", agent="local")
    env = sweeper_for(store).default_runner_env(session)
    settings = RunnerSettings.from_env(env)
    assert (settings.provider, settings.model, settings.base_url, settings.api_key_env) == (
        "openai", "llama3.1", "http://127.0.0.1:11434/v1", "OLLAMA_API_KEY",
    )  # fmt: skip
    assert "sk-local" not in env.values()  # the key travels as a secret, never a setting


@pytest.mark.anyio
async def test_the_host_reports_at_start_a_session_whose_key_variable_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path / "home")
    store = Cronbox.from_settings(settings)
    write(store.home, README_EXAMPLE)
    monkeypatch.setenv("OLLAMA_API_KEY", "k")
    session = store.create_session("s", agent="local")
    monkeypatch.delenv("OLLAMA_API_KEY")
    async with running_host(settings) as sweeper:
        assert "OLLAMA_API_KEY, which is not set" in sweeper.problems[session.id].reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_agent_list_shows_file_and_built_in_profiles_and_whether_keys_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fresh_home(tmp_path, monkeypatch, "UTC")
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    write(home, README_EXAMPLE)
    cli = cli_for(home)
    rows = {row["name"]: row for row in as_json(cli("agent", "list", "--json"))}
    assert set(rows) == {"local", "echo", "fail", "scripted"}
    assert (rows["local"]["model"], rows["local"]["key_set"]) == ("llama3.1", False)
    table = ok(cli("agent", "list")).stdout
    assert "OLLAMA_API_KEY (NOT SET)" in table and "llama3.1" in table


def test_agent_check_reports_the_answer_or_the_vendors_error_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fresh_home(tmp_path, monkeypatch, "UTC")
    monkeypatch.setenv("CHECK_KEY", "sk-check")
    cli = cli_for(home)
    with fake_model([say("OK"), fail(401, "invalid x-api-key")]) as fake:
        write(
            home,
            f"""
[agents.api]
provider = "anthropic"
model = "claude-test"
base_url = "{fake.base}"
api_key_env = "CHECK_KEY"
""",
        )
        assert (
            ok(cli("agent", "check", "api")).stdout.strip() == "profile api: anthropic answered: OK"
        )
        refused = cli("agent", "check", "api")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == "error: the model API answered 401: invalid x-api-key"
    assert "tools" not in fake.requests[0]  # a minimal call
    missing = cli("agent", "check", "nope")
    assert missing.exit_code == 2 and 'unknown agent profile "nope"' in missing.stderr


def test_every_agents_toml_block_of_the_readme_is_a_valid_profile_file(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:]]
    names: set[str] = set()
    for block in blocks:
        write(tmp_path, block)
        names |= set(load_profiles(tmp_path))
    assert {"local", "ollama", "claude", "gpt", "shell"} <= names
