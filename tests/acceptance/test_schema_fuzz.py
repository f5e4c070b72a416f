"""Schemathesis against the published schema (`/api/schema/`) of the
production server (gunicorn + uvicorn workers, the whole ASGI stack and
uvicorn's HTTP parsing, as `make serve` runs it), as an ordinary user and as
staff, with the standard checks: no 5xx (`not_a_server_error`), responses
match their schema, status codes and content types are documented.

The CLI runs in a subprocess (its engine runs every phase: explicit examples,
coverage of each constraint's edges, random fuzzing, stateful sequences),
seeded and bounded for CI: FUZZ_EXAMPLES examples per operation (default
20), FUZZ_SEED (default 15). `make fuzz` runs it with 300 examples.
Destructive staff routes (cache clears, breaker reset, probe) are fuzzed
too: the server's database and cache are its own.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


@pytest.mark.parametrize("role", ["user", "staff"])
def test_the_api_survives_its_own_schema(live, role, exposure, tmp_path):
    examples = os.environ.get("FUZZ_EXAMPLES", "20")
    seed = os.environ.get("FUZZ_SEED", "15")
    binary = Path(sys.executable).with_name("schemathesis")
    headers = live.headers(staff=role == "staff")
    done = subprocess.run(
        [str(binary), "run", f"{live.url}/api/schema/", "--checks", CHECKS,
         "--max-examples", examples, "--seed", seed, "--workers", "1",
         "--generation-database", "none", "--request-timeout", "30", "--no-color",
         "--header", f"Authorization: {headers['Authorization']}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    output = done.stdout + done.stderr
    exposure.add(f"schemathesis {role}", output)
    generated = re.search(r"(\d+) generated", output)
    print(f"schemathesis as {role}: {generated.group(0) if generated else '?'} "
          f"({examples} examples per operation, seed {seed})")
    assert done.returncode == 0, output[-12000:]
    operations = re.search(r"Tested: (\d+)", output)
    assert operations and int(operations.group(1)) >= 10, output[-3000:]
