"""The HTTP edge of aigen: everything that speaks HTTP to a caller.

Owns the three view families (`api` the DRF template API, `generate` the async
generate view, `openai` /v1/chat/completions + /v1/models), the jobs API
(`jobs`), body parsing (`parsing`), the one renderer of every error body
(`errors`: ours, OpenAI's; Anthropic's joins there), request throttles
(`throttling`), API-token authentication (`auth`,
`tokens`), the signal receivers that drop cached token users (`receivers`)
and the template context processor. A request is parsed here, handed
to `aigen.generation`, and its answer or error rendered here.

Who may import it: only the top of the house (project urls/settings, aigen.urls,
admin, management commands). Nothing in `aigen.generation` or `resilience`
imports the edge.
"""
