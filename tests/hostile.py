"""Local listening servers and hostile pages that reach for them through every vector we know.

The servers listen on 127.0.0.1 and ::1 at ports the OS picks, count every TCP connection they
accept (a preconnect opens one without sending a request) and every request line they read, and
answer each with a small HTML page that itself reaches for the servers again. No other address
is ever contacted.
"""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from pathlib import Path


class Listener:
    """A TCP server on one loopback address that records what reaches it."""

    def __init__(self, host: str):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            with conn:
                conn.settimeout(1)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    continue
                if line:
                    self.requests.append(line)
                body = b'<p>leak</p><img src="/again.png"><iframe src="/again"></iframe>'
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
                conn.sendall(head + str(len(body)).encode() + b"\r\n\r\n" + body)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@contextmanager
def listeners():
    """Servers on 127.0.0.1 and ::1 (random ports), closed afterwards."""
    servers = [Listener("127.0.0.1"), Listener("::1")]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def hostile_pages(servers: list[Listener], tmp: Path) -> dict[str, str]:
    """Pages named by vector, each reaching for every server (and `localhost`) that way."""
    v4, v6 = servers
    # A file:// target that would itself call the servers if it were ever loaded.
    trap = tmp / "trap.html"
    trap.write_text(f'<img src="{v4.url}/file-trap.png"><iframe src="{v6.url}/file-trap">')
    bases = [v4.url, v6.url, f"http://localhost:{v4.port}", f"http://localhost:{v6.port}"]

    def each(template: str) -> str:
        return "".join(template.format(u=f"{base}/{i}") for i, base in enumerate(bases))

    inner = each("<iframe src='{u}'></iframe>").replace("'", "&quot;")
    data_frame = "data:text/html," + each("<img src='{u}'><iframe src='{u}'></iframe>")
    css_props = ["background", "background-image", "list-style-image", "cursor", "content",
                 "border-image-source", "mask-image", "shape-outside", "filter"]  # fmt: skip
    css = "".join(each(f"<div style=\"{prop}:url('{{u}}')\">東京</div>") for prop in css_props)
    fonts = "".join(
        f"@font-face{{font-family:f{i};src:url('{base}/font')}}" for i, base in enumerate(bases)
    )
    vectors = {
        "iframe": each('<iframe src="{u}"></iframe>'),
        "srcdoc": f'<iframe srcdoc="<p>x</p>{inner}"></iframe>',
        "nested-srcdoc": f"<iframe srcdoc=\"<iframe srcdoc='{inner}'></iframe>\"></iframe>",
        "data-frame": f'<iframe src="{data_frame}"></iframe>',
        "object": each('<object data="{u}" type="text/html"></object>'),
        "embed": each('<embed src="{u}" type="text/html">'),
        "fencedframe": each('<fencedframe src="{u}"></fencedframe>'),
        "meta-refresh": each('<meta http-equiv="refresh" content="0;url={u}">'),
        "meta-refresh-spelling": each("<META HTTP-EQUIV = 'Refresh' CONTENT='0; URL={u}'>"),
        "meta-refresh-body": "<p>東京</p>" + each("<meta http-equiv=refresh content='0;{u}'>"),
        "base-href": f'<base href="{v4.url}/"><img src="relative.png"><a href="x">東京</a>',
        "a-ping": each('<a href="{u}" ping="{u}">東京</a>'),
        "links": "".join(
            each(f'<link rel="{rel}" href="{{u}}">')
            for rel in [
                "prefetch",
                'preload" as="image',
                "preconnect",
                "dns-prefetch",
                "modulepreload",
                "icon",
                "manifest",
                "stylesheet",
                "prerender",
                "alternate stylesheet",
            ]  # fmt: skip
        ),
        "srcset": each('<img srcset="{u} 1x, {u}/2 2x" width=10 height=10>'),
        "picture": each('<picture><source srcset="{u}"><img src="{u}/i"></picture>'),
        "media": each('<video poster="{u}" src="{u}/v"><track src="{u}/t" default></video>')
        + each('<audio src="{u}" autoplay preload="auto"></audio>'),
        "input-image": each('<input type="image" src="{u}">'),
        "svg": each('<svg><image href="{u}" width=5 height=5/><use href="{u}/u#a"/></svg>')
        + each('<svg xmlns:xlink="http://www.w3.org/1999/xlink"><image xlink:href="{u}"/></svg>'),
        "css-url": css,
        "css-import": "<style>" + each("@import url('{u}');") + "</style>",
        "font-face": f"<style>{fonts}p{{font-family:f0,f1,f2,f3}}</style><p>東京</p>",
        "file": f'<iframe src="{trap.as_uri()}"></iframe><img src="{trap.as_uri()}">'
        f'<link rel=stylesheet href="{trap.as_uri()}"><object data="{trap.as_uri()}"></object>',
        "script": each('<script src="{u}"></script>'),
    }
    pages = {
        name: f"<!DOCTYPE html><html><head></head><body><p>東京の空港</p>{body}</body></html>"
        for name, body in vectors.items()
    }
    pages["frameset"] = "<html><frameset>" + each('<frame src="{u}">') + "</frameset></html>"
    return pages
