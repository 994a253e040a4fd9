#!/usr/bin/env python3
"""Drive famstream's chat page (`famstream serve`, GET /) in a real headless browser.

Debian's chromium through chromedriver (selenium): load the page, type a message, press Enter,
watch the reply stream in, read the memory panel; reload, check the conversation is still
there, send a second message and check the server continued the same session (its token count
grew past the first reply's). Prints a JSON report; exits 1 with a message on any failure.

    python3 tools/chat_page_check.py http://127.0.0.1:PORT [--timeout 180]

Needs chromium and chromium-driver (tools/setup.sh --tests installs them on Debian/Ubuntu) and
selenium (tools/requirements.txt).
"""
import argparse
import json
import re
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys


def browser(profile):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    # as the machine's notes say: no sandbox as root, no background networking on a closed network
    for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}"]:
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


def fail(msg):
    print(f"chat_page_check: {msg}", file=sys.stderr)
    sys.exit(1)


def send_and_watch(d, text, timeout):
    """Type `text`, press Enter; poll the reply until the page says done. Returns the reply and
    every distinct partial reply seen (more than one: it streamed)."""
    box = d.find_element(By.ID, "text")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        state = d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        msgs = d.find_elements(By.CSS_SELECTOR, "#log .msg")
        reply = msgs[-1].text if msgs else ""
        if reply and (not seen or seen[-1] != reply):
            seen.append(reply)
        if state == "done":
            return reply, seen
        if state == "error":
            fail(f"the page shows an error: {reply}")
        time.sleep(0.05)
    fail(f"no finished reply within {timeout} s (state {state}, partial {seen[-1:]})")


def memory(d):
    streamed = d.find_element(By.ID, "streamed").text
    m = re.match(r"(\d+) tokens streamed", streamed)
    if not m:
        fail(f"memory panel says {streamed!r}")
    return dict(policy=d.find_element(By.ID, "policy").text.strip(), tokens=int(m.group(1)),
                state=d.find_element(By.ID, "bytes").text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--timeout", type=float, default=180)
    a = ap.parse_args()
    report = {}
    with tempfile.TemporaryDirectory() as profile:
        d = browser(profile)
        try:
            d.get(a.url)
            session = d.find_element(By.ID, "session").text
            if not session.startswith("web-"):
                fail(f"no session id shown ({session!r})")
            reply1, seen1 = send_and_watch(d, "Name three colours.", a.timeout)
            if not reply1.strip():
                fail("empty reply")
            m1 = memory(d)
            if m1["tokens"] <= 0 or not m1["policy"] or "MiB" not in m1["state"]:
                fail(f"memory panel incomplete: {m1}")
            d.refresh()
            if d.find_element(By.ID, "session").text != session:
                fail("the session id changed on reload")
            msgs = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#log .msg")]
            if msgs != ["Name three colours.", reply1]:
                fail(f"after reload the page shows {msgs}")
            if memory(d)["tokens"] != m1["tokens"]:
                fail("the memory panel was not restored on reload")
            reply2, seen2 = send_and_watch(d, "And three animals?", a.timeout)
            m2 = memory(d)
            # the server's session holds both turns: its token count grew past the first
            if m2["tokens"] <= m1["tokens"]:
                fail(f"the server did not continue the session: {m1['tokens']} -> {m2['tokens']}")
            # streamed: a strict prefix of a reply was on the page before the reply ended
            streamed = any(len(p) < len(r) and r.startswith(p)
                           for r, seen in [(reply1, seen1), (reply2, seen2)] for p in seen)
            report = dict(session=session, reply1=reply1, partials1=len(seen1), reply2=reply2,
                          partials2=len(seen2), streamed=streamed, memory1=m1, memory2=m2,
                          messages=len(d.find_elements(By.CSS_SELECTOR, "#log .msg")))
        finally:
            d.quit()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
