#!/usr/bin/env python3
"""Account sync at scale (issue 20, SPEC §7 accounts): three daemons on loopback, each node with
its own root prefix holding 5,000 managed users and 1,000 managed groups of 500 members each;
then, on node a, a bulk replacement of the four files (like vipw: new files renamed into place
under the lock) that adds 5,000 users and 500 members to every group (10,000 users, 1,000
groups of 1,000 members). Printed:

  bulk      time until b's and c's four files are byte-identical to a's (target <= 5 s); echo
            (items b and c took for changes of their own: must be 0); lost members (must be 0)
  single    one `useradd -P` on a in that database: time until the line is on b and c
            (target <= 100 ms), median and max of BENCH_ACC_SINGLE (default 10) runs: from
            the tool's exit (`single_ms`; 0 when the peers had the line before useradd
            returned: it spends ~0.1 s after writing the files) and from the tool's last
            write of a's files to the peers' write of theirs (`single_write_ms`, file mtimes)
  lock      how long the passwd locks were held per write (daemon logs; target <= 50 ms)
  cpu       CPU seconds of each daemon per single change, at this size and at a database a
            tenth of it (the cost of a change should grow with the change, not the database);
            next to it `floor_cpu_ms`: the CPU of reading the four files whole and of writing
            them whole on the same filesystem (what the origin and each receiver cannot avoid
            while the tools replace the files whole)
  rss       each daemon's resident memory at the end and its peak, MiB
  check     `check_cpu_ms`: CPU per periodic check of the account files against the index
            (the daemons restarted with verify_every = "1s": CPU over 10 idle seconds / 10),
            and `checked_in_sync`: status still in sync after those checks

Usage (root; shadow-utils installed):
    bench/accounts.py [--bin PATH] [--users 5000] [--groups 1000] [--members 500]
Default binary: target/release/clustersync, else target/debug/clustersync. Every wait has a
deadline (BENCH_TIMEOUT, default 300 s). Each run has its own tmpfs under $BENCH_TMPDIR (default
/tmp; BENCH_FS=disk for a plain directory). Results are printed and appended as one JSON line to
$BENCH_LOG_DIR/accounts.jsonl (default /tmp/bench-logs).
BENCH_PERF=FILE records the daemons with `perf record` during the single changes (or the bulk:
BENCH_PERF_PHASE=bulk, the periodic checks: BENCH_PERF_PHASE=check; call graphs BENCH_PERF_CG=fp or dwarf,16384).
"""
import argparse, hashlib, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "300"))
BASE_PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
BASE_GROUP = "root:x:0:\ndaemon:x:1:\nsudo:x:27:\nwww-data:x:33:\nshadow:x:42:\nusers:x:100:\nnogroup:x:65534:\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(what, cond, limit=TIMEOUT, step=0.005):
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise SystemExit(f"bench accounts: timed out waiting for {what}")
        time.sleep(step)


