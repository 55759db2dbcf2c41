#!/usr/bin/python3
"""A reference backend for tiermeter, in the stack teams use for AI chat
apps: Flask and psycopg 3, Debian's packages only (python3-flask,
python3-psycopg, python3-psycopg-pool).

    TIERMETER_APP_DSN='dbname=app user=chat_app' \
    TIERMETER_BILLING_DSN='dbname=app user=chat_billing' \
    STRIPE_WEBHOOK_SECRET=whsec_... ./app.py --port 8000

Identity: the org of a request comes from the X-Org-Id header, which a
trusted proxy in front of the app sets after authenticating the user, or
from the signed session cookie that a sign-in link sets (GET
/login?org=...&token=..., the token an HMAC-SHA256 of the org under
LOGIN_LINK_SECRET, as an identity provider's magic link would carry; the
cookie is signed with APP_SECRET_KEY).  Both are stand-ins for real
authentication: never expose the app without them.  The org is never taken
from the request body, and an org may read only its own usage.

Roles: TIERMETER_APP_DSN connects as a role given the 'app' and 'reader'
access levels (tiermeter.grant_access), TIERMETER_BILLING_DSN as one given
'billing'; never a superuser, never the extension's owner.
"""
import argparse
import functools
import hashlib
import hmac
import json
import os
import time

import psycopg
from flask import (Flask, Response, abort, g, jsonify, redirect, render_template, request,
                   session)
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

app = Flask(__name__)
app.secret_key = os.environ.get("APP_SECRET_KEY") or os.urandom(32)

# the seed's messages and the actions offered with each refusal
REFUSALS = {
    "limit_exceeded": (
        "Your organization has used its conversation time for this billing period.",
        ["upgrade_plan", "wait_for_next_period"]),
    "session_limit_exceeded": (
        "This conversation has reached the longest session your plan allows.",
        ["start_new_conversation", "upgrade_plan"]),
    "too_many_active_sessions": (
        "Your organization has as many active conversations as your plan allows.",
        ["end_another_conversation", "upgrade_plan"]),
}


def pools():
    if "pools" not in app.config:
        app.config["pools"] = {
            "app": ConnectionPool(os.environ["TIERMETER_APP_DSN"], min_size=1, max_size=8,
                                  kwargs={"row_factory": dict_row, "autocommit": True}),
            "billing": ConnectionPool(os.environ["TIERMETER_BILLING_DSN"], min_size=1, max_size=2,
                                      kwargs={"row_factory": dict_row, "autocommit": True}),
        }
    return app.config["pools"]


def query(sql, params=(), pool="app"):
    """One statement, one row (as a dict), on a pooled connection."""
    with pools()[pool].connection() as conn:
        return conn.execute(sql, params).fetchone()


def current_org():
    org = request.headers.get("X-Org-Id", "").strip() or session.get("org", "")
    if not org:
        abort(401)
    return org


@app.get("/login")
def login():
    """A sign-in link: sets the signed session cookie for the org it names."""
    org = request.args.get("org", "")
    token = request.args.get("token", "")
    secret = os.environ.get("LOGIN_LINK_SECRET", "")
    want = hmac.new(secret.encode(), org.encode(), hashlib.sha256).hexdigest()
    if not secret or not org or not hmac.compare_digest(want, token):
        abort(403)
    session["org"] = org
    return redirect("/usage")


def refusal(status, tier, used, limit, period_end, retry_after):
    """The seed's 429 JSON: error, error_type, message, details, actions."""
    reason = status["reason"]
    message, actions = REFUSALS[reason]
    pct = round(100.0 * used / limit, 2) if limit else 100.0
    body = {
        "error": "Usage limit reached",
        "error_type": reason,
        "message": message,
        "details": {"tier": tier, "used": used, "limit": limit,
                    "percentage_used": pct, "period_end": period_end.isoformat()},
        "actions": actions,
    }
    resp = jsonify(body)
    resp.status_code = 429
    if retry_after is not None:
        resp.headers["Retry-After"] = str(max(int(retry_after), 1))
    return resp


def seconds_until(ts):
    return (ts.timestamp() - time.time())


def monthly_refusal(org, st):
    """429 limit_exceeded from a limit_status or session_status row."""
    lim = query("SELECT (s).* FROM (SELECT tiermeter.check_org_limits(%s) AS s) x", (org,))
    return refusal({"reason": "limit_exceeded"}, lim["tier"], lim["used"], lim["quota"] or 0,
                   lim["period_end"], seconds_until(lim["period_end"]))


