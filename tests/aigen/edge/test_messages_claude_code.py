"""The real Claude Code CLI (`@anthropic-ai/claude-code`, print mode) through
the gateway: `ANTHROPIC_BASE_URL` at the production server (`make serve`'s
gunicorn + uvicorn, with Redis), a project API token as `ANTHROPIC_API_KEY`,
its telemetry, auto-update and other traffic off; the gateway translates to
a loopback OpenAI-compatible fake. It completes a prompt and a tool call
(the fake asks for `Bash`, the CLI runs it, the result comes back).

The CLI is installed with npm into a folder outside the checkout when it is
missing (kept between runs); without npm or the registry the test skips,
and fails under CI=true."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.fake_openai import CONTENT_PREFIX, FakeOpenAI
from tests.support.live_server import LiveServer
from tests.support.redis_server import require

MODEL = "claude-gateway"
CLI_DIR = Path(tempfile.gettempdir()) / "gateway-claude-code"
CLI_VERSION = "2.1.197"


def claude_cli() -> Path:
    """The CLI's executable, installed when missing (see the module docstring)."""
    executable = CLI_DIR / "node_modules" / ".bin" / "claude"
    if executable.exists():
        return executable
    npm = shutil.which("npm")
    if npm is None:
        require("npm is not installed (needed for the Claude Code CLI)")
    CLI_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(CLI_DIR),
                           f"@anthropic-ai/claude-code@{CLI_VERSION}"],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not executable.exists():
        require(f"npm could not install the Claude Code CLI: {done.stderr[-500:]}")
    return executable


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_url):
    cli = claude_cli()
    with FakeOpenAI() as provider:
        setup = (
            "from resilience.models import Endpoint, Upstream\n"
            f"u = Upstream.objects.create(name='llm', base_url={provider.url!r}, served_models=[{MODEL!r}],"
            " read_timeout=20, deadline=60, log_sample_rate=1.0)\n"
            f"Endpoint.objects.create(upstream=u, name='primary', base_url={provider.url!r}, priority=0)")
        env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"cc{secrets.token_hex(4)}",
               "AI_GENERATE_THROTTLE": "100000/min"}
        with LiveServer(tmp_path_factory.mktemp("claude"), env=env, workers=1, setup=setup) as live:
            yield cli, live, provider


def run_claude(cli: Path, live: LiveServer, home: Path, prompt: str,
               *extra: str) -> subprocess.CompletedProcess:
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANTHROPIC_BASE_URL": live.url,
           "ANTHROPIC_API_KEY": live.token("claude"), "ANTHROPIC_MODEL": MODEL,
           "ANTHROPIC_SMALL_FAST_MODEL": MODEL, "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
           "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1", "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
           "CI": "true"}
    return subprocess.run([str(cli), "-p", prompt, "--model", MODEL, *extra], cwd=home, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_claude_code_completes_a_prompt_through_the_gateway(gateway, tmp_path):
    cli, live, provider = gateway
    done = run_claude(cli, live, tmp_path / "home", "say hello")
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    # The fake echoes the last user text (the CLI puts its context before the prompt).
    assert done.stdout.startswith(CONTENT_PREFIX) and done.stdout.strip().endswith("say hello")
    assert provider.chat_calls >= 1
    sent = provider.requests[-1]
    assert live.token("claude") not in str(dict(sent.headers))  # the caller's token stays at the gateway


def test_claude_code_runs_a_tool_call_through_the_gateway(gateway, tmp_path):
    cli, live, provider = gateway
    marker = f"tool-ran-{secrets.token_hex(3)}"
    prompt = 'TOOL:Bash {"command": "echo ' + marker + '", "description": "print a marker"}'
    done = run_claude(cli, live, tmp_path / "home", prompt, "--allowedTools", "Bash(echo:*)")
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    # The fake answers the tool's result after the CLI ran it: the marker came back through the gateway.
    assert CONTENT_PREFIX in done.stdout and marker in done.stdout
    tool_turn = next(r for r in reversed(provider.chat_requests()) if r["messages"][-1].get("role") == "tool")
    assert marker in str(tool_turn["messages"][-1]["content"])
