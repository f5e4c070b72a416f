"""The dashboard in a real headless Chromium (one launch, one story): an
anonymous visit lands on the admin login, staff log in through its form and
reach the dashboard from the admin index, the cards show real calls, and an
opened breaker (and a new upstream) appear through the auto-refresh, without a
page reload and without console errors. Leaves artifacts/dashboard.png."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from resilience import exceptions as errors
from resilience import upstream
from tests.browser.conftest import off_loop
from tests.support.fake_upstream import Reply

SCREENSHOT = Path(settings.BASE_DIR) / "artifacts" / "dashboard.png"


def card(page, name: str):
    return page.locator(f'.rs-card[data-upstream="{name}"]')


def hover_last_minute(page, card):
    """Point at the chart's last minute with calls (the calls may straddle a
    minute boundary); returns its legend entries (time, calls, errors, p95)."""
    x = card.locator("[data-chart]").evaluate("""el => {
        const u = el.rsChart, calls = u.data[1];
        let i = calls.length - 1;
        while (i > 0 && !calls[i]) { i--; }
        return u.valToPos(u.data[0][i], "x");
    }""")
    box = card.locator("[data-chart] .u-over").bounding_box()
    page.mouse.move(box["x"] + min(x, box["width"] - 1), box["y"] + box["height"] / 2)
    return card.locator("[data-chart] .u-legend .u-series")


def test_staff_watch_a_breaker_open_live(transactional_db, live_server, fast_passwords, django_user_model,
                                         fake, make_upstream, launch):
    from playwright.sync_api import expect

    # Database work first: once the browser runs, the ORM only works off its loop.
    django_user_model.objects.create_superuser("staff", email="", password="staff-pass")
    make_upstream("payments", retry_total=0, breaker_fail_max=2)
    make_upstream("search", cache_ttl=60)
    fake.script("/boom", Reply(503))
    for _ in range(3):
        upstream("payments").get("/charges")
    upstream("search").get("/q")
    upstream("search").get("/q")  # a cache hit

    page = launch()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))

    # Anonymous: the page and its data lead to the admin login.
    page.goto(f"{live_server.url}/dashboard/")
    assert page.url == f"{live_server.url}/admin/login/?next=/dashboard/"
    data = page.request.get(f"{live_server.url}/dashboard/data", max_redirects=0)
    assert (data.status, data.headers["location"]) == (302, "/admin/login/?next=/dashboard/data")

    # Log in through the admin form, which returns to the dashboard; the admin index links to it.
    page.fill("#id_username", "staff")
    page.fill("#id_password", "staff-pass")
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/dashboard/")
    expect(card(page, "payments")).to_be_visible()
    page.goto(f"{live_server.url}/admin/")
    page.get_by_role("link", name="Upstream dashboard").click()
    expect(page).to_have_url(f"{live_server.url}/dashboard/")
    console.clear()  # only the dashboard's own messages count (the login page asks for a favicon)

    page.goto(f"{live_server.url}/dashboard/?refresh=1")
    payments, search = card(page, "payments"), card(page, "search")
    expect(payments.locator('[data-field="state"]')).to_have_text("closed")
    expect(payments.locator('[data-field="calls"]')).to_have_text("3")
    expect(payments.locator('[data-field="error_rate"]')).to_have_text("0.0%")
    expect(search.locator('[data-field="hit_rate"]')).to_have_text("50.0%")
    expect(payments.locator("[data-chart] .uplot")).to_have_count(1)
    expect(hover_last_minute(page, payments).nth(1)).to_contain_text(re.compile(r"calls\s*3"))
    expect(page.locator('#rs-cache [data-field="backend"]')).to_have_text(re.compile(r"^(memory|redis)$"))
    expect(page.locator('[data-field="live"]')).to_have_attribute("data-state", "ok")
    page.evaluate("window.notReloaded = true")

    def trip() -> None:
        for _ in range(2):
            with pytest.raises(errors.UpstreamError):
                upstream("payments").get("/boom")
        assert upstream("payments").breaker.status()["state"] == "open"
        make_upstream("weather")  # a new upstream: its card must appear too

    off_loop(trip)

    expect(payments.locator('[data-field="state"]')).to_have_text("open")
    expect(payments).to_have_class(re.compile(r"\bstate-open\b"))
    expect(payments.locator('[data-field="breaker_detail"]')).to_contain_text("next probe in")
    expect(payments.locator('[data-field="calls"]')).to_have_text("5")
    expect(payments.locator('[data-field="error_rate"]')).to_have_text("40.0%")
    expect(hover_last_minute(page, payments).nth(2)).to_contain_text(re.compile(r"errors\s*2"))
    expect(card(page, "weather").locator('[data-field="state"]')).to_have_text("closed")
    expect(page.locator(".rs-card")).to_have_count(3)
    assert page.evaluate("window.notReloaded") is True  # refreshed in place
    assert page.locator(".rs-state").first.evaluate("e => getComputedStyle(e).backgroundColor") \
        == "rgb(198, 40, 40)"  # the open breaker's red (payments sorts first)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert console == []
