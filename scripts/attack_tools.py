#!/usr/bin/env python3
"""Two attacks the load generator does not make, for scripts/attack-matrix.

  slowloris HOST PORT CA CONNECTIONS SECONDS
      holds up to CONNECTIONS TLS connections from 127.4.x.y, each sending
      one header byte a second and never finishing the head; connections
      the server closes are opened again.
  subscriber-flood HOST PORT CA ADMIN TOKEN SECONDS
      binds 127.1.250.1 to one MSISDN and creates associations from it (a new
      clientid per request) as fast as one connection allows.

Loopback targets only; both stop by themselves after SECONDS. Prints one
JSON line of counts.
"""
import http.client
import json
import socket
import ssl
import sys
import time
import urllib.request


def loopback(host):
    if not host.startswith("127."):
        sys.exit(f"refusing: {host} is not loopback")


def slowloris(host, port, ca, connections, seconds):
    loopback(host)
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    held, opened, refused, peak = [], 0, 0, 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        tick = time.time()
        # Keep every held connection alive with one more header byte.
        alive = []
        for conn in held:
            try:
                conn.sendall(b"X")
                alive.append(conn)
            except OSError:
                conn.close()
        held = alive
        # Refill up to CONNECTIONS (the server closes heads that take too
        # long), spending at most 0.9 s of each second on it.
        while len(held) < connections and time.time() < min(tick + 0.9, deadline):
            source = f"127.4.{(opened // 250) % 250}.{opened % 250 + 1}"
            opened += 1
            try:
                raw = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
                conn = context.wrap_socket(raw, server_hostname="localhost")
                conn.sendall(b"GET /mc/v1/resolve?code=2001000001x HTTP/1.1\r\nHost: x\r\n")
                held.append(conn)
            except OSError:
                refused += 1
        peak = max(peak, len(held))
        time.sleep(max(0.0, tick + 1 - time.time()))
    for conn in held:
        conn.close()
    print(json.dumps({"opened": opened, "refused": refused, "peak_held": peak}))


def subscriber_flood(host, port, ca, admin, token, seconds):
    loopback(host)
    source = "127.1.250.1"
    request = urllib.request.Request(
        f"{admin}/admin/v1/sessions/{source}",
        data=json.dumps({"msisdn": "+447700999999"}).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).read()
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    counts = {}
    deadline = time.time() + seconds
    n = 0
    conn = None
    while time.time() < deadline:
        if conn is None:
            conn = http.client.HTTPSConnection(host, port, context=context, source_address=(source, 0), timeout=5)
        n += 1
        try:
            conn.request("GET", f"/mc/v1/resolve?code=2001000001x&clientid=flood-{n}")
            response = conn.getresponse()
            body = response.read()
            key = f"{response.status} {json.loads(body).get('code', json.loads(body).get('association'))}"
        except (OSError, http.client.HTTPException, ValueError) as e:
            key = f"error {type(e).__name__}"
            conn = None
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps({"requests": n, "outcomes": counts}))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "slowloris":
        slowloris(args[0], int(args[1]), args[2], int(args[3]), float(args[4]))
    elif command == "subscriber-flood":
        subscriber_flood(args[0], int(args[1]), args[2], args[3], args[4], float(args[5]))
    else:
        sys.exit(__doc__)
