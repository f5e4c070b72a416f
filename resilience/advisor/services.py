"""The advisor run and what staff do with its suggestions.

`advisor_run()` evaluates every rule for every upstream (resilience.advisor
.rules over resilience.advisor.data) and keeps one open `Suggestion` per
(upstream, endpoint, kind, field) in step with the findings: created when a
finding proposes a change, updated when its figures move, marked `outdated`
when the finding no longer fires or the policy no longer has the value it
was proposed against. A suggestion dismissed less than `DISMISS_DAYS` ago is
not proposed again. Kinds named in `AUTO_APPLY_KINDS` are applied at once
(none by default).

`suggestion_apply()` is a normal policy change: the Upstream row is saved
through the ORM, so django-simple-history records it (with the user and the
reason "advisor: <kind> (suggestion N)"), every worker reloads the policy
within a second, and the admin's history page can revert it like any edit.
`suggestion_rollback()` restores the value the suggestion replaced the same
way. `suggestion_effect()` reports the same figures before and after an
application once `EFFECT_MIN_CALLS` calls have passed.

Failure behaviour: applying a suggestion that is not open, or whose field no
longer holds the value it was proposed against, raises `SuggestionConflict`
(409) and changes nothing; an unknown id raises `SuggestionNotFound` (404);
a change that would bind a credential to an origin (resilience.models
`credential_change_refusal`) by a user without `change_credentials`, or
automatically, raises `CredentialChangeForbidden` (403) and changes nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from resilience.advisor.conf import advisor_settings
from resilience.advisor.data import advisor_data
from resilience.advisor.models import Suggestion
from resilience.advisor.rules import Finding, figures, rules_evaluate
from resilience.exceptions import AppError, CredentialChangeForbidden
from resilience.models import Upstream, credential_change_refusal
from resilience.telemetry.selectors import upstream_totals

logger = logging.getLogger(__name__)

#: The effect report compares windows of at most this long, and at least...
EFFECT_MAX_WINDOW = timedelta(hours=24)
EFFECT_MIN_WINDOW = timedelta(minutes=15)


class SuggestionNotFound(AppError):
    code = "suggestion_not_found"
    status = 404


class SuggestionConflict(AppError):
    code = "suggestion_conflict"
    status = 409


def findings_compute(*, now: datetime | None = None, names: Iterable[str] | None = None,
                     by_endpoint: bool = False) -> list[Finding]:
    """Every finding of upstreams `names` (or all), most severe first; reads
    only rollups and breaker events (no writes)."""
    now = now or timezone.now()
    policies = Upstream.objects.all() if names is None else Upstream.objects.filter(name__in=list(names))
    by_name = {row.name: row for row in policies}
    windows, subjects = advisor_data(now=now, names=list(by_name) if names is not None else None,
                                     by_endpoint=by_endpoint)
    found: list[Finding] = []
    for (name, _endpoint), data in sorted(subjects.items()):
        policy = by_name.get(name)
        if policy is not None:
            found.extend(rules_evaluate(data, policy, windows))
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _dismissed_recently(now: datetime) -> set[tuple[str, str, str, str]]:
    since = now - timedelta(days=advisor_settings.DISMISS_DAYS)
    return set(Suggestion.objects.filter(status=Suggestion.Status.DISMISSED, decided_at__gte=since)
               .values_list("upstream", "endpoint", "kind", "field"))


def suggestions_sync(found: list[Finding], *, now: datetime, names: Iterable[str] | None = None) -> None:
    """Keep the open suggestions of upstreams `names` (or all) in step with `found`."""
    wanted = {(f.upstream, f.endpoint, f.kind, f.proposal.field): f for f in found if f.proposal}
    dismissed = _dismissed_recently(now)
    open_rows = Suggestion.objects.filter(status=Suggestion.Status.OPEN)
    if names is not None:
        open_rows = open_rows.filter(upstream__in=list(names))
    existing = {(s.upstream, s.endpoint, s.kind, s.field): s for s in open_rows}
    for key, row in existing.items():
        finding = wanted.get(key)
        if finding is None:
            row.status, row.decided_at = Suggestion.Status.OUTDATED, now
            row.save(update_fields=["status", "decided_at", "updated_at"])
            continue
        proposal = finding.proposal
        # Kept current (figures move); one UPDATE per open suggestion at most, a few rows in all.
        if not (_same(row.to_value, proposal.to_value) and _same(row.from_value, proposal.from_value)
                and row.severity == finding.severity and row.expected == proposal.expected):
            row.from_value, row.to_value = proposal.from_value, proposal.to_value
            row.expected, row.evidence, row.severity = proposal.expected, finding.evidence, finding.severity
            row.save(update_fields=["from_value", "to_value", "expected", "evidence", "severity",
                                    "updated_at"])
    for key, finding in wanted.items():
        if key in existing or key in dismissed:
            continue
        proposal = finding.proposal
        try:
            with transaction.atomic():
                Suggestion.objects.create(
                    upstream=finding.upstream, endpoint=finding.endpoint, kind=finding.kind,
                    severity=finding.severity, field=proposal.field, from_value=proposal.from_value,
                    to_value=proposal.to_value, expected=proposal.expected, evidence=finding.evidence)
        except IntegrityError:
            pass  # another process created it a moment ago: one open suggestion per key


def suggestions_prune(*, now: datetime) -> int:
    """Delete decided suggestions older than `RETENTION_DAYS` (one statement)."""
    cutoff = now - timedelta(days=advisor_settings.RETENTION_DAYS)
    deleted, _ = Suggestion.objects.exclude(status=Suggestion.Status.OPEN).filter(
        decided_at__lt=cutoff).delete()
    return deleted


def advisor_run(*, now: datetime | None = None, names: Iterable[str] | None = None,
                by_endpoint: bool = False) -> dict[str, Any]:
    """Findings and suggestions of upstreams `names` (or all): computes the
    findings, syncs the stored suggestions, applies the kinds allowed to
    apply themselves, prunes old decisions. With `by_endpoint`, each
    (upstream, endpoint) the rollups know is judged on its own. Returns {"findings": [...],
    "suggestions": [open and recently applied Suggestion rows]}."""
    now = now or timezone.now()
    names = list(names) if names is not None else None
    found = findings_compute(now=now, names=names, by_endpoint=by_endpoint)
    suggestions_sync(found, now=now, names=names)
    auto = set(advisor_settings.AUTO_APPLY_KINDS or ())
    if auto:
        for row in Suggestion.objects.filter(status=Suggestion.Status.OPEN, kind__in=auto):
            if names is None or row.upstream in names:
                try:
                    suggestion_apply(suggestion_id=row.pk, user=None, now=now)
                except SuggestionConflict as err:
                    logger.warning("advisor: not auto-applying suggestion %s: %s", row.pk, err.message)
    suggestions_prune(now=now)
    rows = Suggestion.objects.filter(status__in=[Suggestion.Status.OPEN, Suggestion.Status.APPLIED])
    if names is not None:
        rows = rows.filter(upstream__in=names)
    suggestions = list(rows.order_by("-updated_at")[:200])
    for row in suggestions:
        if row.status == Suggestion.Status.APPLIED and row.effect is None:
            suggestion_effect(row, now=now)
    return {"generated_at": now, "findings": found, "suggestions": suggestions}


def _get(suggestion_id: int, *, lock: bool = False) -> Suggestion:
    rows = Suggestion.objects.select_for_update() if lock else Suggestion.objects
    try:
        return rows.get(pk=suggestion_id)
    except (Suggestion.DoesNotExist, ValueError, TypeError):
        raise SuggestionNotFound(f"no suggestion {suggestion_id}") from None


def _policy_set(*, name: str, field: str, expect: Any, value: Any, user: Any, reason: str) -> int:
    """Set one policy field through the ORM (history, reload); returns the
    history record's id. SuggestionConflict when it no longer holds `expect`."""
    try:
        row = Upstream.objects.select_for_update().get(name=name)
    except Upstream.DoesNotExist:
        raise SuggestionConflict(f"upstream {name!r} no longer exists") from None
    current = getattr(row, field)
    if not _same(current, expect):
        raise SuggestionConflict(f"{name}.{field} is {current!r} now, not {expect!r} as when proposed",
                                 field=field, current=current)
    before = row.credential_binding()
    setattr(row, field, value)
    row.full_clean()
    # Like the admin: no policy write binds a credential without the permission.
    refusal = credential_change_refusal(user=user, before=before, after=row.credential_binding())
    if refusal:
        raise CredentialChangeForbidden(refusal, upstream=name, field=field)
    row._change_reason = reason  # simple-history's change reason
    if user is not None and getattr(user, "is_authenticated", False):
        row._history_user = user
    row.save()
    return row.history.order_by("-history_id").values_list("history_id", flat=True).first()


