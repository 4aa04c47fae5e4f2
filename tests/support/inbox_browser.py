"""Drives the inbox widget in two real headless browsers (tests/inbox_browser.rs).

Two Chromium instances (two devices of one user) open the test page, which
loads /v1/inbox/widget.js from the gateway (another origin) and mounts it.
The Rust test sends notifications through the gRPC API and tells this script
on stdin; this script watches the pages and answers on stdout, one JSON
object per line:

  -> {"event": "ready"}                       both pages are live
  <- {"sent": [id], "title": "...", "landing": url, "avatar": url}
  -> {"event": "badge", "ms": ...}            A's (and B's) badge shows 1
  -> {"event": "read_elsewhere", "ms": ...}   A clicked it, B shows it read
  -> {"event": "ready"}                       A is back on the page
  <- {"sent": [id2, id3]}
  -> {"event": "badge", "ms": ...}            both show 2
  -> {"event": "read_all_elsewhere", "ms": ...}  B marked all read, A shows 0
  -> {"event": "archived_elsewhere", "ms": ...}  A archived id2, B drops it
  -> {"event": "done"}

Every wait is a WebDriverWait with a deadline (2 s for what the user sees
after an action elsewhere); nothing sleeps. Any failure prints
{"event": "failed", ...} with both pages' state and exits 1.
"""

import argparse
import json
import os
import sys
import time
import traceback

# Debian's chromedriver is given below: Selenium Manager must not try to
# download a driver or a browser.
os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

LIVE_WITHIN = 2.0  # seconds: what the user sees after a change elsewhere
LOAD_WITHIN = 20.0  # seconds: a page loading and its stream opening


def say(**event):
    print(json.dumps(event), flush=True)


def receive():
    line = sys.stdin.readline()
    if not line:
        raise RuntimeError("the test closed stdin")
    return json.loads(line)


def browser(args):
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1024,768",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(args.chromedriver), options=options)


def wait(driver, what, within, condition):
    """Waits for condition(driver) to be truthy; returns it and the ms it took."""
    started = time.monotonic()
    try:
        value = WebDriverWait(driver, within, poll_frequency=0.02).until(
            lambda d: condition(d)
        )
    except TimeoutException:
        raise AssertionError(f"{driver.name_for_errors}: {what} not within {within} s") from None
    return value, round((time.monotonic() - started) * 1000)


def inbox(driver):
    return driver.find_element(By.ID, "inbox")


def unread(driver):
    return inbox(driver).get_attribute("data-unread")


def live(driver):
    return inbox(driver).get_attribute("data-live") == "open"


def item(driver, notification_id):
    found = driver.find_elements(By.CSS_SELECTOR, f'.tdg-item[data-id="{notification_id}"]')
    return found[0] if found else None


def is_unread(element):
    return "tdg-unread" in element.get_attribute("class").split()


def badge(driver):
    element = driver.find_element(By.CSS_SELECTOR, ".tdg-badge")
    return element.text if element.is_displayed() else ""


def open_page(driver, url):
    driver.get(url)
    wait(driver, "the widget to load, list its items and open its stream", LOAD_WITHIN,
         lambda d: d.find_elements(By.ID, "inbox") and live(d) and unread(d) is not None)


def open_list(driver):
    if driver.find_element(By.CSS_SELECTOR, ".tdg-panel").is_displayed():
        return
    driver.find_element(By.CSS_SELECTOR, ".tdg-bell").click()
    wait(driver, "the list to open", LIVE_WITHIN,
         lambda d: d.find_element(By.CSS_SELECTOR, ".tdg-panel").is_displayed())


def severe_logs(driver):
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "favicon" not in entry["message"]
    ]


def describe(driver):
    try:
        return {
            "url": driver.current_url,
            "data-unread": unread(driver),
            "data-live": inbox(driver).get_attribute("data-live"),
            "items": [
                {"id": li.get_attribute("data-id"), "class": li.get_attribute("class"), "text": li.text}
                for li in driver.find_elements(By.CSS_SELECTOR, ".tdg-item")
            ],
            "console": [e["message"] for e in driver.get_log("browser")],
        }
    except Exception as e:  # the page may be gone: report what we can
        return {"error": repr(e)}