def files_of(n_users, n_groups, n_members, start=0):
    """The four files with users u{start}..u{n_users-1}+ and groups g0.. of members."""
    users = [f"u{i:05d}" for i in range(n_users)]
    passwd = [BASE_PASSWD]
    shadow = ["".join(f"{l.split(':')[0]}:*:19700:0:99999:7:::\n" for l in BASE_PASSWD.splitlines())]
    group = [BASE_GROUP]
    gshadow = ["".join(f"{l.split(':')[0]}:*::\n" for l in BASE_GROUP.splitlines())]
    # managed block in canonical order: users by uid; groups by gid (private groups 20000+, the
    # shared ones 40000+)
    for i, u in enumerate(users):
        uid = 20000 + i
        passwd.append(f"{u}:x:{uid}:{uid}::/home/{u}:/bin/bash\n")
        shadow.append(f"{u}:!:20000:0:99999:7:::\n")
    for i, u in enumerate(users):
        uid = 20000 + i
        group.append(f"{u}:x:{uid}:\n")
        gshadow.append(f"{u}:!::\n")
    for g in range(n_groups):
        # member m of group g: users spread over the whole range
        ms = sorted(users[(g * 7 + k * (len(users) // n_members)) % len(users)] for k in range(n_members))
        ms = sorted(set(ms))
        line = ",".join(ms)
        group.append(f"g{g:04d}:x:{40000 + g}:{line}\n")
        gshadow.append(f"g{g:04d}:!::{line}\n")
    return {"passwd": "".join(passwd), "shadow": "".join(shadow), "group": "".join(group), "gshadow": "".join(gshadow)}


def write_files(root, files, lock=False):
    """Write the four files like vipw: each to a temp file renamed into place, all under the
    lckpwdf lock (an fcntl write lock on etc/.pwd.lock) when `lock`."""
    import fcntl
    etc = os.path.join(root, "etc")
    os.makedirs(etc, exist_ok=True)
    held = None
    if lock:
        held = os.open(os.path.join(etc, ".pwd.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.lockf(held, fcntl.LOCK_EX)
    for name, text in files.items():
        p = os.path.join(etc, name)
        tmp = p + ".bench"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o640 if "shadow" in name else 0o644)
        os.rename(tmp, p)
    if held is not None:
        os.close(held)


def digest(root):
    h = hashlib.blake2b()
    for name in ("passwd", "shadow", "group", "gshadow"):
        with open(os.path.join(root, "etc", name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


class Cluster:
    def __init__(self, binary, tmp, n_users, n_groups, n_members):
        self.bin = binary
        self.tmp = tmp
        self.names = ["a", "b", "c"]
        self.procs = {}
        ids = {}
        self.ports = {n: free_port() for n in self.names}
        base = files_of(n_users, n_groups, n_members)
        for n in self.names:
            state = os.path.join(tmp, n, "state")
            root = os.path.join(tmp, n, "root")
            os.makedirs(os.path.join(root, "srv", "www"), exist_ok=True)
            os.makedirs(os.path.join(root, "home"), exist_ok=True)
            write_files(root, base)
            subprocess.run([binary, "--node", n, "--state-dir", state, "init"], check=True, capture_output=True)
            ids[n] = subprocess.run([binary, "--node", n, "--state-dir", state, "id"], check=True, capture_output=True, text=True).stdout.strip()
        cfg = ""
        for n in self.names:
            cfg += f'[nodes.{n}]\naddress = "127.0.0.1:{self.ports[n]}"\nroot = "{os.path.join(tmp, n, "root")}"\nid = "{ids[n]}"\n\n'
        cfg += '[groups.www]\nnodes = ["a", "b", "c"]\npaths = ["/srv/www"]\n\n'
        cfg += '[accounts]\nuid_range = [20000, 49999]\ncreate_home = false\n'
        self.cfg = os.path.join(tmp, "clustersync.toml")
        with open(self.cfg, "w") as f:
            f.write(cfg)

    def root(self, n):
        return os.path.join(self.tmp, n, "root")

    def state(self, n):
        return os.path.join(self.tmp, n, "state")

    def start(self):
        for n in self.names:
            log = open(os.path.join(self.tmp, f"{n}.log"), "a")
            env = dict(os.environ, CLUSTERSYNC_LOG="clustersync=debug,info", NO_COLOR="1")
            self.procs[n] = subprocess.Popen([self.bin, "-c", self.cfg, "--node", n, "--state-dir", self.state(n), "daemon"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env)
        for n in self.names:
            wait(f"{n} control socket", lambda: os.path.exists(os.path.join(self.state(n), "control.sock")))

    def status(self, n):
        r = subprocess.run([self.bin, "-c", self.cfg, "--node", n, "--state-dir", self.state(n), "status", "--json"], capture_output=True, text=True, timeout=60)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def in_sync(self):
        for n in self.names:
            s = self.status(n)
            if not s or not s.get("accounts") or not s["accounts"].get("in_sync") or not all(p["connected"] for p in s["peers"]):
                return False
        return True

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def log(self, n):
        with open(os.path.join(self.tmp, f"{n}.log"), errors="replace") as f:
            return f.read()

    def audit(self, n):
        out = []
        try:
            with open(os.path.join(self.state(n), "audit.log")) as f:
                for l in f:
                    try:
                        out.append(json.loads(l))
                    except ValueError:
                        pass
        except OSError:
            pass
        return out


def rss_of(pid):
    """Resident and peak resident MiB of a process (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        st = dict(l.split(":", 1) for l in f if ":" in l)
    return [round(int(st[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")]


def profile(c, phase):
    """`perf record` of the daemons during `phase` when BENCH_PERF=FILE and BENCH_PERF_PHASE
    (default single) is that phase; BENCH_PERF_CG: the call-graph mode (fp, dwarf)."""
    if not os.environ.get("BENCH_PERF") or os.environ.get("BENCH_PERF_PHASE", "single") != phase:
        return None
    pids = ",".join(str(c.procs[n].pid) for n in c.names)
    cg = os.environ.get("BENCH_PERF_CG", "fp")
    p = subprocess.Popen(["perf", "record", "-q", "--call-graph", cg, "-o", os.environ["BENCH_PERF"], "-p", pids], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def unprofile(p):
    if p:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)


def singles(c, count, first_uid):
    """`useradd -P` on a, `count` times: seconds until each reaches b and c, and CPU per change."""
    times = []
    writes = []
    cpu0 = {n: cpu_of(c.procs[n].pid) for n in c.names}
    perf = profile(c, "single")
    for k in range(count):
        name = f"s{k:03d}x{first_uid}"
        uid = str(first_uid + k)
        subprocess.run(["useradd", "-P", c.root("a"), "-u", uid, "-U", name], check=True, stderr=subprocess.DEVNULL)
        # the change is made when the tool returns (useradd itself takes ~0.1 s here)
        t0 = time.monotonic()
        needle = f"\n{name}:x:{uid}:".encode()

        def there():
            for n in ("b", "c"):
                with open(os.path.join(c.root(n), "etc", "passwd"), "rb") as f:
                    if needle not in f.read():
                        return False
            return True

        wait(f"{name} on b and c", there, step=0.002)
        times.append(time.monotonic() - t0)
        # the tool's last write on a (before the daemon could read) → the peers' writes
        wrote = max(os.stat(os.path.join(c.root("a"), "etc", f)).st_mtime_ns for f in ("passwd", "shadow", "group", "gshadow"))
        there_at = max(os.stat(os.path.join(c.root(n), "etc", "passwd")).st_mtime_ns for n in ("b", "c"))
        writes.append(max(0, there_at - wrote) / 1e9)
        time.sleep(0.3)
    wait("in sync after the single changes", c.in_sync, step=0.2)
    unprofile(perf)
    cpu = {n: (cpu_of(c.procs[n].pid) - cpu0[n]) / count for n in c.names}
    return times, writes, cpu


def floor_ms(root, rounds=20):
    """CPU ms to read the four files of `root` whole, and to write them whole (each to a temp
    file renamed into place), medians of `rounds`: what any program that keeps these files must
    spend per change at this size (the tool rewrote them whole; the origin reads them, each
    receiver writes them). Measured on the same filesystem as the daemons' files."""
    etc = os.path.join(root, "etc")
    names = ("passwd", "shadow", "group", "gshadow")
    reads, writes = [], []
    for _ in range(rounds):
        t = time.process_time()
        data = {}
        for n in names:
            with open(os.path.join(etc, n), "rb") as f:
                data[n] = f.read()
        reads.append(time.process_time() - t)
        t = time.process_time()
        for n in names:
            tmp = os.path.join(etc, f".{n}.floor")
            with open(tmp, "wb") as f:
                f.write(data[n])
            os.unlink(tmp)
        writes.append(time.process_time() - t)
    mib = sum(len(d) for d in data.values()) / 2**20
    return {"mib": round(mib, 1), "read": round(statistics.median(reads) * 1000, 1), "write": round(statistics.median(writes) * 1000, 1)}


def run(binary, n_users, n_groups, n_members, single_count):
    tmp = tempfile.mkdtemp(prefix="bench-accounts.", dir=os.environ.get("BENCH_TMPDIR", "/tmp"))
    mounted = False
    if os.environ.get("BENCH_FS", "tmpfs") == "tmpfs":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs", tmp]).returncode == 0
    c = Cluster(binary, tmp, n_users, n_groups, n_members)
    out = {"users": n_users, "groups": n_groups, "members": n_members}
    try:
        t0 = time.monotonic()
        c.start()
        wait("the cluster in sync at start", c.in_sync, step=0.5)
        out["start_s"] = round(time.monotonic() - t0, 2)
        # bulk: n_users more, n_members more per group
        big = files_of(2 * n_users, n_groups, 2 * n_members)
        perf = profile(c, "bulk")
        cpu0 = {n: cpu_of(c.procs[n].pid) for n in c.names}
        t0 = time.monotonic()
        write_files(c.root("a"), big, lock=True)
        want = None

        def converged():
            nonlocal want
            want = digest(c.root("a"))
            return all(digest(c.root(n)) == want for n in ("b", "c"))

        out["bulk_s"] = round(wait("the bulk on b and c", converged, step=0.02), 3)
        wait("in sync after the bulk", c.in_sync, step=0.2)
        out["bulk_in_sync_s"] = round(time.monotonic() - t0, 3)
        out["bulk_cpu_s"] = {n: round(cpu_of(c.procs[n].pid) - cpu0[n], 2) for n in c.names}
        unprofile(perf)
        out["echo"] = {n: sum(1 for r in c.audit(n) if r.get("group") == "@accounts" and r.get("kind") == "local-change") for n in ("b", "c")}
        with open(os.path.join(c.root("a"), "etc", "group")) as f:
            ga = f.read()
        lost = 0
        for n in ("b", "c"):
            with open(os.path.join(c.root(n), "etc", "group")) as f:
                gb = f.read()
            la = {l.split(":")[0]: set(l.split(":")[3].split(",")) for l in ga.splitlines() if l.startswith("g")}
            lb = {l.split(":")[0]: set(l.split(":")[3].split(",")) for l in gb.splitlines() if l.startswith("g")}
            lost += sum(len(la[g] - lb.get(g, set())) for g in la)
        out["lost_members"] = lost
        times, writes, cpu = singles(c, single_count, 48000)
        out["single_ms"] = {"median": round(statistics.median(times) * 1000, 1), "max": round(max(times) * 1000, 1)}
        out["single_write_ms"] = {"median": round(statistics.median(writes) * 1000, 1), "max": round(max(writes) * 1000, 1)}
        out["single_cpu_ms"] = {n: round(v * 1000, 1) for n, v in cpu.items()}
        out["floor_cpu_ms"] = floor_ms(c.root("c"))
        held = []
        for n in c.names:
            for m in re.finditer(r"locks held ([0-9.]+)(ms|µs|s)\b", c.log(n)):
                v = float(m.group(1))
                held.append(v / 1000 if m.group(2) == "µs" else v * 1000 if m.group(2) == "s" else v)
        out["lock_ms"] = {"writes": len(held), "median": round(statistics.median(held), 2) if held else None, "max": round(max(held), 2) if held else None}
        out["rss_mib"] = {n: rss_of(c.procs[n].pid) for n in c.names}
        t = time.monotonic()
        c.stop()
        out["stop_s"] = round(time.monotonic() - t, 2)
        # the periodic check of the files against the index: the daemons again, checking every
        # second; their CPU over 10 idle seconds, per check (the links' summary comparisons,
        # also every second, are one small message each)
        with open(c.cfg) as f:
            text = f.read()
        with open(c.cfg, "w") as f:
            f.write('[cluster]\nverify_every = "1s"\n\n' + text)
        c.start()
        wait("the cluster in sync after the restart", c.in_sync, step=0.5)
        time.sleep(2)
        perf = profile(c, "check")
        cpu0 = {n: cpu_of(c.procs[n].pid) for n in c.names}
        time.sleep(10)
        unprofile(perf)
        out["check_cpu_ms"] = {n: round((cpu_of(c.procs[n].pid) - cpu0[n]) * 100, 1) for n in c.names}
        out["checked_in_sync"] = c.in_sync()
        c.stop()
    finally:
        for p in c.procs.values():
            if p.poll() is None:
                p.kill()
        if os.environ.get("BENCH_KEEP") != "1":
            if mounted:
                subprocess.run(["umount", tmp])
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (a tmpfs: umount it)" if mounted else f"kept {tmp}", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--single", type=int, default=int(os.environ.get("BENCH_ACC_SINGLE", "10")))
    ap.add_argument("--small", action="store_true", help="also run at a tenth of the size (CPU per change)")
    a = ap.parse_args()
    binary = a.bin or next((p for p in (os.path.join(REPO, "target/release/clustersync"), os.path.join(REPO, "target/debug/clustersync")) if os.path.exists(p)), None)
    if not binary or os.geteuid() != 0 or not shutil.which("useradd"):
        raise SystemExit("bench accounts: needs root, shadow-utils and a clustersync binary (--bin)")
    results = [run(binary, a.users, a.groups, a.members, a.single)]
    if a.small:
        results.append(run(binary, a.users // 10, a.groups // 10, a.members // 10, a.single))
    for r in results:
        print(json.dumps(r))
    d = os.environ.get("BENCH_LOG_DIR", "/tmp/bench-logs")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "accounts.jsonl"), "a") as f:
        for r in results:
            r["bin"] = binary
            r["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
