"""An upstream's credential: where it comes from, where it goes, and the
names and values that must be redacted because of it.

A policy never holds a secret, only the name of a variable; the value is read
through `resilience_settings.SECRETS` (the environment's declared credential
variables, handed over by project/settings.py) when the client is built, and
again only while it is still missing. A variable the policy may not name
(`resilience.conf.credential_refusal`: a row saved before the rule, or the
settings changed since) is never read: the call sends nothing and fails with
`CredentialRefused`. On failure: `UpstreamError` naming the variable (never a
value).

`mask` takes the credentials a failed attempt carried (the policy's, and any
the caller put in the request's own credential headers or query, as the
openai SDK does with its key) out of the provider's answer before anyone
reads it: a provider that echoes a key (`Incorrect API key provided: sk-...`)
or the URL it was called with never passes it on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2
import requests
from requests.structures import CaseInsensitiveDict

from resilience import exceptions as errors
from resilience.client.policy import Policy
from resilience.client.spec import RequestSpec
from resilience.client.urls import SECRET_PARAMS, redact_bytes, redact_text
from resilience.conf import credential_refusal, resilience_settings
from resilience.models import Upstream

Kind = Upstream.AuthKind
#: Request headers whose values are credentials whoever set them (the caller,
#: an SDK); the policy's own custom header is added per upstream.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


@dataclass(frozen=True, slots=True)
class Credentials:
    upstream: str
    kind: str
    variable: str
    name: str
    secret: str
    #: Why the variable may not be read ("" when it may).
    refusal: str = ""

    @classmethod
    def for_policy(cls, policy: Policy) -> Credentials:
        secret = refusal = ""
        if policy.auth_kind != Kind.NONE:
            refusal = credential_refusal(policy.auth_env_var) if policy.auth_env_var else ""
            if not refusal:
                secret = str((resilience_settings.SECRETS or {}).get(policy.auth_env_var, "") or "")
        return cls(policy.name, policy.auth_kind, policy.auth_env_var, policy.auth_name, secret, refusal)

    @classmethod
    def for_account(cls, upstream: str, endpoint: str, token: str, *, reason: str = "") -> Credentials:
        """An OAuth2 account's access token, sent as a bearer token; masked
        in failed answers like any secret. Without one, the refusal says why."""
        refusal = "" if token else (f"account {endpoint!r} has no live access token"
                                    + (f" ({reason})" if reason else ""))
        return cls(upstream, Kind.BEARER, "", "", token, refusal)

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
        if self.refusal:
            return errors.CredentialRefused(
                f"credentials for {self.upstream!r} refused, nothing was sent: {self.refusal}",
                upstream=self.upstream, variable=self.variable)
        return errors.UpstreamError(
            f"credentials for {self.upstream!r} are not configured (environment variable "
            f"{self.variable} is empty)", upstream=self.upstream)

    def redact(self, text: str) -> str:
        return redact_text(text, secrets=(self.secret,) if self.secret else (),
                           secret_names=self.secret_names)

    def sent_with(self, spec: RequestSpec) -> tuple[str, ...]:
        """Every credential value a request carried: the policy's, and those
        the caller put in credential headers (`Bearer <key>` and the key
        alone) or in secret-named query parameters."""
        names = self.secret_names
        header = self.name.lower() if self.kind == Kind.HEADER and self.name else ""
        found = [self.secret] if self.secret else []
        for key, value in spec.headers.items():
            lowered = key.lower()
            if (lowered in CREDENTIAL_HEADERS or lowered == header) and isinstance(value, str) and value:
                found.append(value)
                scheme, _, token = value.partition(" ")
                if token.strip() and scheme.isalpha():
                    found.append(token.strip())
        if spec.params or "?" in spec.url:
            found += [value for key, value in spec.query if key.lower() in names and value]
        return tuple(dict.fromkeys(found))

    def mask(self, response: Any, spec: RequestSpec) -> None:
        """Take every credential `spec` carried out of `response` (either
        face's, its body already read): body, headers, reason and URL. For an
        answer that is passed on (an error status): cost paid by failures only."""
        secrets, names = self.sent_with(spec), self.secret_names
        if isinstance(response, httpx2.Response):
            response._content = redact_bytes(response.content, secrets=secrets, secret_names=names)
            response.headers = httpx2.Headers([(key, redact_text(value, secrets=secrets, secret_names=names))
                                               for key, value in response.headers.multi_items()])
            reason = response.extensions.get("reason_phrase")
            if isinstance(reason, bytes) and reason:
                text = redact_text(reason.decode("latin-1"), secrets=secrets, secret_names=names)
                response.extensions = {**response.extensions, "reason_phrase": text.encode("latin-1")}
            return
        response._content = redact_bytes(response.content or b"", secrets=secrets, secret_names=names)
        response.headers = CaseInsensitiveDict(
            {key: redact_text(value, secrets=secrets, secret_names=names)
             for key, value in response.headers.items()})
        response.reason = redact_text(response.reason or "", secrets=secrets, secret_names=names)
        response.url = redact_text(response.url or "", secrets=secrets, secret_names=names)

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
