"""A provider that echoes the gateway's key (issue 23, M1), against the real
server: the key goes to the provider as the `openai` upstream's credential
and never comes back through /v1, to the real openai SDK or to a raw client
(test_zz_secrets greps what was seen)."""
from __future__ import annotations

import openai
import pytest
import requests

from tests.acceptance.conftest import SECRETS
from tests.support.fake_openai import MODEL_ID, error_body
from tests.support.fake_upstream import Reply

KEY = SECRETS["OPENAI_API_KEY"]


def _echo() -> Reply:
    return Reply(401, body=error_body(401, f"Incorrect API key provided: {KEY}. You can find your key at "
                                           f"https://platform.example/account?key={KEY}"),
                 headers={"X-Echo": f"Bearer {KEY}"})


def test_a_401_echoing_the_key_reaches_a_raw_client_masked(live, exposure):
    live.provider.fail_next(_echo())
    response = requests.post(f"{live.url}/v1/chat/completions", headers=live.headers(), timeout=30,
                             json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
    exposure.add_response("v1 echoed key (raw)", response)
    assert live.provider.requests[-1].headers["Authorization"] == f"Bearer {KEY}"  # sent to the provider...
    assert response.status_code == 401
    assert KEY not in response.text  # ...never passed back
    assert response.json()["error"]["message"].startswith("Incorrect API key provided: REDACTED.")
    assert "?key=REDACTED" in response.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_sdk_raises_without_the_key(live, exposure, stream):
    live.provider.fail_next(_echo())
    client = openai.OpenAI(api_key=live.user_token, base_url=f"{live.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                       stream=stream)
    err = caught.value
    exposure.add("v1 echoed key (sdk)", f"{err}\n{err.body!r}\n{err.response.text}")
    assert KEY not in f"{err}\n{err.body!r}\n{err.response.text}"
    assert "REDACTED" in err.response.text
