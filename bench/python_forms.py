#!/usr/bin/python3
"""make bench: the forms a Python backend can call check_org_limits in,
through psycopg 3 and psycopg_pool, side by side with SELECT 1 on the same
pool (connection from the PG* environment variables).

    /usr/bin/python3 bench/python_forms.py ORGS SECONDS

8 threads, each a pooled connection, prepared statements; prints requests
per second, the ratio to SELECT 1, and what the client gets back.
"""
import random
import sys
import threading
import time

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

ORGS = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 5
THREADS = 8

FORMS = [
    ("SELECT 1", "SELECT 1 AS one", False),
    ("SELECT f(%s)", "SELECT tiermeter.check_org_limits(%s)", True),
    ("SELECT * FROM f(%s)", "SELECT * FROM tiermeter.check_org_limits(%s)", True),
    ("SELECT (r).* FROM (SELECT f(%s) AS r OFFSET 0) s",
     "SELECT (s.r).* FROM (SELECT tiermeter.check_org_limits(%s) AS r OFFSET 0) s", True),
    ("SELECT row_to_json(f(%s)) AS s (parsed by the driver)",
     "SELECT row_to_json(tiermeter.check_org_limits(%s)) AS s", True),
]


def run(pool, sql, with_org):
    done = [0] * THREADS
    sample = {}
    end = time.monotonic() + SECONDS

    def worker(i):
        with pool.connection() as conn:
            while time.monotonic() < end:
                args = (f"org-{random.randint(1, ORGS)}",) if with_org else ()
                row = conn.execute(sql, args, prepare=True).fetchone()
                sample["row"] = row
                done[i] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0), sample["row"]


def main():
    pool = ConnectionPool("", min_size=THREADS, max_size=THREADS,
                          kwargs={"row_factory": dict_row, "autocommit": True})
    pool.wait()
    results = [(name, *run(pool, sql, w)) for name, sql, w in FORMS]
    pool.close()
    base = results[0][1]
    for name, rps, row in results:
        if "s" in row and isinstance(row["s"], dict):
            row = row["s"]
        shape = (f"one column ({type(next(iter(row.values()))).__name__})" if len(row) == 1
                 else f"{len(row)} named fields, used as {type(row['used']).__name__}")
        print(f"{name:52} {rps:8.0f} req/s  {rps / base:.2f} of SELECT 1  {shape}")


if __name__ == "__main__":
    main()
