"""The operator's screens in a real headless Chromium, 1400 px wide (one
launch, one story): staff log in, the upstream list fits the screen, the
change page shows the failing demo upstream's live breaker with its buttons,
a policy is edited through the checkbox and tag widgets with a reason, the
reason shows in the history and the change is reverted from there, and the
per-upstream dashboard page draws its charts (uPlot) and breaker timeline and
links a failure's request id to the call log, all while the demo upstream
answers 503. Leaves artifacts/admin-*.png and artifacts/upstream-*.png."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from resilience import exceptions as errors
from resilience import upstream
from resilience.client.context import current_request_id
from resilience.models import Upstream
from tests.browser.conftest import off_loop
from tests.support.fake_upstream import Reply

ARTIFACTS = Path(settings.BASE_DIR) / "artifacts"
WIDTH = 1400


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


#: Nothing wider than the screen, and no table or chart scrolled or cut inside its box.
FITS = """() => document.documentElement.scrollWidth <= window.innerWidth &&
    [...document.querySelectorAll('.results, #rs-upstream .rs-panel, #rs-upstream .rs-plot')].every(
        box => box.scrollWidth <= box.clientWidth)"""


def fits(page) -> bool:
    return page.evaluate(FITS)


def test_edit_revert_and_watch_a_failing_upstream(transactional_db, live_server, fast_passwords,
                                                  django_user_model, fake, make_upstream, launch):
    from playwright.sync_api import expect

    # Database work first: once the browser runs, the ORM only works off its loop.
    django_user_model.objects.create_superuser("staff", email="", password="staff-pass")
    make_upstream("payments", description="Card payments, a long base URL's neighbour")
    demo = make_upstream("demo", description="The flaky demo upstream", retry_total=1,
                         retry_statuses=[502, 503, 504], retry_methods=["GET", "HEAD", "PUT"],
                         breaker_fail_max=3, breaker_reset_timeout=600, cache_vary_headers=["Accept"])
    fake.script("/flaky", Reply(503))
    for _ in range(4):
        upstream("demo").get("/ok")
    for n in range(3):
        token = current_request_id.set(f"req-demo-{n}")
        try:
            with pytest.raises(errors.UpstreamError):
                upstream("demo").get("/flaky")
        finally:
            current_request_id.reset(token)
    assert upstream("demo").breaker.status()["state"] == "open"

    page = launch()
    page.set_viewport_size({"width": WIDTH, "height": 900})
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))

    page.goto(f"{live_server.url}/admin/login/?next=/admin/resilience/upstream/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "staff-pass")
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/admin/resilience/upstream/")
    expect(page.locator("#site-name")).to_have_text("Resilience gateway")
    expect(page.locator("#result_list")).to_contain_text("open")
    shot(page, "admin-upstream-list")
    assert fits(page), page.evaluate("""() => [...document.querySelectorAll('.results, #result_list th')].map(
        b => b.className + ':' + b.scrollWidth + '/' + b.clientWidth).join(' ')""")

    # The change page: live state at the top, buttons there, fieldsets collapsed.
    page.get_by_role("link", name="demo", exact=True).click()
    live = page.locator("#rs-live")
    expect(live.locator('[data-field="state"]')).to_have_text("open")
    expect(live.locator('[data-field="error_rate"]')).to_have_text("42.9%")  # 3 of 7 calls
    expect(live.locator('[data-field="p95"]')).to_have_text(re.compile(r"^\d+ ms$"))
    retries = page.locator("details:has(summary:has-text('Retries'))")
    expect(retries).not_to_have_attribute("open", "")
    shot(page, "admin-upstream-change")
    assert fits(page)

    page.click("button[name=reset-breaker]")
    expect(page.locator(".messagelist")).to_contain_text("Breaker of demo reset (now closed)")
    expect(live.locator('[data-field="state"]')).to_have_text("closed")
    page.click("button[name=clear-cache]")
    expect(page.locator(".messagelist")).to_contain_text("cached response(s) of demo")

    # Edit through the widgets; a bad status is refused item by item.
    retries.locator("summary").click()
    page.fill("#id_retry_statuses", "429, 503, abc")
    page.fill("#id_change_reason", "retry 429 during the incident")
    page.click("input[name=_continue]")
    expect(page.locator(".errorlist")).to_contain_text("'abc': not a number")
    shot(page, "admin-upstream-invalid")
    # The fieldset holding the error opens by itself.
    expect(page.locator("#id_retry_statuses")).to_be_visible()
    page.fill("#id_retry_statuses", "429, 503")
    page.uncheck("#id_retry_methods input[value=PUT]")
    page.check("#id_retry_methods input[value=POST]")
    page.fill("#id_change_reason", "retry 429 during the incident")
    page.click("input[name=_continue]")
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")

    def policy() -> tuple[list[int], list[str], str | None]:
        row = Upstream.objects.get(name="demo")
        return row.retry_statuses, row.retry_methods, row.history.first().history_change_reason

    assert off_loop(policy) == ([429, 503], ["GET", "HEAD", "POST"], "retry 429 during the incident")

    # The reason is in the history; revert to the first version from there, with a reason.
    page.click("a.historylink")
    expect(page.locator("#change-history")).to_contain_text("retry 429 during the incident")
    shot(page, "admin-upstream-history")
    first = off_loop(lambda: Upstream.objects.get(name="demo").history.last().history_id)
    page.locator(f"#change-history a[href$='/history/{first}/']").click()
    page.fill("#id_change_reason", "back to the reviewed policy")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    assert off_loop(policy) == ([502, 503, 504], ["GET", "HEAD", "PUT"], "back to the reviewed policy")

    # The demo upstream fails again; its page shows it.
    def fail_again() -> None:
        for n in range(3, 6):
            token = current_request_id.set(f"req-demo-{n}")
            try:
                with pytest.raises(errors.UpstreamError):
                    upstream("demo").get("/flaky")
            finally:
                current_request_id.reset(token)
        assert upstream("demo").breaker.status()["state"] == "open"

    off_loop(fail_again)
    console.clear()  # the admin pages ask for things the dashboard does not

    page.goto(f"{live_server.url}/dashboard/")
    page.locator('.rs-card[data-upstream="demo"] h2 a').click()
    expect(page).to_have_url(f"{live_server.url}/dashboard/upstreams/demo")
    root = page.locator("#rs-upstream")
    expect(root.locator('#rs-summary [data-field="state"]')).to_have_text("open")
    expect(root.locator(".rs-plot .uplot")).to_have_count(3)
    expect(root.locator(".rs-timeline .rs-band-open")).to_have_count(2)  # opened, reset, opened again
    expect(root.locator(".rs-timeline .rs-band-closed").first).to_be_visible()
    expect(root.locator('[data-field="live"]')).to_have_attribute("data-state", "ok")
    # Hovering the latency chart shows that minute's values in the legend: the minute of the calls
    # above, near the right edge (the last minute there may be a newer one with no calls yet, when
    # the clock passed a minute since).
    plot = root.locator('[data-plot="latency"] .u-over')
    box = plot.bounding_box()
    legend = root.locator('[data-plot="latency"] .u-legend .u-series').nth(2)
    p95 = re.compile(r"p95\s*\d+(\.\d)? ms")
    shown = []
    for step in range(0, 60, 3):  # right to left, a few pixels at a time
        page.mouse.move(box["x"] + box["width"] - 4 - step, box["y"] + box["height"] / 2)
        shown.append(legend.inner_text())
        if p95.search(shown[-1]):
            break
    assert p95.search(shown[-1]), shown
    shot(page, "upstream-demo-1h")
    assert fits(page), page.evaluate("""() => [...document.querySelectorAll('#rs-upstream .rs-panel')].map(
        b => b.getAttribute('aria-label') + ':' + b.scrollWidth + '/' + b.clientWidth).join(' ')""")

    link = root.locator("#rs-failures a", has_text="req-demo-5")
    expect(link).to_be_visible()
    page.set_viewport_size({"width": 800, "height": 900})  # the grid reflows, the charts follow
    page.wait_for_function(FITS)
    shot(page, "upstream-demo-narrow")
    page.set_viewport_size({"width": WIDTH, "height": 900})
    root.locator(".rs-range", has_text="24 hours").click()
    expect(page).to_have_url(f"{live_server.url}/dashboard/upstreams/demo?range=24h")
    expect(root.locator(".rs-plot .uplot")).to_have_count(3)
    shot(page, "upstream-demo-24h")
    assert console == []

    root.locator("#rs-failures a", has_text="req-demo-5").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("req-demo-5")
    assert demo.pk
