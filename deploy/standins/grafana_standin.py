"""Grafana stand-in (grafana.Dockerfile): checks what compose hands Grafana, answers /api/health.

Not Grafana. It refuses to start when the admin password is empty or a provisioned dashboard
does not parse, so a broken mount still fails the stack's health check.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROVISIONING = Path("/etc/grafana/provisioning")
DASHBOARDS = Path("/var/lib/grafana/dashboards")


def check() -> list[str]:
    if not os.environ.get("GF_SECURITY_ADMIN_PASSWORD"):
        sys.exit("grafana stand-in: GF_SECURITY_ADMIN_PASSWORD is empty")
    if not list((PROVISIONING / "datasources").glob("*.y*ml")):
        sys.exit(f"grafana stand-in: no datasource file under {PROVISIONING / 'datasources'}")
    boards = sorted(DASHBOARDS.glob("*.json"))
    if not boards:
        sys.exit(f"grafana stand-in: no dashboard JSON under {DASHBOARDS}")
    titles = []
    for board in boards:
        try:
            titles.append(json.loads(board.read_text())["title"])
        except (ValueError, KeyError) as exc:
            sys.exit(f"grafana stand-in: {board.name} is not a dashboard: {exc}")
    return titles


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/api/health":
            body, status = json.dumps({"database": "ok", "version": "stand-in"}).encode(), 200
        else:
            body, status = b"Grafana stand-in: only /api/health answers here\n", 404
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    print(f"grafana stand-in (not Grafana): dashboards {check()}; answering /api/health on :3000", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 3000), Health).serve_forever()
