#!/usr/bin/env python3
"""Deletes queues and exchanges that earlier test runs left on the local RabbitMQ.

Every test declares its own `<tag>-<32 hex>` queues and exchanges (quorum queues, so they
outlive the test's connection). A few hundred of them slow RabbitMQ 3.10 down until it stops
answering handshakes, so scripts/test.sh removes them before a run. Production names (no
32-hex tag) are never touched. Run it only when no tests are running (`--dry-run` only counts).
"""
import re
import subprocess
import sys

import pika

TEST_NAME = re.compile(r"^[a-z0-9]+-[0-9a-f]{32}(\.|$)")


def listed(kind: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [n for n in out.split("\n") if TEST_NAME.match(n)]


def main() -> int:
    try:
        queues, exchanges = listed("queues"), listed("exchanges")
    except (OSError, subprocess.SubprocessError) as e:
        print(f"[clean] cannot list RabbitMQ queues ({e}); leaving them", file=sys.stderr)
        return 0
    if not queues and not exchanges:
        return 0
    if "--dry-run" in sys.argv:
        print(f"[clean] would delete {len(queues)} queue(s) and {len(exchanges)} exchange(s)")
        return 0
    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f?connection_attempts=3&socket_timeout=30")
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    for q in queues:
        ch.queue_delete(q)
    for x in exchanges:
        ch.exchange_delete(x)
    conn.close()
    print(f"[clean] deleted {len(queues)} leftover test queue(s) and {len(exchanges)} exchange(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