@transaction.atomic
def suggestion_apply(*, suggestion_id: int, user: Any = None, now: datetime | None = None) -> Suggestion:
    """Apply an open suggestion as a policy change (see the module docstring)."""
    row = _get(suggestion_id, lock=True)
    if row.status != Suggestion.Status.OPEN:
        raise SuggestionConflict(f"suggestion {row.pk} is {row.status}, not open", status=row.status)
    who = "automatically" if user is None else f"by {getattr(user, 'username', user)}"
    reason = f"advisor: {row.kind} (suggestion {row.pk}, applied {who})"
    row.history_id = _policy_set(name=row.upstream, field=row.field, expect=row.from_value,
                                 value=row.to_value, user=user, reason=reason)
    row.status, row.decided_at = Suggestion.Status.APPLIED, now or timezone.now()
    row.decided_by = user if getattr(user, "is_authenticated", False) else None
    row.save()
    logger.info("advisor: applied suggestion %s %s: %s.%s %r -> %r", row.pk, who, row.upstream, row.field,
                row.from_value, row.to_value)
    return row


@transaction.atomic
def suggestion_dismiss(*, suggestion_id: int, user: Any = None) -> Suggestion:
    row = _get(suggestion_id, lock=True)
    if row.status != Suggestion.Status.OPEN:
        raise SuggestionConflict(f"suggestion {row.pk} is {row.status}, not open", status=row.status)
    row.status, row.decided_at = Suggestion.Status.DISMISSED, timezone.now()
    row.decided_by = user if getattr(user, "is_authenticated", False) else None
    row.save()
    return row


