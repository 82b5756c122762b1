"""Shared by the Python driver scripts: arguments, steps, checks and deadlines.

Run by tests-integration/tests/drivers.rs; see tests-integration/drivers/README.md.
"""

import argparse
import sys
import time
import traceback

# How long any poll (replication catching up, a statement showing up) may take.
DEADLINE_SECONDS = 30.0
# A cancelled pg_sleep(30) must come back well before the sleep would have ended.
CANCEL_LIMIT_SECONDS = 10.0
# The pool workload: workers x operations each.
POOL_WORKERS = 10
POOL_OPS = 50
# The fixed instant rendered under the session's TimeZone, and what Kathmandu (+05:45,
# no daylight saving) makes of it.
INSTANT = "2024-01-15 12:00:00+00"
KATHMANDU = "2024-01-15 17:45:00+05:45"
SLEEP_SQL = "SELECT pg_sleep(30)"
# Finds a running SLEEP_SQL on a node (for the cancel step), whoever runs it.
ACTIVE_SLEEP_SQL = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()"
)


class Failure(Exception):
    pass


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--dbname", required=True)
    p.add_argument("--primary-port", type=int, required=True)
    p.add_argument("--replica-ports", required=True, help="comma-separated")
    p.add_argument("--mode", choices=["normal", "prepared"], required=True)
    a = p.parse_args()
    a.replica_ports = [int(x) for x in a.replica_ports.split(",") if x]
    return a


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def expect_eq(got, want, what):
    if got != want:
        raise Failure(f"{what}: got {got!r}, want {want!r}")


def sqlstate_of(exc):
    return getattr(exc, "sqlstate", None)


def deadline(seconds=DEADLINE_SECONDS):
    return time.monotonic() + seconds


def pause():
    """The interval between two polls (never a wait for a condition by itself)."""
    time.sleep(0.02)


class Steps:
    """Runs named steps in order and prints progress. A failed step is reported (step,
    error, SQLSTATE, traceback) and the next steps still run, so one run shows every
    failure; finish() exits non-zero when any step failed."""

    def __init__(self, driver, mode):
        self.driver = driver
        self.mode = mode
        self.failed = []
        self.count = 0
        self.started = time.monotonic()

    def _begin(self, name):
        self.count += 1
        print(f"[{self.driver} {self.mode}] {name}", flush=True)

    def _report(self, name, exc):
        state = sqlstate_of(exc)
        line = (
            f"FAILED: {self.driver} ({self.mode}) at step '{name}': "
            f"{type(exc).__name__}: {exc}" + (f" (SQLSTATE {state})" if state else "")
        )
        self.failed.append(line)
        print(line, file=sys.stderr, flush=True)
        traceback.print_exc(file=sys.stderr)
        print(f"[{self.driver} {self.mode}] step failed: {name}", flush=True)

    def run(self, name, fn):
        """Runs fn(); returns whether it passed."""
        self._begin(name)
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - reported
            self._report(name, e)
            return False

    async def run_async(self, name, fn):
        self._begin(name)
        try:
            await fn()
            return True
        except Exception as e:  # noqa: BLE001 - reported
            self._report(name, e)
            return False

    def finish(self):
        took = time.monotonic() - self.started
        if self.failed:
            print(
                f"{self.driver} ({self.mode}): {len(self.failed)} of {self.count} steps failed "
                f"in {took:.1f}s:",
                file=sys.stderr,
            )
            for line in self.failed:
                print("  " + line, file=sys.stderr)
            sys.exit(1)
        print(f"[{self.driver} {self.mode}] all {self.count} steps passed in {took:.1f}s", flush=True)
