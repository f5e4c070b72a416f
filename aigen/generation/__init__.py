"""The generation core: from a template request to a provider's answer.

Owns the typed request parsed once from a body (`request`:
`GenerationRequest`), the template registry (`registry`), the services that
generate (`services`, sync and async faces), the providers and their
transport (`providers`, `transport`), cache warm-up (`warmup`), the
background tasks (`tasks`), generation records (`records`, `selectors`),
generation metrics (`metrics`), the OpenAI <-> Anthropic translation (pure
functions, `translate`) and Anthropic's stream wire format for the stream
supervisor (`anthropic_wire`).

Who may import it: the edge (`aigen.edge`), aigen's admin and management
commands, and the package face (`aigen.generate`). It imports downwards only:
`resilience` (client, telemetry, jobs engine, cache), models, conf and
exceptions; never `aigen.edge`.
"""
