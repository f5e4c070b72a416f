"""How project/settings.py reads the environment: django-environ's `Env`,
remembering every variable the settings read, and the read-only view of the
environment that upstream credentials are taken from.

Imported by project/settings.py only. Every variable the settings read is a
deploy variable (`Environment.read`): no upstream policy may name one, and
the credential view never answers for one (resilience.conf
`credential_refusal` refuses them by name whatever else is declared).
Variables the settings read *as* upstream credentials (`credential()`, e.g.
OPENAI_API_KEY) are declared ones, not deploy variables.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import environ


class Environment(environ.Env):
    """`environ.Env` that records the names it reads (`read`) and the names
    read as upstream credentials (`credentials`)."""

    def __init__(self, **scheme: Any) -> None:
        super().__init__(**scheme)
        self.read: set[str] = set()
        self.credentials: set[str] = set()

    def get_value(self, var: str, cast: Any = None, default: Any = environ.Env.NOTSET,
                  parse_default: bool = False) -> Any:
        # Every typed reader (str, bool, list, db_url, ...) comes through here.
        self.read.add(var)
        return super().get_value(var, cast=cast, default=default, parse_default=parse_default)

    def credential(self, var: str, default: str = "") -> str:
        """An upstream credential the settings need themselves: declared, not
        a deploy variable."""
        self.credentials.add(var)
        return self.ENVIRON.get(var, default)


class CredentialVariables(Mapping[str, str]):
    """The environment as upstream credentials see it: only the variables
    declared as credentials (named in `names`, or starting with `prefix`),
    never one of `refused` (the settings' own). Live: a variable set after
    start is seen, as `os.environ` would show it."""

    def __init__(self, source: Mapping[str, str], *, prefix: str, names: frozenset[str],
                 refused: frozenset[str] | set[str]) -> None:
        self._source = source
        self.prefix = prefix
        self.names = frozenset(names)
        # A live set: the settings keep reading after this view is built.
        self._refused = refused

    def declared(self, name: str) -> bool:
        return name not in self._refused and (
            name in self.names or (bool(self.prefix) and name.startswith(self.prefix)))

    def __getitem__(self, name: str) -> str:
        if not self.declared(name):
            raise KeyError(name)
        return self._source[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in list(self._source) if self.declared(name))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:  # names only, never values
        return f"<CredentialVariables {sorted(self)}>"
