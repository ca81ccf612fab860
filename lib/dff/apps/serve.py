"""The demo's annotated stream over HTTP, for watching a headless run from a browser.

``GET /`` a small page: the stream and a status block (fps, latency, dropped frames, reconnects) that it
refreshes from ``GET /status.json`` every second; ``GET /stream.mjpg`` the annotated frames as MJPEG
(``multipart/x-mixed-replace``, what ``<img>`` tags and OpenCV/FFmpeg read); ``GET /snapshot.jpg`` the
latest frame. Standard library only: one thread per client (``ThreadingHTTPServer``), and every client
gets the newest frame when it is ready for one, so a slow client skips frames instead of slowing the run.
"""
from __future__ import annotations

import html
import http.server
import json
import threading

import cv2
import numpy as np

BOUNDARY = "dffframe"

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; background: #1e1e1e; color: #ddd; margin: 16px; }}
h1 {{ font-size: 18px; margin: 0 0 10px 0; }}
#wrap {{ display: flex; gap: 16px; align-items: flex-start; }}
img {{ max-width: 70vw; border: 1px solid #555; background: #000; }}
table {{ border-collapse: collapse; font-size: 14px; }}
td {{ padding: 3px 10px 3px 0; }} td.k {{ color: #999; white-space: nowrap; }}
#state.running {{ color: #6c6; }} #state.reconnecting {{ color: #fc6; }} #state.lost, #state.stopped, #state.ended {{ color: #f66; }}
</style></head>
<body><h1>{title}</h1>
<div id="wrap"><img src="/stream.mjpg" alt="annotated stream">
<table id="status">
<tr><td class="k">source</td><td id="source">{source}</td></tr>
<tr><td class="k">state</td><td id="state">-</td></tr>
<tr><td class="k">processed fps</td><td id="fps">-</td></tr>
<tr><td class="k">latency (last)</td><td id="latency_ms">-</td></tr>
<tr><td class="k">latency p50 / p95</td><td id="latency_p">-</td></tr>
<tr><td class="k">frames processed</td><td id="frames">-</td></tr>
<tr><td class="k">frames received</td><td id="received">-</td></tr>
<tr><td class="k">frames dropped</td><td id="dropped">-</td></tr>
<tr><td class="k">reconnects</td><td id="reconnects">-</td></tr>
<tr><td class="k">key interval</td><td id="key_interval">-</td></tr>
<tr><td class="k">memory (RSS)</td><td id="rss_mb">-</td></tr>
<tr><td class="k">last event</td><td id="last_event">-</td></tr>
</table></div>
<script>
function fmt(v, unit, digits) {{ return (v === null || v === undefined) ? "-" : Number(v).toFixed(digits) + unit; }}
async function refresh() {{
  try {{
    const s = await (await fetch("/status.json", {{cache: "no-store"}})).json();
    const st = document.getElementById("state"); st.textContent = s.state; st.className = s.state;
    document.getElementById("fps").textContent = fmt(s.fps, "", 1);
    document.getElementById("latency_ms").textContent = fmt(s.latency_ms, " ms", 0);
    document.getElementById("latency_p").textContent = fmt(s.latency_p50_ms, "", 0) + " / " + fmt(s.latency_p95_ms, " ms", 0);
    for (const k of ["frames", "received", "dropped", "reconnects", "key_interval"])
      document.getElementById(k).textContent = (s[k] === null || s[k] === undefined) ? "-" : s[k];
    document.getElementById("rss_mb").textContent = fmt(s.rss_mb, " MB", 0);
    document.getElementById("last_event").textContent = s.last_event || "-";
  }} catch (e) {{ document.getElementById("state").textContent = "no answer"; }}
}}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass  # no access log on the demo's terminal

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        owner = self.server.owner
        if path in ("/", "/index.html"):
            self._send(owner.page.encode(), "text/html; charset=utf-8")
        elif path == "/status.json":
            self._send(json.dumps(owner.status()).encode(), "application/json")
        elif path == "/snapshot.jpg":
            seq, jpeg = owner.latest(-1, 5.0)
            if jpeg is None:
                self.send_error(503, "no frame yet")
            else:
                self._send(jpeg, "image/jpeg")
        elif path == "/stream.mjpg":
            self._stream(owner)
        else:
            self.send_error(404)

    def _stream(self, owner: StreamServer) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        seq = -1
        try:
            while not owner.closed:
                new, jpeg = owner.latest(seq, 1.0)
                if jpeg is None or new == seq:
                    continue
                seq = new
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the viewer went away


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a client still watching does not keep the process alive
    owner: StreamServer


class StreamServer:
    """Serve the newest annotated frame as MJPEG, and a status page, on ``host:port`` (port 0: any free one).

    :meth:`publish` hands over a frame (BGR) and the status; :meth:`close` stops the server. The default host
    is the loopback interface: a run is only reachable from other machines when the host says so."""

    def __init__(self, port: int, host: str = "127.0.0.1", title: str = "dff demo", source: str = "",
                 quality: int = 80) -> None:
        self.quality = quality
        self.page = _PAGE.format(title=html.escape(title), source=html.escape(source))
        self.closed = False
        self._cond = threading.Condition()
        self._seq = -1
        self._jpeg: bytes | None = None
        self._status: dict = {"state": "starting", "source": source}
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="dff-serve", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def publish(self, image_bgr: np.ndarray | None, status: dict) -> None:
        """A new frame (None: status only) and the status the page shows."""
        jpeg = None
        if image_bgr is not None:
            ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            jpeg = buf.tobytes() if ok else None
        with self._cond:
            self._status = dict(status)
            if jpeg is not None:
                self._jpeg, self._seq = jpeg, self._seq + 1
            self._cond.notify_all()

    def status(self) -> dict:
        with self._cond:
            return dict(self._status)

    def latest(self, after: int, timeout: float) -> tuple[int, bytes | None]:
        """The newest frame, waiting up to ``timeout`` s for one newer than ``after``: (its number, JPEG)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after or self.closed, timeout)
            return self._seq, self._jpeg

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
