"""posthog-js (from the npm registry: today's and May 2021's) in headless Chromium, sending to the standalone server.

A page on its own origin loads the pinned posthog-js bundle (installed by
``bin/services up`` under ``SERVICES_DIR/posthog-js``) and points it at
``run_plugin_server`` with CAPTURE_ENABLED. Debian's chromium, driven by
Selenium through Debian's chromedriver, opens it and clicks a button: the
pageview and the autocapture click are stored in Postgres, the click with
the elements posthog-js sent as ``$elements``. Every browser request goes
through CORS, as on a real site.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from plugin_server.models import Element, Event, PersonDistinctId, Team
from tests.capture.conftest import StandaloneServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = Path(os.environ.get("SERVICES_DIR") or ROOT / ".services")
MANIFEST = Path(__file__).resolve().parent / "browser" / "package.json"
# bin/services installs each version of the manifest into a folder named by its hash.
NODE_MODULES = SERVICES_DIR / "posthog-js" / hashlib.sha256(MANIFEST.read_bytes()).hexdigest()[:12] / "node_modules"
# Today's posthog-js and the one of May 2021 (/decide/, which turns its autocapture on; gzip-js
# bodies named in the query, form-encoded base64 for /decide/ itself).
BUNDLES = {"today": NODE_MODULES / "posthog-js" / "dist" / "array.full.js", "2021": NODE_MODULES / "posthog-js-2021" / "dist" / "array.js"}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Hedgehog shop</title></head>
<body>
  <main>
    <h1>Hedgehog shop</h1>
    <div class="product"><button id="buy" class="btn primary" data-attr="buy-button">Buy now</button></div>
  </main>
  <script src="/posthog.js"></script>
  <script>
    window.consoleErrors = [];
    const originalError = console.error;
    console.error = (...args) => { window.consoleErrors.push(args.map(String).join(" ")); originalError(...args); };
    posthog.init(%(token)s, {
      api_host: %(api_host)s,
      persistence: "memory",
      disable_session_recording: true,
      capture_pageview: true,
      autocapture: true,
      opt_out_useragent_filter: true,  // headless Chromium's user agent reads as a bot's
      loaded: () => { window.posthogLoaded = true; },
    });
  </script>
</body></html>
"""


@pytest.fixture(params=sorted(BUNDLES))
def page_server(request: pytest.FixtureRequest, team: Team, standalone_server: StandaloneServer) -> Iterator[str]:
    """A site on another origin serving the page and a posthog-js bundle (today's, 2021's)."""
    bundle = BUNDLES[request.param]
    if not bundle.exists():
        pytest.fail(f"posthog-js is not installed at {bundle}: run bin/services up")
    page = (PAGE % {"token": json.dumps(team.api_token), "api_host": json.dumps(standalone_server.url)}).encode()
    script = bundle.read_bytes()

    class Site(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
            body, kind = (script, "application/javascript") if self.path == "/posthog.js" else (page, "text/html")
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the stdlib's name
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    # localhost, not 127.0.0.1: a site origin other than the capture server's.
    yield f"http://localhost:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Debian's headless chromium through Debian's chromedriver (nothing downloaded)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are not installed: run bin/services up")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,800"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(60)
    yield chrome
    chrome.quit()


def test_posthog_js_sends_a_pageview_and_an_autocapture_click_with_elements(
    team: Team, standalone_server: StandaloneServer, page_server: str, browser: webdriver.Chrome
) -> None:
    """The browser's $pageview and the $autocapture of a click on #buy are stored for the team, the
    click with its elements (button#buy.btn.primary, then its parents), one person for both, and
    posthog-js logged no error."""
    browser.get(page_server)
    standalone_server.wait(lambda: bool(browser.execute_script("return window.posthogLoaded === true")), 30, "posthog-js to load")
    # posthog-js turns autocapture on once its configuration request (/decide/, remote config)
    # has been answered, which on a loaded machine may come after `loaded`: click until a click
    # arrives (each click is one $autocapture once it is on).
    last_click = [0.0]

    def clicked() -> bool:
        if time.monotonic() - last_click[0] > 3:
            browser.find_element(By.ID, "buy").click()
            last_click[0] = time.monotonic()
        return Event.objects.filter(team=team, event="$autocapture").exists()

    try:
        standalone_server.wait(clicked, 90, "an autocapture click in Postgres")
        standalone_server.wait(lambda: Event.objects.filter(team=team, event="$pageview").exists(), 60, "the pageview in Postgres")
    except AssertionError as error:
        raise AssertionError(f"{error}; the browser's console: {browser.get_log('browser')}") from None
    pageview = Event.objects.get(team=team, event="$pageview")
    click = Event.objects.filter(team=team, event="$autocapture").earliest("id")
    assert pageview.properties["$lib"] == "web"
    assert pageview.properties["$lib_version"] == browser.execute_script("return posthog.LIB_VERSION || posthog.version")
    assert pageview.properties["$current_url"] == page_server
    assert click.properties["$event_type"] == "click"
    assert click.distinct_id == pageview.distinct_id
    assert PersonDistinctId.objects.filter(team=team, distinct_id=click.distinct_id).exists()

    # Element rows are made from the `$elements` list only (posthog-js always adds the
    # `$elements_chain` text too; the list only when the configuration asks for it, as ours does).
    elements = list(Element.objects.filter(group__team=team, group__hash=click.elements_hash).order_by("order"))
    assert elements, "the click was stored without its elements"
    button = elements[0]
    assert (button.tag_name, button.attr_id, button.text) == ("button", "buy", "Buy now")
    assert set(button.attr_class or []) == {"btn", "primary"}
    assert button.attributes["attr__data-attr"] == "buy-button"
    assert [element.tag_name for element in elements[1:4]] == ["div", "main", "body"]
    assert browser.execute_script("return window.consoleErrors") == []
