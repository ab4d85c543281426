#!/usr/bin/env python3
"""Strongroom vs PocketBase, side by side, over real HTTP with the same load
generator (wrk). Run through bench/compare, which installs what is needed.

Both systems get the same workload: one tenant / one auth collection, a
`work_orders` collection (title text, status select, priority integer, asset
text), 1,000 seeded records and one ordinary user. Workloads run for each
system in turn, alternating A B A B for ROUNDS rounds:

  get        authenticated GET of one record by id
  list       authenticated list of 50, sorted by creation, first page
  create     authenticated create (Strongroom: durable, journaled, audited)
  login      password login
  get@rate   GET by id at a fixed offered load (same for both), for p99

Reported per workload and system: req/s, p50, p99, server CPU ms per request
(from /proc/<pid>/stat), and each server's peak RSS; plus Strongroom /
PocketBase ratios. Results go to bench/results/latest.json.

With BACKEND=postgres (STRONGROOM_BENCH_PG_URL, set by bench/compare), a third
system runs beside them: Strongroom on PostgreSQL ("strongroom-pg"), and
its ratios to PocketBase are reported too, in bench/results/postgres.json.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRONGROOM = os.path.join(ROOT, "target", "release", "strongroom")
POCKETBASE = os.environ["POCKETBASE"]
ROUNDS = int(os.environ.get("ROUNDS", "2"))
DURATION = os.environ.get("DURATION", "10s")
RATE = int(os.environ.get("RATE", "1000"))
# A subset (e.g. WORKLOADS=create) is for profiling: it prints, writes nothing.
WORKLOADS = os.environ.get("WORKLOADS", "")
CONNECTIONS = 32
PASSWORD = "violet-harbour-tractor-92"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SEED = 1000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req) as res:
        return json.load(res)


def wait_ready(url, proc):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early: {url}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"server not ready: {url}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class System:
    """One running server with its workload set up."""

    def __init__(self, name, workdir):
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.proc = None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def seed(self, create_one):
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(create_one, range(SEED)))
        self.record_id = ids[SEED // 2]


class Strongroom(System):
    database_url = None

    def start(self):
        # Rate limits and bans run as shipped, with the limits raised for the
        # load generator (one user hammering from one address is what they
        # exist to stop): every request still takes its tokens, the checks
        # cost what they cost, and none is refused.
        raised = "1000000"
        env = dict(os.environ, STRONGROOM_LOG_LEVEL="warn", STRONGROOM_DATA_DIR=self.dir,
                   STRONGROOM_REQUESTS_PER_SECOND_PER_USER=raised,
                   STRONGROOM_REQUESTS_PER_SECOND_PER_IP=raised,
                   STRONGROOM_REQUESTS_PER_SECOND_PER_TENANT=raised,
                   STRONGROOM_LOGIN_ATTEMPTS_PER_MINUTE_PER_IP=raised,
                   STRONGROOM_LOGIN_ATTEMPTS_PER_MINUTE_PER_ACCOUNT=raised)
        if self.database_url:
            env["STRONGROOM_DATABASE_URL"] = self.database_url
        created = json.loads(subprocess.check_output(
            [STRONGROOM, "tenant", "create", "--slug", "acme", "--name", "Acme", "--admin-email",
             "admin@acme.test", "--json"], env=env).decode().splitlines()[-1])
        self.proc = subprocess.Popen([STRONGROOM, "serve", "--listen", f"127.0.0.1:{self.port}"], env=env,
                                     stdout=open(os.path.join(self.dir, "server.log"), "w"),
                                     stderr=subprocess.STDOUT)
        wait_ready(self.base + "/readyz", self.proc)
        admin = http("POST", self.base + "/api/v1/auth/invitations/accept",
                     {"token": created["invitation_token"], "password": PASSWORD})["access_token"]
        auth = {"authorization": "Bearer " + admin}
        http("POST", self.base + "/api/v1/collections", {"name": "work_orders", "fields": [
            {"name": "title", "type": "text", "required": True},
            {"name": "status", "type": "select", "options": ["open", "done"]},
            {"name": "priority", "type": "integer"},
            {"name": "asset", "type": "text"}]}, auth)
        invited = http("POST", self.base + "/api/v1/users", {"email": "user@acme.test", "role": "member"}, auth)
        http("POST", self.base + "/api/v1/auth/invitations/accept",
             {"token": invited["invitation_token"], "password": PASSWORD})
        token = self.login()

        def create_one(i):
            return http("POST", self.base + "/api/v1/collections/work_orders/records",
                        {"title": f"order {i}", "status": "open", "priority": i % 5, "asset": f"A-{i}"},
                        {"authorization": "Bearer " + token})["id"]
        self.seed(create_one)

    def login(self):
        return http("POST", self.base + "/api/v1/auth/login", self.login_body())["access_token"]

    def login_body(self):
        return {"tenant": "acme", "email": "user@acme.test", "password": PASSWORD}

    def auth_header(self):
        # Access tokens live 60 s: a fresh one for every run.
        return "Bearer " + self.login()

    def urls(self):
        records = self.base + "/api/v1/collections/work_orders/records"
        return {"get": f"{records}/{self.record_id}", "list": f"{records}?limit=50&sort=created_at",
                "create": records, "login": self.base + "/api/v1/auth/login"}


class PocketBase(System):
    def start(self):
        subprocess.check_output([POCKETBASE, "superuser", "upsert", "root@bench.test", PASSWORD,
                                 "--dir", self.dir])
        self.proc = subprocess.Popen([POCKETBASE, "serve", "--http", f"127.0.0.1:{self.port}", "--dir", self.dir],
                                     stdout=open(os.path.join(self.dir, "server.log"), "w"),
                                     stderr=subprocess.STDOUT)
        wait_ready(self.base + "/api/health", self.proc)
        root = http("POST", self.base + "/api/collections/_superusers/auth-with-password",
                    {"identity": "root@bench.test", "password": PASSWORD})["token"]
        auth = {"authorization": root}
        rule = '@request.auth.id != ""'
        http("POST", self.base + "/api/collections", {
            "name": "work_orders", "type": "base", "listRule": rule, "viewRule": rule, "createRule": rule,
            "fields": [
                {"name": "title", "type": "text", "required": True},
                {"name": "status", "type": "select", "values": ["open", "done"], "maxSelect": 1},
                {"name": "priority", "type": "number", "onlyInt": True},
                {"name": "asset", "type": "text"},
                {"name": "created", "type": "autodate", "onCreate": True},
                {"name": "updated", "type": "autodate", "onCreate": True, "onUpdate": True}]}, auth)
        http("POST", self.base + "/api/collections/users/records",
             {"email": "user@bench.test", "password": PASSWORD, "passwordConfirm": PASSWORD}, auth)
        token = self.login()

        def create_one(i):
            return http("POST", self.base + "/api/collections/work_orders/records",
                        {"title": f"order {i}", "status": "open", "priority": i % 5, "asset": f"A-{i}"},
                        {"authorization": token})["id"]
        self.seed(create_one)

    def login(self):
        return http("POST", self.base + "/api/collections/users/auth-with-password", self.login_body())["token"]

    def login_body(self):
        return {"identity": "user@bench.test", "password": PASSWORD}

    def auth_header(self):
        return self.login()

    def urls(self):
        records = self.base + "/api/collections/work_orders/records"
        # skipTotal: PocketBase's own fastest list (no COUNT query).
        return {"get": f"{records}/{self.record_id}", "list": f"{records}?perPage=50&sort=created&skipTotal=1",
                "create": records, "login": self.base + "/api/collections/users/auth-with-password"}


def lua_script(workdir, system, workload):
    body = {"create": {"title": "bench", "status": "open", "priority": 3, "asset": "A-9"},
            "login": system.login_body()}.get(workload)
    path = os.path.join(workdir, f"{system.name}-{workload}.lua")
    lines = []
    if body is not None:
        lines += ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
                  'wrk.headers["content-type"] = "application/json"']
    if workload.startswith("get@"):
        # Each connection waits so that all together offer RATE req/s.
        lines.append(f"function delay() return {1000 * CONNECTIONS / RATE:.3f} end")
    open(path, "w").write("\n".join(lines) + "\n")
    return path


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    percentiles = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        percentiles[pct] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, requests, percentiles, int(errors.group(1)) if errors else 0


def run(workdir, system, workload):
    urls = system.urls()
    url = urls[workload.split("@")[0]]
    script = lua_script(workdir, system, workload)
    # A generous timeout: at 32 connections a login waits ~1.5 s in line.
    cmd = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}", "--timeout", "10s", "--latency", "-s", script]
    if workload != "login":
        cmd += ["-H", f"authorization: {system.auth_header()}"]
    before = cpu_seconds(system.proc.pid)
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(system.proc.pid) - before
    rps, requests, pct, errors = parse_wrk(out)
    if errors:
        sys.exit(f"{system.name} {workload}: {errors} non-2xx responses\n{out}")
    return {"rps": rps, "p50_ms": pct.get("50"), "p99_ms": pct.get("99"),
            "cpu_ms_per_request": 1000 * cpu / max(requests, 1), "requests": requests}


def main():
    workdir = tempfile.mkdtemp(prefix="strongroom-compare-")
    systems = [Strongroom("strongroom", workdir), PocketBase("pocketbase", workdir)]
    pg_url = os.environ.get("STRONGROOM_BENCH_PG_URL")
    if pg_url:
        on_postgres = Strongroom("strongroom-pg", workdir)
        on_postgres.database_url = pg_url
        systems.insert(1, on_postgres)
    ours = [s.name for s in systems if s.name != "pocketbase"]
    try:
        for system in systems:
            system.start()
        hashing = json.loads(subprocess.check_output([STRONGROOM, "bench", "password-hash", "--count", "10"]))
        workloads = ["get", "list", "create", "login", f"get@{RATE}"]
        if WORKLOADS:
            workloads = [w for w in workloads if w.split("@")[0] in WORKLOADS.split(",")]
        runs = {}
        for round_ in range(1, ROUNDS + 1):
            for workload in workloads:
                order = systems if round_ % 2 else list(reversed(systems))
                for system in order:
                    result = run(workdir, system, workload)
                    runs.setdefault((workload, system.name), []).append(result)
                    print(f"round {round_} {workload:<9} {system.name:<10} {result['rps']:>9.1f} req/s "
                          f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                          f"cpu {result['cpu_ms_per_request']:.3f} ms/req", flush=True)
        peak = {s.name: peak_rss_mib(s.proc.pid) for s in systems}
    finally:
        for system in systems:
            system.stop()
    table = []
    for workload in workloads:
        row = {"workload": workload}
        for name in [s.name for s in systems]:
            results = runs[(workload, name)]
            row[name] = {key: statistics.median(r[key] for r in results)
                         for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")}
            # The slowest round: a target "in every round" is judged on it.
            row[name]["rps_worst_round_ratio"] = None
        p = row["pocketbase"]
        pb_rounds = [r["rps"] for r in runs[(workload, "pocketbase")]]
        for name in ours:
            s = row[name]
            sr_rounds = [r["rps"] for r in runs[(workload, name)]]
            worst = min(a / b for a, b in zip(sr_rounds, pb_rounds))
            row["ratio" if name == "strongroom" else f"ratio_{name}"] = {
                "rps": s["rps"] / p["rps"], "rps_worst_round": worst, "p99": s["p99_ms"] / p["p99_ms"],
                "cpu_per_request": s["cpu_ms_per_request"] / p["cpu_ms_per_request"]}
            del s["rps_worst_round_ratio"]
        del p["rps_worst_round_ratio"]
        table.append(row)
    print()
    for name in ours:
        label = "SR" if name == "strongroom" else "SR-PG"
        key = "ratio" if name == "strongroom" else f"ratio_{name}"
        print(f"{name} vs pocketbase")
        print(f"{'workload':<10} {label + ' req/s':>11} {'PB req/s':>9} {'ratio':>6} {'worst':>6}   "
              f"{label + ' p99':>9} {'PB p99':>7} {'ratio':>6}   {label + ' cpu':>9} {'PB cpu':>7} {'ratio':>6}")
        for row in table:
            s, p, r = row[name], row["pocketbase"], row[key]
            print(f"{row['workload']:<10} {s['rps']:>11.0f} {p['rps']:>9.0f} {r['rps']:>5.2f}x "
                  f"{r['rps_worst_round']:>5.2f}x   {s['p99_ms']:>8.2f}m {p['p99_ms']:>6.2f}m "
                  f"{r['p99']:>5.2f}x   {s['cpu_ms_per_request']:>8.3f}m {p['cpu_ms_per_request']:>6.3f}m "
                  f"{r['cpu_per_request']:>5.2f}x")
        print()
    print("peak RSS: " + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in peak.items()) +
          f" (strongroom/pocketbase {peak['strongroom'] / peak['pocketbase']:.2f}x)")
    if WORKLOADS:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    limit = hashing["hash_bound_logins_per_second"]
    login_rps = next(r for r in table if r["workload"] == "login")["strongroom"]["rps"]
    print(f"login: one Argon2id hash {hashing['ms_per_hash']:.1f} ms, hash-bound limit {limit:.1f}/s on "
          f"{hashing['cores']} cores; Strongroom reached {100 * login_rps / limit:.0f}% of it")
    result = {
        "command": "bench/compare", "rounds": ROUNDS, "duration": DURATION, "connections": CONNECTIONS,
        "fixed_rate_rps": RATE, "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "pocketbase_version": subprocess.check_output([POCKETBASE, "--version"]).decode().strip(),
        "strongroom_version": subprocess.check_output([STRONGROOM, "--version"]).decode().strip(),
        "workloads": table, "peak_rss_mib": peak,
        "peak_rss_ratio": peak["strongroom"] / peak["pocketbase"], "password_hash": hashing,
        "login_share_of_hash_bound_limit": login_rps / limit,
    }
    if pg_url:
        result["command"] = "BACKEND=postgres bench/compare"
        result["postgres"] = subprocess.check_output(
            ["psql", pg_url, "-Atc", "SELECT version()"]).decode().strip()
    name = "postgres.json" if pg_url else "latest.json"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote bench/results/{name}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
