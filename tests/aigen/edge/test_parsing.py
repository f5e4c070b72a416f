"""The AI edge's body parser (aigen.edge.parsing): orjson first, the shared
parser's wording for whatever orjson refuses."""
from __future__ import annotations

import json

import pytest
from django.test import RequestFactory

from aigen.edge.errors import Refusal
from aigen.edge.parsing import body_json


def _request(raw: bytes, content_type: str = "application/json"):
    return RequestFactory().generic("POST", "/v1/chat/completions", raw, content_type=content_type)


def _refusal(raw: bytes, content_type: str = "application/json") -> Refusal:
    with pytest.raises(Refusal) as caught:
        body_json(_request(raw, content_type))
    return caught.value


def test_a_json_body_is_parsed():
    body = {"model": "m", "messages": [{"role": "user", "content": "caf\u00e9 \U0001F600"}], "n": 2}
    assert body_json(_request(json.dumps(body).encode())) == body
    assert body_json(_request(json.dumps(body, ensure_ascii=False).encode())) == body


def test_what_only_the_shared_parser_reads_is_still_read():
    assert body_json(_request('{"a": 1}'.encode("utf-16"))) == {"a": 1}  # UTF-16, BOM first
    nan = body_json(_request(b'{"a": NaN}'))["a"]  # as json.loads reads it
    assert nan != nan


@pytest.mark.parametrize(("raw", "wording"), [
    (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"a": "\\udc00\\ud800"}', "lone UTF-16 surrogate"),
    (b'{"a": 1} trailing', "JSON parse error"),
    (b'{"a": ', "JSON parse error"),
    (b"\xff\xfe\x00", "JSON parse error"),
])
def test_a_body_that_is_not_json_is_a_400_in_the_shared_parsers_words(raw, wording):
    refusal = _refusal(raw)
    assert refusal.status == 400 and refusal.code == "parse_error"
    assert wording in refusal.message


def test_another_media_type_is_a_415():
    refusal = _refusal(b"{}", "text/plain")
    assert (refusal.status, refusal.code) == (415, "unsupported_media_type")