def require_conversation_limits(view):
    """Refuses (429 limit_exceeded) when the org's monthly time is spent."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        org = current_org()
        lim = query("SELECT (s).* FROM (SELECT tiermeter.check_org_limits(%s) AS s) x", (org,))
        if not lim["allowed"]:
            return refusal(lim, lim["tier"], lim["used"], lim["quota"] or 0, lim["period_end"],
                           seconds_until(lim["period_end"]))
        g.org = org
        return view(*args, **kwargs)
    return wrapped


def session_refusal(org, st):
    """429 for a session_status that does not allow the conversation to go on."""
    if st["reason"] == "limit_exceeded":
        return monthly_refusal(org, st)
    tier = query("SELECT (tiermeter.check_org_limits(%s)).tier AS tier", (org,))["tier"]
    if st["reason"] == "session_limit_exceeded":
        return refusal(st, tier, st["duration_seconds"], st["session_quota"] or 0,
                       st["period_end"], None)
    # too_many_active_sessions: a slot frees within the idle timeout at most
    idle = query("SELECT extract(epoch FROM current_setting('tiermeter.idle_timeout')::interval)::int AS s")["s"]
    return refusal(st, tier, st["active_sessions"], st["max_active_sessions"] or 0,
                   st["period_end"], idle)


def check_session_limits(view):
    """Begins the conversation's session, or touches it if begun: 429 when
    tiermeter refuses it (monthly time spent, session too long, too many
    active conversations)."""
    @functools.wraps(view)
    def wrapped(conversation_id, *args, **kwargs):
        org = current_org()
        st = query("SELECT (s).* FROM (SELECT tiermeter.check_session_limits(%s, %s) AS s) x",
                   (org, conversation_id))
        fn = "touch_session" if st["active"] else "begin_session"
        st = query(f"SELECT (s).* FROM (SELECT tiermeter.{fn}(%s, %s) AS s) x",
                   (org, conversation_id))
        if not st["allowed"]:
            return session_refusal(org, st)
        g.org = org
        return view(conversation_id, *args, **kwargs)
    return wrapped


@app.post("/api/conversations/<conversation_id>/messages")
@require_conversation_limits
@check_session_limits
def message(conversation_id):
    """A message of a conversation: a simulated streamed answer (the stream
    is fake, the accounting real), the session touched after it, and ended
    on the conversation's last message."""
    body = request.get_json(silent=True) or {}
    chunks = ["Thinking", " about", " it", "."]
    time.sleep(float(body.get("answer_seconds", 0)))
    st = query("SELECT (s).* FROM (SELECT tiermeter.touch_session(%s, %s) AS s) x",
               (g.org, conversation_id))
    if body.get("last"):
        st = query("SELECT (s).* FROM (SELECT tiermeter.end_session(%s, %s) AS s) x",
                   (g.org, conversation_id))
    return jsonify({"conversation_id": conversation_id, "answer": "".join(chunks),
                    "session": {"active": st["active"], "duration_seconds": st["duration_seconds"],
                                "used": st["used"], "quota": st["quota"]}})


@app.post("/webhooks/stripe")
def stripe_webhook():
    """Verifies Stripe-Signature in SQL on the raw body, then applies the
    event: 2xx for every outcome Stripe should not retry, 400 for a bad
    signature or a malformed body."""
    payload = request.get_data(as_text=True)
    header = request.headers.get("Stripe-Signature", "")
    ok = query("SELECT tiermeter.verify_stripe_signature(%s, %s, %s) AS ok",
               (payload, header, os.environ["STRIPE_WEBHOOK_SECRET"]), pool="billing")["ok"]
    if not ok:
        return jsonify({"error": "bad signature"}), 400
    try:
        outcome = query("SELECT tiermeter.apply_subscription_event(%s::jsonb) AS o",
                        (payload,), pool="billing")["o"]
    except psycopg.DataError as e:
        # class 22 (malformed JSON or event): retrying cannot help
        return jsonify({"error": "malformed event", "detail": str(e).splitlines()[0]}), 400
    return jsonify({"received": True, "outcome": outcome}), 200


@app.get("/api/organizations/<org_id>/usage")
def usage(org_id):
    if org_id != current_org():
        return jsonify({"error": "forbidden"}), 403
    stats = query("SELECT tiermeter.usage_stats(%s) AS s", (org_id,))["s"]
    return Response(json.dumps(stats), mimetype="application/json")


@app.get("/usage")
def usage_page():
    """The usage page: a bar per feature, the period's end, the session
    limit, and a warning past the lowest alert threshold."""
    org = current_org()
    stats = query("SELECT tiermeter.usage_stats(%s) AS s", (org,))["s"]
    # a bar per feature the org's tier includes (org_usage lists them;
    # check_org_limits says where the warning starts)
    with pools()["app"].connection() as conn:
        features = conn.execute(
            "SELECT (s.r).feature, (s.r).used, (s.r).quota, (s.r).percent_used, (s.r).warning,"
            "       (s.r).unlimited"
            "  FROM (SELECT tiermeter.check_org_limits(u.org_id, u.feature) AS r"
            "          FROM tiermeter.org_usage u"
            "         WHERE u.org_id = %s AND (u.quota IS NULL OR u.quota > 0)"
            "         ORDER BY u.feature = 'conversation_seconds' DESC, u.feature OFFSET 0) s",
            (org,)).fetchall()
    return render_template("usage.html", org=org, stats=stats, features=features)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
