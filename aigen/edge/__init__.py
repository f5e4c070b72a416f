"""The HTTP edge of aigen: everything that speaks HTTP to a caller.

Owns the three view families (`api` the DRF template API, `generate` the async
generate view, `openai` /v1/chat/completions + /v1/models, `messages` the
Anthropic Messages door /v1/messages), the relay to an upstream that speaks
Anthropic's wire format (`wire`), the jobs API (`jobs`), body parsing
(`parsing`), the one renderer of every error body (`errors`: ours, OpenAI's
and Anthropic's shapes; the DRF views under /api/ai/ and project.errors
render through it too), request throttles (`throttling`), API-token
authentication (`auth`, `tokens`), the signal receivers that drop cached
token users (`receivers`) and the template context processor. A request is
parsed here, handed to `aigen.generation` or the resilient client, and its
answer or error rendered here.

Who may import it: only the top of the house (project urls, settings and
errors, aigen.urls, admin, management commands). Nothing in
`aigen.generation` or `resilience` imports the edge.
"""