@transaction.atomic
def suggestion_rollback(*, suggestion_id: int, user: Any = None) -> Suggestion:
    """Put back the value an applied suggestion replaced (a new history record)."""
    row = _get(suggestion_id, lock=True)
    if row.status != Suggestion.Status.APPLIED:
        raise SuggestionConflict(f"suggestion {row.pk} is {row.status}, not applied", status=row.status)
    _policy_set(name=row.upstream, field=row.field, expect=row.to_value, value=row.from_value, user=user,
                reason=f"advisor: rollback of suggestion {row.pk} ({row.kind})")
    row.status = Suggestion.Status.ROLLED_BACK
    row.save(update_fields=["status", "updated_at"])
    return row


def suggestion_effect(row: Suggestion, *, now: datetime | None = None) -> dict[str, Any] | None:
    """The same figures before and after an applied suggestion, over windows of
    equal length (the time since it was applied, 15 min to 24 h), once
    `EFFECT_MIN_CALLS` calls have passed; stored on the row. None before."""
    if row.status != Suggestion.Status.APPLIED or row.decided_at is None:
        return None
    now = now or timezone.now()
    span = min(EFFECT_MAX_WINDOW, now - row.decided_at)
    if span < EFFECT_MIN_WINDOW:
        return None
    endpoint = row.endpoint or None
    after, _ = upstream_totals(name=row.upstream, window=span, now=now, endpoint=endpoint)
    if after.calls < advisor_settings.EFFECT_MIN_CALLS:
        return None
    before, _ = upstream_totals(name=row.upstream, window=span, now=row.decided_at, endpoint=endpoint)
    effect = {"window_seconds": int(span.total_seconds()), "before": figures(before), "after": figures(after),
              "measured_at": now.isoformat()}
    row.effect = effect
    row.save(update_fields=["effect", "updated_at"])
    return effect
