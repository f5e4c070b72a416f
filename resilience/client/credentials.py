"""An upstream's credential: where it comes from, where it goes, and the
names that must be redacted because of it.

A policy never holds a secret, only the name of a variable; the value is read
through `resilience_settings.SECRETS` (the environment, handed over by
project/settings.py) when the client is built, and again only while it is
still missing. On failure: `UpstreamError` naming the variable (never a value).
"""
from __future__ import annotations

from dataclasses import dataclass

import httpx2
import requests

from resilience import exceptions as errors
from resilience.client.policy import Policy
from resilience.client.urls import SECRET_PARAMS, redact_text
from resilience.conf import resilience_settings
from resilience.models import Upstream

Kind = Upstream.AuthKind


@dataclass(frozen=True, slots=True)
class Credentials:
    upstream: str
    kind: str
    variable: str
    name: str
    secret: str

    @classmethod
    def for_policy(cls, policy: Policy) -> Credentials:
        secret = ""
        if policy.auth_kind != Kind.NONE:
            secret = str((resilience_settings.SECRETS or {}).get(policy.auth_env_var, "") or "")
        return cls(policy.name, policy.auth_kind, policy.auth_env_var, policy.auth_name, secret)

    @property
    def needed(self) -> bool:
        return self.kind != Kind.NONE

    @property
    def secret_names(self) -> frozenset[str]:
        """Query parameters whose values are redacted in logs and messages."""
        if self.kind == Kind.QUERY and self.name:
            return SECRET_PARAMS | {self.name.lower()}
        return SECRET_PARAMS

    def missing_error(self) -> errors.UpstreamError:
        return errors.UpstreamError(
            f"credentials for {self.upstream!r} are not configured (environment variable "
            f"{self.variable} is empty)", upstream=self.upstream)

    def redact(self, text: str) -> str:
        return redact_text(text, secrets=(self.secret,) if self.secret else (),
                           secret_names=self.secret_names)

    def apply(self, prepared: requests.PreparedRequest) -> None:
        """Add the credential to a request prepared by requests."""
        if self.kind == Kind.BEARER:
            prepared.headers["Authorization"] = f"Bearer {self.secret}"
        elif self.kind == Kind.HEADER:
            prepared.headers[self.name] = self.secret
        elif self.kind == Kind.QUERY:
            prepared.prepare_url(prepared.url, {self.name: self.secret})

    def headers_and_params(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The credential as extra headers and query pairs (async face)."""
        if self.kind == Kind.BEARER:
            return {"Authorization": f"Bearer {self.secret}"}, []
        if self.kind == Kind.HEADER:
            return {self.name: self.secret}, []
        if self.kind == Kind.QUERY:
            return {}, [(self.name, self.secret)]
        return {}, []

    def apply_httpx(self, request: httpx2.Request) -> httpx2.Request:
        headers, params = self.headers_and_params()
        for key, value in headers.items():
            request.headers[key] = value
        if params:
            request.url = request.url.copy_merge_params(params)
        return request
