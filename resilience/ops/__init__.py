"""The operations edge (top floor, docs/architecture.md "Layers"): what an
operator and an HTTP client of the service itself meet.

Owns the operations API (`views` with `serializers`, `parsers` for bodies,
`throttling`, `permissions` for the API's roles, `api` for DRF's errors as
`AppError`s (`app_error`), the project's JSON error shape and the route
fallback), the operator controls on breakers
(`breakers`), the two dashboards (`dashboard`, `upstream_dashboard`), health
(`health`), the service's own middleware (`middleware`, `inline_middleware`),
the demo (`demo`), the admin's forms (`admin_forms`), the write-side services
the admin, the API and the commands share (`services`) and the scheduled
health probe (`tasks`).

Who may import it: the other edges only (project URLs and settings, the
admin, management commands, aigen's edge, and the views and admin of the
resilience rooms). Nothing below the edge imports it; views stay thin and call
`services` and the rooms' selectors. On failure every view answers in the
project's error shape (`api.exception_handler`; aigen's DRF views render the
same mapping through aigen.edge.errors).
"""