def scenario(args, a, b):
    for driver in (a, b):
        open_page(driver, args.page)
    for driver in (a, b):
        assert unread(driver) == "0", f"{driver.name_for_errors} starts with {unread(driver)} unread"
    say(event="ready")

    # A new notification reaches both devices live; A reads it by clicking,
    # which follows its action URL, and B sees it read.
    sent = receive()
    [first] = sent["sent"]
    _, ms = wait(a, "the badge to show 1", LIVE_WITHIN, lambda d: badge(d) == "1" and unread(d) == "1")
    wait(b, "the badge to show 1", LIVE_WITHIN, lambda d: badge(d) == "1")
    say(event="badge", ms=ms)
    open_list(a)
    row = wait(a, "the new item in the list", LIVE_WITHIN, lambda d: item(d, first))[0]
    assert is_unread(row), "a new item is shown unread"
    # The title is text, not markup: what was sent is what is shown, and no
    # element (or script) came out of it.
    title = row.find_element(By.CSS_SELECTOR, ".tdg-title")
    assert title.text == sent["title"], f"title shown as {title.text!r}, sent {sent['title']!r}"
    assert not title.find_elements(By.CSS_SELECTOR, "*"), "the title made elements"
    assert a.execute_script("return window.__injected === undefined"), "the title ran script"
    avatar = row.find_element(By.CSS_SELECTOR, "img.tdg-avatar").get_attribute("src")
    assert avatar == sent["avatar"], f"avatar {avatar!r}, sent {sent['avatar']!r}"
    item(a, first).click()
    wait(a, "the click to follow the action URL", LIVE_WITHIN, lambda d: d.current_url == sent["landing"])
    _, ms = wait(b, "the item to show read (badge 0)", LIVE_WITHIN,
                 lambda d: unread(d) == "0" and badge(d) == "" and item(d, first) and not is_unread(item(d, first)))
    say(event="read_elsewhere", ms=ms)

    # Two more; B marks all read, A follows; A archives one, B drops it.
    open_page(a, args.page)
    row = item(a, first)
    assert row is not None and not is_unread(row), "after a reload the item is listed read"
    say(event="ready")
    sent = receive()
    second, third = sent["sent"]
    _, ms = wait(a, "the badge to show 2", LIVE_WITHIN, lambda d: badge(d) == "2")
    wait(b, "the badge to show 2", LIVE_WITHIN, lambda d: badge(d) == "2")
    say(event="badge", ms=ms)
    open_list(b)
    b.find_element(By.CSS_SELECTOR, ".tdg-read-all").click()
    _, ms = wait(a, "every item to show read (badge 0)", LIVE_WITHIN,
                 lambda d: unread(d) == "0" and badge(d) == ""
                 and all(not is_unread(item(d, i)) for i in (first, second, third) if item(d, i)))
    say(event="read_all_elsewhere", ms=ms)
    open_list(a)
    item(a, second).find_element(By.CSS_SELECTOR, ".tdg-archive").click()
    wait(a, "the archived item to leave A's list", LIVE_WITHIN, lambda d: item(d, second) is None)
    _, ms = wait(b, "the archived item to leave B's list", LIVE_WITHIN,
                 lambda d: item(d, second) is None and item(d, third) is not None)
    say(event="archived_elsewhere", ms=ms)

    for driver in (a, b):
        errors = severe_logs(driver)
        assert not errors, f"{driver.name_for_errors} console errors: {errors}"
    say(event="done")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", required=True, help="the test page's URL")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    drivers = []
    try:
        for name in ("page A", "page B"):
            driver = browser(args)
            driver.name_for_errors = name
            drivers.append(driver)
        scenario(args, *drivers)
        return 0
    except Exception as e:  # report, with the pages' state, and fail
        say(event="failed", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(),
            pages={d.name_for_errors: describe(d) for d in drivers})
        return 1
    finally:
        for driver in drivers:
            try:
                driver.quit()
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(main())
