#!/usr/bin/python3
"""Relay tiermeter's limit events to a chat channel (or to stdout).

LISTEN tiermeter hears {"id": ..., "kind": ...} for each committed row of
tiermeter.limit_events; this reads the row (the reader access level may)
and posts one line per event to a Slack-style incoming webhook
({"text": ...}), or prints it when no webhook is given.  Debian's packages
only: python3-psycopg (psycopg 3).

    TIERMETER_DSN='dbname=app user=notifier' ./listen.py --webhook https://hooks.example/T0/B0/x

Run it under a supervisor (systemd, a container) that restarts it: events
committed while it is down are not replayed by NOTIFY; on start it can
catch up with --since-id (the highest id it handled, kept by the caller).
"""
import argparse
import json
import os
import sys
import urllib.request

import psycopg


def message(row):
    """One line for a limit_events row."""
    ev_id, org_id, kind, feature, threshold, payload, period_start = row
    payload = payload or {}
    if kind == "threshold_reached":
        return (f"org {org_id}: {feature} reached {threshold}% of its quota "
                f"({payload.get('used')} of {payload.get('quota')}) in the period "
                f"from {period_start:%Y-%m-%d %H:%M} UTC")
    if kind == "tier_changed":
        return f"org {org_id}: tier {payload.get('from')} -> {payload.get('to')}"
    if kind == "stripe_unmapped":
        return (f"Stripe event {payload.get('event_id')} ({payload.get('type')}) "
                f"names no org tiermeter knows")
    return f"limit event {ev_id}: {kind}"


def deliver(text, webhook):
    if webhook:
        req = urllib.request.Request(webhook, data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
    else:
        print(text, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", default=os.environ.get("TIERMETER_DSN", ""))
    ap.add_argument("--webhook", default=os.environ.get("TIERMETER_WEBHOOK"))
    ap.add_argument("--since-id", type=int, default=None,
                    help="first relay the events with a higher id (catching up)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many events")
    args = ap.parse_args()

    conn = psycopg.connect(args.dsn, autocommit=True)
    conn.execute("SET timezone = 'UTC'")
    conn.execute("LISTEN tiermeter")
    query = ("SELECT id, org_id, kind, feature, threshold, payload, period_start "
             "FROM tiermeter.limit_events WHERE id {} %s ORDER BY id")
    done = 0
    if args.since_id is not None:
        for row in conn.execute(query.format(">"), (args.since_id,)).fetchall():
            deliver(message(row), args.webhook)
            done += 1
    print("listening", file=sys.stderr, flush=True)
    for note in conn.notifies():
        if args.count and done >= args.count:
            break
        event = json.loads(note.payload)
        for row in conn.execute(query.format("="), (event["id"],)).fetchall():
            deliver(message(row), args.webhook)
            done += 1
        if args.count and done >= args.count:
            break
    conn.close()


if __name__ == "__main__":
    main()
