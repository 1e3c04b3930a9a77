"""
Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages, each ended by a NUL byte, read by the browser on its fd 3 and written on its fd 4), so
no websocket library and no driver are needed; Debian's `chromium` package is the browser.
"""
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time


def find_chromium():
    """The browser's path, or None."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Chromium:
    """One headless browser: send() runs a DevTools command, open_page() loads a page in a new
    tab, evaluate() runs JavaScript in it; close() ends the browser."""

    def __init__(self, binary, profile_dir, timeout=60.0):
        self.timeout, self.next_id, self.buffer, self.events = timeout, 0, b"", []
        to_browser, self.to_browser = os.pipe()
        self.from_browser, from_browser = os.pipe()
        # the browser's ends, moved above 9 so that putting them on 3 and 4 cannot clobber either
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        flags = ["--headless", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", "--no-first-run",
                 "--no-sandbox",  # its sandbox refuses to run as root, which CI is
                 "--disable-gpu", "--mute-audio", "--autoplay-policy=no-user-gesture-required", "about:blank"]
        self.log = open(os.path.join(profile_dir, "chromium.log"), "wb")
        # a Python trampoline puts the ends on 3 and 4 and becomes the browser (dash, the usual
        # /bin/sh, cannot redirect file descriptors above 9)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import os, sys; r, w = map(int, sys.argv[1:3]); os.dup2(r, 3); os.dup2(w, 4); "
             "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])", *map(str, ends), binary, *flags],
            pass_fds=ends, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        for fd in ends:
            os.close(fd)

    def close(self):
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)
        self.log.close()

    def _message(self, deadline):
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()}); see {self.log.name}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, session=None, **params):
        """Runs one DevTools command and returns its result; events that come first are kept."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:  # a pipe may take a long message in parts
            data = data[os.write(self.to_browser, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method):
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def open_page(self, url, width=1200, height=900):
        """A new tab showing `url`, loaded (its load event fired); returns its session id."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.send("Page.navigate", session, url=url)
        self.wait_event("Page.loadEventFired")
        return session

    def evaluate(self, session, expression):
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"javascript error: {result['exceptionDetails']}")
        return result["result"].get("value")
