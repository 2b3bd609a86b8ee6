#!/usr/bin/env python3
"""clustersync benchmark suite (SPEC §7, issue 12). Started by bench/run.sh, which installs the
prerequisites and picks the binary; see bench/README.md for what each scenario measures.

    bench.py SCENARIO...     initial oneshot small delta delta1 live delete fanout mesh churn wan
                             scale verify profile
                             (or `all`: every one but `profile`)

Every wait has a deadline and fails loudly. Results go to stdout (human) and, as JSON lines, to
$BENCH_LOG_DIR/<run>/results.jsonl.
"""
import ctypes
import ctypes.util
import hashlib
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

E = os.environ
BIN = E["CLUSTERSYNC_BIN"]
SHA = E.get("BENCH_GIT_SHA", "?")
NFILES = int(E.get("BENCH_FILES", "20000"))
NDIRS = int(E.get("BENCH_DIRS", "200"))
NMEDIUM = int(E.get("BENCH_MEDIUM", "20"))
BIG_MIB = int(E.get("BENCH_BIG_MIB", "256"))
RUNS = int(E.get("BENCH_RUNS", "3"))
LIVE_EVENTS = int(E.get("BENCH_LIVE_EVENTS", "200"))
LIVE_GAP = float(E.get("BENCH_LIVE_GAP_MS", "50")) / 1000
DEL_EVENTS = int(E.get("BENCH_DELETE_EVENTS", "100"))
DEL_GAP = float(E.get("BENCH_DELETE_GAP_MS", "100")) / 1000
SCALE_FILES = int(E.get("BENCH_SCALE_FILES", "1000000"))
SCALE_DIRS = int(E.get("BENCH_SCALE_DIRS", "10000"))
FAN_NODES = int(E.get("BENCH_FANOUT_NODES", "10"))
FAN_FILES = int(E.get("BENCH_FANOUT_FILES", "1000"))
MESH_NODES = int(E.get("BENCH_MESH_NODES", "30"))
MESH_SIZES = [int(x) for x in E.get("BENCH_MESH_SIZES", "20000,4096").split(",")]
MESH_RUNS = int(E.get("BENCH_MESH_RUNS", "3"))
CHURN_NODES = [int(x) for x in E.get("BENCH_CHURN_NODES", "5,10").split(",")]
CHURN_RATE = float(E.get("BENCH_CHURN_RATE", "100"))
CHURN_SECS = float(E.get("BENCH_CHURN_SECS", "60"))
CHURN_SIZE = int(E.get("BENCH_CHURN_SIZE", "4096"))
WAN_MIB = int(E.get("BENCH_WAN_MIB", "100"))
WAN_RTT_MS = int(E.get("BENCH_WAN_RTT_MS", "50"))
WAN_RATE = E.get("BENCH_WAN_RATE", "100mbit")
BWLIMIT = E.get("BENCH_BWLIMIT", "2MiB/s")
BWLIMIT_MIB = int(E.get("BENCH_BWLIMIT_MIB", "24"))
TIMEOUT = float(E.get("BENCH_TIMEOUT", "900"))
IDLE_S = float(E.get("BENCH_IDLE_S", "120"))
DLOG = E.get("BENCH_DAEMON_LOG", "info")
FS = E.get("BENCH_FS", "tmpfs")
LOG_ROOT = E.get("BENCH_LOG_DIR", "/tmp/bench-logs")
TMP_ROOT = E.get("BENCH_TMPDIR", "/tmp")
PERF = E.get("BENCH_PERF", "perf")
KEEP_TMP = E.get("BENCH_KEEP", "0") == "1"

RUN_ID = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
KEEP = os.path.join(LOG_ROOT, RUN_ID)
os.makedirs(KEEP, exist_ok=True)
RESULTS = []
CHILDREN = []          # Popen objects we started (stopped at exit, by pid)
CLEANUPS = []          # callables run at exit (namespaces, mounts)


class BenchError(Exception):
    pass


def say(*a):
    print(*a, flush=True)


def record(scenario, **kv):
    kv = {"scenario": scenario, **kv}
    RESULTS.append(kv)
    with open(os.path.join(KEEP, "results.jsonl"), "a") as f:
        f.write(json.dumps(kv) + "\n")


def human(n):
    n = float(n)
    for u in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or u == "GiB":
            return f"{n:.1f} {u}" if u != "B" else f"{int(n)} B"
        n /= 1024


def ratio(a, b):
    return f"{a / b:.2f}" if b else "n/a"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def run(cmd, timeout=600, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise BenchError(f"{cmd!r} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def timed(cmd, timeout=600, **kw):
    """Run cmd; return (wall s, cpu s of the child, CompletedProcess)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    t1 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return t1 - t0, cpu, r


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cpu_of(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def wait_until(what, cond, timeout, interval=0.05):
    t0 = time.perf_counter()
    deadline = t0 + timeout
    last = None
    while time.perf_counter() < deadline:
        last = cond()
        if last:
            return time.perf_counter() - t0
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_idle(pids, timeout=300, quiet_s=2.0):
    """Until none of pids uses more than 1% of a core over quiet_s; returns seconds waited."""
    t0 = time.perf_counter()
    prev = [cpu_of(p) for p in pids]
    quiet = 0
    while time.perf_counter() - t0 < timeout:
        time.sleep(0.5)
        cur = [cpu_of(p) for p in pids]
        quiet = quiet + 1 if all(c - q <= 0.01 for c, q in zip(cur, prev)) else 0
        prev = cur
        if quiet >= quiet_s / 0.5:
            return time.perf_counter() - t0 - quiet_s
    say(f"   WARNING: daemons still busy after {timeout} s; measuring anyway")
    return None


def load_note():
    la = open("/proc/loadavg").read().split()[:3]
    top = run(["top", "-bn1", "-w", "200"], check=False).stdout.splitlines()
    busy = []
    for line in top[7:]:
        f = line.split(None, 11)
        if len(f) >= 12:
            try:
                if float(f[8]) >= 5.0:
                    busy.append(f"{f[11][:30]}({f[8]}%)")
            except ValueError:
                pass
    return f"load {' '.join(la)}; busy: {', '.join(busy[:6]) or 'none'}"


# --------------------------------------------------------------------------- inotify
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE = 0x100, 0x200
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000


class Inotify:
    """Watch directories; wait for an event on a name with sub-millisecond resolution."""

    def __init__(self):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise BenchError(f"inotify_init1: errno {ctypes.get_errno()}")
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)
        self.wds = {}
        self.pending = []

    def watch(self, path, mask):
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise BenchError(f"inotify_add_watch {path}: errno {ctypes.get_errno()}")
        self.wds[wd] = path

    def _read(self, timeout_ms):
        if not self.poll.poll(max(0, int(timeout_ms))):
            return
        t = time.perf_counter()
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        i = 0
        while i < len(buf):
            wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + ln].rstrip(b"\0").decode(errors="replace")
            self.pending.append((t, wd, mask, name))
            i += 16 + ln

    def drain(self):
        self._read(0)
        self.pending.clear()

    def wait(self, name, mask, check, deadline):
        """Return the perf_counter time of the first event (mask) on name after which check()
        holds. Raises at the deadline."""
        while True:
            while self.pending:
                t, _wd, m, n = self.pending.pop(0)
                if n == name and (m & mask) and check():
                    return t
            left = deadline - time.perf_counter()
            if left <= 0:
                if check():  # happened between events: take now (coarser, counted)
                    return time.perf_counter()
                raise BenchError(f"timed out waiting for an event on {name}")
            self._read(min(left, 0.2) * 1000)

    def close(self):
        os.close(self.fd)


# --------------------------------------------------------------------------- data
def gen_tree(root, nfiles, ndirs, nmedium, seed, prefix="d", lo=1024, hi=16384):
    rnd = random.Random(seed)
    top = max(1, int(ndirs ** 0.5))
    dirs = []
    for i in range(ndirs):
        d = os.path.join(root, f"{prefix}{i // top:03d}", f"{prefix}{i:04d}")
        os.makedirs(d, exist_ok=True)
        dirs.append(d)
    for i in range(nfiles):
        with open(os.path.join(dirs[i % ndirs], f"f{i:06d}.bin"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(lo, hi)))
    if nmedium:
        os.makedirs(os.path.join(root, "medium"), exist_ok=True)
        for i in range(nmedium):
            with open(os.path.join(root, "medium", f"m{i:02d}.bin"), "wb") as f:
                f.write(rnd.randbytes(5 << 20))


def gen_big(path, mib, seed):
    rnd = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(rnd.randbytes(1 << 20))


WORDS = None


def gen_web(root, total_mib, seed):
    """Text-heavy web content: HTML, CSS and JS built from a vocabulary, 2-64 KiB files."""
    global WORDS
    rnd = random.Random(seed)
    WORDS = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10)))
             for _ in range(4000)]
    tags = ["div", "span", "p", "a", "li", "ul", "section", "article", "h2", "img", "td", "tr"]
    total = total_mib << 20
    done = 0
    i = 0
    while done < total:
        d = os.path.join(root, f"site{i % 20:02d}", f"sec{(i // 20) % 25:02d}")
        os.makedirs(d, exist_ok=True)
        kind = i % 3
        size = rnd.randint(2048, 65536)
        out = []
        n = 0
        while n < size:
            w = rnd.choices(WORDS, k=rnd.randint(3, 14))
            if kind == 0:
                t = rnd.choice(tags)
                s = f'<{t} class="{w[0]}-{w[1]}" id="{w[2]}{rnd.randint(0, 999)}">{" ".join(w[3:])}</{t}>\n'
                ext = "html"
            elif kind == 1:
                s = f'.{w[0]}-{w[1]} {{ margin: {rnd.randint(0, 40)}px; color: #{rnd.randint(0, 0xffffff):06x}; font-family: {w[2]}; }}\n'
                ext = "css"
            else:
                s = f'function {w[0]}_{w[1]}({", ".join(w[2:4])}) {{ return {w[4] if len(w) > 4 else "x"}.{w[2]}({rnd.randint(0, 9999)}) + "{" ".join(w[5:])}"; }}\n'
                ext = "js"
            out.append(s)
            n += len(s)
        data = "".join(out).encode()
        with open(os.path.join(d, f"p{i:05d}.{ext}"), "wb") as f:
            f.write(data)
        done += len(data)
        i += 1
    return i, done


def tree_stats(root):
    n = b = 0
    for dp, _dn, fn in os.walk(root):
        for f in fn:
            n += 1
            b += os.lstat(os.path.join(dp, f)).st_size
    return n, b


def verify_same(src, dst, label):
    """rsync -anic: content checksums, modes, mtimes; number of differing entries (dir mtimes
    ignored)."""
    r = run(["rsync", "-anic", "--delete", src + "/", dst + "/"], check=False)
    with open(os.path.join(KEEP, f"verify-{label}.txt"), "w") as f:
        f.write(r.stdout + r.stderr)
    return sum(1 for ln in r.stdout.splitlines() if ln.strip() and not ln.startswith(".d..t......"))


# --------------------------------------------------------------------------- scratch space
class Scratch:
    def __init__(self, name):
        os.makedirs(TMP_ROOT, exist_ok=True)
        Scratch.count = getattr(Scratch, "count", 0) + 1
        self.path = os.path.join(TMP_ROOT, f"clustersync-bench.{RUN_ID}.{Scratch.count}-{name}")
        os.makedirs(self.path)
        self.mounted = False
        if FS == "tmpfs":
            run(["mount", "-t", "tmpfs", "-o", "size=16g,nr_inodes=0", "bench-" + name, self.path])
            self.mounted = True
        CLEANUPS.append(self.remove)

    def remove(self):
        if KEEP_TMP:
            say(f"bench: kept {self.path}")
            return
        if self.mounted:
            subprocess.run(["umount", "-l", self.path])
        shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------- private sshd
class Sshd:
    def __init__(self, T, host="127.0.0.1", netns=None):
        self.dir = os.path.join(T, "ssh")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        for k in ("host_key", "id"):
            if not os.path.exists(os.path.join(self.dir, k)):
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.dir, k)])
        shutil.copy(os.path.join(self.dir, "id.pub"), os.path.join(self.dir, "authorized_keys"))
        self.host = host
        self.netns = netns
        self.port = free_ports(1)[0]
        cfg = os.path.join(self.dir, f"sshd_config.{self.port}")
        with open(cfg, "w") as f:
            f.write(f"""Port {self.port}
ListenAddress {host}
HostKey {self.dir}/host_key
PidFile {self.dir}/sshd.{self.port}.pid
AuthorizedKeysFile {self.dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel INFO
""")
        run(["/usr/sbin/sshd", "-t", "-f", cfg])
        self.proc = subprocess.Popen(ns_prefix(netns) + ["/usr/sbin/sshd", "-D", "-f", cfg, "-E",
                                                         os.path.join(KEEP, f"sshd-{self.port}.log")])
        CHILDREN.append(self.proc)
        self.ssh = (f"ssh -F /dev/null -p {self.port} -i {self.dir}/id -o StrictHostKeyChecking=no "
                    f"-o UserKnownHostsFile={self.dir}/known_hosts -o BatchMode=yes -o LogLevel=ERROR")
        self.client_ns = None
        self.chost, self.cport = host, self.port

    def wait_up(self, client_ns=None, via=None):
        """via: (host, port) clients connect to instead of the listener (a delay relay)."""
        self.client_ns = client_ns
        if via:
            self.chost, self.cport = via
        self.ssh = self.ssh.replace(f"-p {self.port} ", f"-p {self.cport} ")

        def ok():
            if self.proc.poll() is not None:
                raise BenchError("private sshd exited")
            return subprocess.run(ns_prefix(client_ns) + self.ssh.split() + [f"root@{self.chost}", "true"],
                                  capture_output=True, timeout=20).returncode == 0
        wait_until(f"sshd on {self.host}:{self.port}", ok, 20, 0.2)

    def rsync(self, src, dst, label, extra=()):
        """rsync -a over ssh; returns (seconds, bytes sent, bytes received)."""
        cmd = ns_prefix(self.client_ns) + ["rsync", "-a", "--stats", *extra, "-e", self.ssh,
                                           src + "/", f"root@{self.chost}:{dst}/"]
        wall, _cpu, r = timed(cmd, timeout=TIMEOUT)
        with open(os.path.join(KEEP, f"rsync-{label}.txt"), "w") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise BenchError(f"rsync {label} failed: {r.stderr[-1000:]}")
        sent = recv = 0
        for ln in r.stdout.splitlines():
            if ln.startswith("Total bytes sent:"):
                sent = int(ln.split(":")[1].replace(",", "").replace(".", "").strip())
            if ln.startswith("Total bytes received:"):
                recv = int(ln.split(":")[1].replace(",", "").replace(".", "").strip())
        return wall, sent, recv


def local_rsync(src, dst):
    """rsync -a on this machine; returns (seconds, CPU seconds of its processes together)."""
    wall, cpu, r = timed(["rsync", "-a", src + "/", dst + "/"], timeout=TIMEOUT)
    if r.returncode != 0:
        raise BenchError(f"local rsync failed: {r.stderr}")
    return wall, cpu


def ns_prefix(netns):
    return ["ip", "netns", "exec", netns] if netns else []


# --------------------------------------------------------------------------- clustersync cluster
class Cluster:
    """N nodes in one config (each with a `root` prefix), like `clustersync demo` writes."""

    def __init__(self, T, names, group="g", paths=("/data",), cluster_extra="", group_extra="",
                 hosts=None, netns=None, node_extra=None, addr_map=None):
        self.T = T
        self.names = list(names)
        self.group = group
        self.netns = netns or {}
        self.cfg = os.path.join(T, "cluster.toml")
        self.procs = {}
        self.perf = {}
        ports = free_ports(len(names))
        out = ["# written by bench/bench.py\n"]
        if cluster_extra:
            out.append(f"[cluster]\n{cluster_extra}\n")
        for n, port in zip(self.names, ports):
            st = self.state(n)
            os.makedirs(self.root(n), exist_ok=True)
            run([BIN, "--node", n, "--state-dir", st, "init"])
            nid = run([BIN, "--node", n, "--state-dir", st, "id"]).stdout.strip()
            host = (hosts or {}).get(n, "127.0.0.1")
            ah, ap = addr_map(n, host, port) if addr_map else (host, port)
            out.append(f'[nodes.{n}]\naddress = "{ah}:{ap}"\nlisten = "{host}:{port}"\n'
                       f'root = "{self.root(n)}"\nid = "{nid}"\n{(node_extra or {}).get(n, "")}\n')
        members = ", ".join(f'"{n}"' for n in self.names)
        ps = ", ".join(f'"{p}"' for p in paths)
        out.append(f"[groups.{group}]\nnodes = [{members}]\npaths = [{ps}]\n{group_extra}\n")
        with open(self.cfg, "w") as f:
            f.write("".join(out))
        shutil.copy(self.cfg, os.path.join(KEEP, f"cluster-{os.path.basename(T)}.toml"))
        for p in paths:
            for n in self.names:
                os.makedirs(self.root(n) + p, exist_ok=True)
        run([BIN, "-c", self.cfg, "--node", self.names[0], "--state-dir", self.state(self.names[0]),
             "check-config"])

    def root(self, n):
        return os.path.join(self.T, n)

    def data(self, n, p="/data"):
        return self.root(n) + p

    def state(self, n):
        return os.path.join(self.T, "state-" + n)

    def cmd(self, n, *args):
        return [BIN, "-c", self.cfg, "--node", n, "--state-dir", self.state(n), *args]

    def start(self, n, perf_out=None, log=None, wait=True):
        env = dict(os.environ, CLUSTERSYNC_LOG=log or DLOG)
        sock = os.path.join(self.state(n), "control.sock")
        if os.path.exists(sock):  # left by a stopped daemon of ours: wait for the new one's
            os.unlink(sock)
        logf = open(os.path.join(KEEP, f"daemon-{os.path.basename(self.T)}-{n}.log"), "a")
        cmd = ns_prefix(self.netns.get(n)) + self.cmd(n, "daemon")
        if perf_out:
            cmd = [PERF, "record", "-q", "-o", perf_out, "-F", "499", "--call-graph", "dwarf,16384",
                   "--"] + cmd
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                             env=env)
        CHILDREN.append(p)
        self.procs[n] = p
        self.perf[n] = bool(perf_out)
        if wait:
            self.wait_up(n)
        return p

    def wait_up(self, n):
        """Wait until n's daemon answers on its control socket (its start-up scan is done)."""
        p = self.procs[n]
        sock = os.path.join(self.state(n), "control.sock")
        def up():
            if p.poll() is not None:
                raise BenchError(f"daemon {n} exited with {p.returncode} (log in {KEEP})")
            return os.path.exists(sock)
        wait_until(f"{n}'s control socket", up, 60, 0.005)

    def pid(self, n):
        """The daemon's pid (the child of perf when profiled)."""
        p = self.procs[n]
        if not self.perf.get(n):
            return p.pid
        for _ in range(200):
            try:
                kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.01)
        raise BenchError("perf's child not found")

    def stop(self, n):
        p = self.procs.pop(n, None)
        if p is None:
            return
        stop_proc(p, self.pid_of_proc(p, n))

    def pid_of_proc(self, p, n):
        if self.perf.get(n):
            try:
                kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
                return int(kids[0]) if kids else None
            except OSError:
                return None
        return p.pid

    def stop_all(self):
        for n in list(self.procs):
            self.stop(n)

    def status(self, n, timeout=60):
        r = run(self.cmd(n, "status", "--json"), timeout=timeout, check=False)
        if not r.stdout.strip():
            raise BenchError(f"status of {n} failed ({r.returncode}): {r.stderr[-500:]}")
        return json.loads(r.stdout)

    def gstat(self, st):
        return next(g for g in st["groups"] if g["name"] == self.group)

    def received(self, n):
        t = self.status(n).get("transfer") or {}
        return t.get("chunk_bytes_in", 0) + t.get("inline_bytes_in", 0), t

    def wait_connected(self, n, timeout=60):
        def ok():
            st = self.status(n)
            return st["peers"] and all(p["connected"] for p in st["peers"] if p["name"] in self.procs)
        return wait_until(f"{n} connected to its peers", ok, timeout, 0.05)

    def wait_in_sync(self, n, nfiles, timeout, t0=None, log=None):
        """Poll `status --json` until the group holds nfiles files and is in_sync; returns the
        time since t0 (perf_counter). The poll interval is ~1% of the elapsed time (10 ms-1 s)."""
        t0 = t0 if t0 is not None else time.perf_counter()
        deadline = time.perf_counter() + timeout
        last = None
        while time.perf_counter() < deadline:
            try:
                st = self.status(n)
            except BenchError:
                st = None
            if st:
                last = st
                g = self.gstat(st)
                if g["files"] == nfiles and g["in_sync"]:
                    return time.perf_counter() - t0
            time.sleep(min(1.0, max(0.01, (time.perf_counter() - t0) / 100)))
        raise BenchError(f"timed out after {timeout:.0f} s waiting for {n} to hold {nfiles} files in "
                         f"sync; last status: {json.dumps(last)[:1500]}")

    def sync(self, n, timeout=600):
        wall, cpu, r = timed(self.cmd(n, "sync", self.group, "--timeout", "5m"), timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"sync on {n} exited {r.returncode}: {r.stderr[-1500:]}")
        return wall, cpu

    def tcpbytes(self, n):
        """TCP bytes sent/received by n's daemon sockets (ss -ti), all peers."""
        pid = self.pid(n)
        out = run(ns_prefix(self.netns.get(n)) + ["ss", "-tinpH"], check=False).stdout.splitlines()
        sent = recv = 0
        mine = False
        for line in out:
            if not line[:1].isspace():
                mine = f"pid={pid}," in line
                continue
            if mine:
                for tok in line.split():
                    if tok.startswith("bytes_sent:"):
                        sent += int(tok.split(":")[1])
                    elif tok.startswith("bytes_received:"):
                        recv += int(tok.split(":")[1])
        return sent, recv


def stop_proc(p, pid=None):
    pid = pid or p.pid
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        say(f"bench: pid {pid} did not stop on SIGTERM within 20 s; killing it")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)


# =========================================================================== the pair fixture
class Pair:
    """Nodes a and b, the 20,020-file tree on a, rsync destinations, a private sshd."""
    inst = None

    @classmethod
    def get(cls):
        if cls.inst is None:
            cls.inst = Pair()
        return cls.inst

    def __init__(self):
        self.s = Scratch("pair")
        T = self.s.path
        self.T = T
        self.metrics_port = free_ports(1)[0]
        self.cl = Cluster(T, ["a", "b"], group="g", paths=["/data"],
                          node_extra={"b": f'metrics = "127.0.0.1:{self.metrics_port}"'})
        self.src = self.cl.data("a")
        say(f"bench: generating {NFILES} files of 1-16 KiB in {NDIRS} dirs + {NMEDIUM} x 5 MiB "
            f"under {T} ({FS})")
        t = time.perf_counter()
        gen_tree(self.src, NFILES, NDIRS, NMEDIUM, 42)
        self.n, self.bytes = tree_stats(self.src)
        say(f"bench: {self.n} files, {human(self.bytes)} in {time.perf_counter() - t:.1f} s")
        self.rdst = os.path.join(T, "rsync-dst")
        self.ldst = os.path.join(T, "local-dst")
        self.sshd = Sshd(T)
        self.sshd.wait_up()
        self.synced = False

    def both_up(self):
        for n in ("a", "b"):
            if n not in self.cl.procs:
                self.cl.start(n)
        self.cl.wait_connected("a")

    def ensure_synced(self):
        if not self.synced:
            scenario_initial()

    def peer_bytes_b(self, peer="a"):
        """(sent, received) frame bytes of b's daemon with `peer`, from b's /metrics: counted per
        peer for the daemon's life, so they cover links that have ended (a one-shot `sync`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        got = {}
        for ln in text.splitlines():
            for k in ("sent", "received"):
                if ln.startswith(f'clustersync_peer_{k}_bytes_total{{peer="{peer}"}}'):
                    got[k] = int(float(ln.split()[-1]))
        return got.get("sent", 0), got.get("received", 0)

    def ensure_big(self):
        """The 256 MiB file on a, synced to b and to rsync's destination."""
        big = os.path.join(self.src, "big", "big.bin")
        if not os.path.exists(big):
            self.both_up()
            gen_big(big, BIG_MIB, 7)
            t = time.perf_counter()
            self.cl.wait_in_sync("b", self.n + 1, 600)
            say(f"   (setup: the new {BIG_MIB} MiB file reached b in {time.perf_counter() - t:.2f} s)")
            self.n += 1
            self.sshd.rsync(self.src, self.rdst, "big-setup")
        return big, self.cl.data("b") + "/big/big.bin"


def big_edit(big, scratch, seed, k):
    """Edit `k` of the big file, written aside (to be renamed over it): 100 B inserted at 4 KiB,
    1 MiB overwritten at 100 MiB + k * 4 MiB. Returns (temp path, new length, probe), where
    probe(path) says whether a file holds the new bytes at the edited places and its end."""
    rnd = random.Random(seed + k)
    data = bytearray(open(big, "rb").read())
    ins = rnd.randbytes(100)
    patch = rnd.randbytes(1 << 20)
    data[4096:4096] = ins
    off = (100 << 20) + k * (4 << 20)
    data[off:off + (1 << 20)] = patch
    os.makedirs(scratch, exist_ok=True)
    tmp = os.path.join(scratch, "big.new")
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, os.stat(big).st_mode)
    want_len = len(data)
    want = bytes(data[4096:4196]), bytes(data[off:off + 4096]), bytes(data[-4096:])
    del data

    def probe(path):
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != want_len:
                    return False
                f.seek(4096)
                a = f.read(100)
                f.seek(off)
                b = f.read(4096)
                f.seek(want_len - 4096)
                c = f.read(4096)
                return (a, b, c) == want
        except OSError:
            return False
    return tmp, want_len, probe


# =========================================================================== scenarios
def drop_caches():
    """Before anything is measured (as root, unless BENCH_DROP_CACHES=0): flush, drop the page
    cache and the dentry/inode caches, compact free memory. After a long run of other work (a
    chaos run, builds) the receiver's CPU for `initial` was measured at 1.64-2.07 s, rsync's
    time up 10-20 % too; after this, 1.14-1.27 s, for runs in a row. Dropping only the
    dentry/inode caches did not help."""
    os.sync()
    if E.get("BENCH_DROP_CACHES", "1") == "0" or os.geteuid() != 0:
        return
    for knob, v in (("/proc/sys/vm/drop_caches", "3"), ("/proc/sys/vm/compact_memory", "1")):
        try:
            with open(knob, "w") as f:
                f.write(v + "\n")
        except OSError as e:
            say(f"bench: cannot write {knob}: {e}")


def warm_memory(mib):
    """Touch `mib` MiB of fresh memory and free it, right before a measured run (unless
    BENCH_WARM_MEMORY=0). On this kind of VM the host backs guest memory lazily and takes back
    what the guest leaves free for a few seconds: the first write to such a page costs the
    host a fault. In a run of `initial` where that hit the receiver, its CPU was 2.4 s instead
    of 1.05 s, 36 % of it in the kernel's copy into new tmpfs pages and 10 % clearing them,
    while rsync (measured first) was not slowed. Each tool, rsync included, is measured right
    after this, so each writes into memory the host already backs."""
    if E.get("BENCH_WARM_MEMORY", "1") == "0":
        return
    b = bytearray(mib << 20)
    b[::4096] = b"\x01" * ((mib << 20) // 4096)
    del b


def scenario_initial():
    P = Pair.get()
    cl = P.cl
    say(f"\n== initial: sync of {P.n} files / {human(P.bytes)} to an empty node")
    os.sync()
    warm_memory(2 * P.bytes >> 20)
    l_t, l_cpu = local_rsync(P.src, P.ldst)
    say(f"   local rsync -a:      {l_t:.3f} s (CPU of its processes {l_cpu:.2f} s)")
    os.sync()
    warm_memory(2 * P.bytes >> 20)
    r_t, r_sent, _ = P.sshd.rsync(P.src, P.rdst, "initial")
    say(f"   rsync -a over ssh:   {r_t:.3f} s, sent {human(r_sent)}")
    os.sync()
    perf = E.get("BENCH_PROFILE_INITIAL") == "1"
    warm_memory(2 * P.bytes >> 20)
    t0 = time.perf_counter()
    # both daemons start together, as after a cluster's reboot or deploy
    for n in ("a", "b"):
        cl.start(n, perf_out=os.path.join(KEEP, f"perf-initial-{n}.data") if perf else None,
                 log="clustersync=debug,info" if perf else None, wait=False)
    for n in ("a", "b"):
        cl.wait_up(n)
    c_t = cl.wait_in_sync("b", P.n, TIMEOUT, t0)
    pa, pb = cl.pid("a"), cl.pid("b")
    cpu_a, cpu_b = cpu_of(pa), cpu_of(pb)
    recv, tr = cl.received("b")
    wire = cl.tcpbytes("a")
    say(f"   clustersync:         {c_t:.3f} s (both daemons started -> b holds {P.n} files, in_sync), "
        f"payload to b {human(recv)}, TCP a->b {human(wire[0])}, CPU a {cpu_a:.2f} s, b {cpu_b:.2f} s")
    settle = wait_idle([pa, pb])
    cpu_a2, cpu_b2 = cpu_of(pa), cpu_of(pb)
    diff = verify_same(P.src, cl.data("b"), "initial")
    say(f"   daemons idle {settle if settle is None else round(settle, 1)} s later (CPU by then a {cpu_a2:.2f} s, "
        f"b {cpu_b2:.2f} s); b vs source: {diff} differing entries")
    say(f"   ratio cs/rsync-ssh {ratio(c_t, r_t)}, cs/local-rsync {ratio(c_t, l_t)}")
    record("initial", files=P.n, bytes=P.bytes, rsync_ssh_s=r_t, rsync_sent=r_sent, local_rsync_s=l_t,
           local_rsync_cpu=l_cpu, cs_s=c_t, cs_payload=recv, cs_tcp=wire[0], cpu_a=cpu_a, cpu_b=cpu_b, cpu_a_idle=cpu_a2,
           cpu_b_idle=cpu_b2, settle_s=settle, diff=diff, ratio_ssh=c_t / r_t, ratio_local=c_t / l_t,
           profiled=perf, load=load_note())
    if perf:
        cl.stop_all()
        cl.start("a")
        cl.start("b")
    P.synced = True
    cl.wait_connected("a")


def scenario_oneshot():
    P = Pair.get()
    P.ensure_synced()
    cl = P.cl
    say("\n== oneshot: `clustersync sync g` on a with nothing changed")
    rs = []
    for i in range(RUNS):
        t, s, _ = P.sshd.rsync(P.src, P.rdst, f"noop{i}")
        rs.append(t)
    say(f"   rsync -a over ssh:   {', '.join(f'{x:.3f}' for x in rs)} s")
    res = {}
    for mode in ("no-daemon", "daemon"):
        if mode == "no-daemon":
            cl.stop("a")
            if "b" not in cl.procs:
                cl.start("b")
        else:
            P.both_up()
            wait_idle([cl.pid("a"), cl.pid("b")], 60)
        runs = []
        for i in range(RUNS):
            wall, cpu = cl.sync("a")
            runs.append((wall, cpu))
            time.sleep(0.5)
        res[mode] = runs
        say(f"   clustersync {mode:9s}: " + ", ".join(f"{w:.3f} s (CPU {c:.2f})" for w, c in runs))
    record("oneshot", rsync_ssh_s=rs, cs_nodaemon=res["no-daemon"], cs_daemon=res["daemon"],
           load=load_note())
    P.both_up()


def small_change(P, seed):
    """10 modified, 10 new, 10 deleted small files under a's tree; returns what b must show."""
    rnd = random.Random(seed)
    files = []
    for dp, _dn, fn in os.walk(P.src):
        if "/d" in dp:
            files.extend(os.path.join(dp, f) for f in fn if f.endswith(".bin"))
    files.sort()
    picked = rnd.sample(files, 20)
    expect = {}
    for p in picked[:10]:
        data = rnd.randbytes(rnd.randint(1024, 16384))
        with open(p, "wb") as f:
            f.write(data)
        expect[p] = data
    for p in picked[10:]:
        os.unlink(p)
        expect[p] = None
    for i in range(10):
        p = os.path.join(os.path.dirname(picked[i]), f"new-{seed}-{i}.bin")
        data = rnd.randbytes(rnd.randint(1024, 16384))
        with open(p, "wb") as f:
            f.write(data)
        expect[p] = data
    return expect


def check_expect(P, expect):
    """Entries of expect that b does not show yet, by kind (modified, new, deleted)."""
    bad = {"modified": 0, "new": 0, "deleted": 0}
    for p, data in expect.items():
        q = P.cl.data("b") + p[len(P.src):]
        kind = "deleted" if data is None else ("new" if "/new-" in p else "modified")
        if data is None:
            bad[kind] += os.path.lexists(q)
        else:
            try:
                bad[kind] += open(q, "rb").read() != data
            except OSError:
                bad[kind] += 1
    return bad


def scenario_small():
    P = Pair.get()
    P.ensure_synced()
    cl = P.cl
    say("\n== small: 10 modified + 10 new + 10 deleted, then one-shot sync")
    rows = []
    seed = 100
    for mode in ("no-daemon", "daemon"):
        for i in range(RUNS):
            seed += 1
            if mode == "no-daemon":
                cl.stop("a")
                if "b" not in cl.procs:
                    cl.start("b")
            else:
                P.both_up()
            time.sleep(0.3)
            expect = small_change(P, seed)
            t0 = time.perf_counter()
            wall, cpu = cl.sync("a")
            bad = check_expect(P, expect)
            nbad = sum(bad.values())
            complete = wall
            if nbad:
                wait_until("b to show the 30 changes", lambda: not sum(check_expect(P, expect).values()), 30, 0.005)
                complete = time.perf_counter() - t0
            r_t, r_sent, _ = P.sshd.rsync(P.src, P.rdst, f"small-{mode}-{i}")
            rows.append({"mode": mode, "cs_s": wall, "cs_cpu": cpu, "wrong_on_b_when_sync_returned": bad,
                         "b_complete_s": complete, "rsync_ssh_s": r_t, "rsync_sent": r_sent})
            say(f"   {mode:9s} run {i + 1}: clustersync {wall:.3f} s (CPU {cpu:.2f}); when sync returned b lacked "
                f"{nbad}/30 {bad if nbad else ''} (b complete {complete:.3f} s after sync started); "
                f"rsync over ssh {r_t:.3f} s ({human(r_sent)}); ratio {ratio(wall, r_t)}")
    record("small", runs=rows, load=load_note())
    P.both_up()


def scenario_delta():
    P = Pair.get()
    P.ensure_synced()
    cl = P.cl
    P.both_up()
    say(f"\n== delta: 100 B insert at 4 KiB + 1 MiB overwrite at 100 MiB in a {BIG_MIB} MiB file, "
        f"both daemons running")
    big, bigb = P.ensure_big()
    wait_idle([cl.pid("a"), cl.pid("b")], 120)
    ino = Inotify()
    ino.watch(os.path.dirname(bigb), IN_CLOSE_WRITE | IN_MOVED_TO)
    scratch = os.path.join(P.T, "a-scratch")
    rows = []
    for k in range(3):
        tmp, _n, landed = big_edit(big, scratch, 1000, k)
        recv0, tr0 = cl.received("b")
        w0 = cl.tcpbytes("a")
        c0 = cpu_of(cl.pid("a")), cpu_of(cl.pid("b"))
        ino.drain()
        t0 = time.perf_counter()
        os.rename(tmp, big)
        t1 = ino.wait("big.bin", IN_CLOSE_WRITE | IN_MOVED_TO, lambda: landed(bigb), time.perf_counter() + 300)
        c_t = t1 - t0
        cl.wait_in_sync("b", P.n, 120)
        recv1, tr1 = cl.received("b")
        w1 = cl.tcpbytes("a")
        c1 = cpu_of(cl.pid("a")), cpu_of(cl.pid("b"))
        same = run(["cmp", "-s", big, bigb], check=False).returncode == 0
        r_t, r_sent, r_recv = P.sshd.rsync(P.src, P.rdst, f"delta{k}")
        row = {"edit": k + 1, "cs_s": c_t, "cs_payload": recv1 - recv0, "cs_tcp_a_to_b": w1[0] - w0[0],
               "cs_tcp_b_to_a": w1[1] - w0[1], "reused": tr1.get("reused_bytes", 0) - tr0.get("reused_bytes", 0),
               "cpu_a": c1[0] - c0[0], "cpu_b": c1[1] - c0[1], "identical": same,
               "rsync_ssh_s": r_t, "rsync_sent": r_sent, "rsync_recv": r_recv}
        rows.append(row)
        say(f"   edit {k + 1}: clustersync {c_t:.3f} s (rename on a -> new bytes on b), payload {human(row['cs_payload'])}, "
            f"TCP a->b {human(row['cs_tcp_a_to_b'])}, b->a {human(row['cs_tcp_b_to_a'])}, CPU a {row['cpu_a']:.2f} s "
            f"b {row['cpu_b']:.2f} s, b's copy {'identical' if same else 'DIFFERENT'}; rsync over ssh {r_t:.3f} s, "
            f"sent {human(r_sent)}, received {human(r_recv)}; ratio {ratio(c_t, r_t)}")
        wait_idle([cl.pid("a"), cl.pid("b")], 120)
    ino.close()
    bk = run(["du", "-sb", cl.state("b")], check=False).stdout.split()[:1]
    say(f"   b's state dir (index + backups) after the edits: {human(int(bk[0])) if bk else '?'}")
    record("delta", edits=rows, state_b_bytes=int(bk[0]) if bk else None, load=load_note())


def scenario_delta1():
    """The same edits, synced by a one-shot `clustersync sync g` on a while a's daemon is not
    running (b's is): a's index is opened, its tree rescanned and the big file chunked again
    in-process, then the change goes to b. rsync -a over ssh runs right after each, on the same
    edit; the two alternate which goes first."""
    P = Pair.get()
    P.ensure_synced()
    cl = P.cl
    say(f"\n== delta1: the delta edit in a {BIG_MIB} MiB file, synced by a one-shot `sync` (no daemon on a, "
        f"b's running)")
    big, bigb = P.ensure_big()
    cl.stop("a")
    if "b" not in cl.procs:
        cl.start("b")
    wait_idle([cl.pid("b")], 120)
    scratch = os.path.join(P.T, "a-scratch")
    rows = []
    for k in range(max(RUNS, 3)):
        tmp, _n, landed = big_edit(big, scratch, 2000, k)
        os.rename(tmp, big)
        os.sync()

        def ours():
            m0, recv0, cpu_b0 = P.peer_bytes_b(), cl.received("b")[0], cpu_of(cl.pid("b"))
            warm_memory(2 * BIG_MIB)
            wall, cpu = cl.sync("a")
            ok = landed(bigb)
            m1, recv1, cpu_b1 = P.peer_bytes_b(), cl.received("b")[0], cpu_of(cl.pid("b"))
            return {"cs_s": wall, "cs_cpu_a": cpu, "cs_cpu_b": cpu_b1 - cpu_b0, "cs_a_to_b": m1[1] - m0[1],
                    "cs_b_to_a": m1[0] - m0[0], "cs_payload": recv1 - recv0, "landed": ok}

        def theirs():
            warm_memory(2 * BIG_MIB)
            r_t, r_sent, r_recv = P.sshd.rsync(P.src, P.rdst, f"delta1-{k}")
            return {"rsync_ssh_s": r_t, "rsync_sent": r_sent, "rsync_recv": r_recv}
        row = {"edit": k + 1}
        if k % 2 == 0:
            row.update(ours())
            row.update(theirs())
        else:
            row.update(theirs())
            row.update(ours())
        row["identical"] = run(["cmp", "-s", big, bigb], check=False).returncode == 0
        cs_wire = row["cs_a_to_b"] + row["cs_b_to_a"]
        rs_wire = row["rsync_sent"] + row["rsync_recv"]
        row["cs_wire"], row["rsync_wire"] = cs_wire, rs_wire
        rows.append(row)
        say(f"   edit {k + 1}: clustersync {row['cs_s']:.3f} s (CPU a {row['cs_cpu_a']:.2f} s, b {row['cs_cpu_b']:.2f} s), "
            f"wire a->b {human(row['cs_a_to_b'])} + b->a {human(row['cs_b_to_a'])} = {human(cs_wire)} "
            f"(payload {human(row['cs_payload'])}), b's copy {'identical' if row['identical'] else 'DIFFERENT'}; "
            f"rsync over ssh {row['rsync_ssh_s']:.3f} s, {human(row['rsync_sent'])} + {human(row['rsync_recv'])} = "
            f"{human(rs_wire)}; time ratio {ratio(row['cs_s'], row['rsync_ssh_s'])}, bytes ratio "
            f"{ratio(cs_wire, rs_wire)}")
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    say(f"   medians: clustersync {med('cs_s'):.3f} s / {human(med('cs_wire'))}, rsync over ssh "
        f"{med('rsync_ssh_s'):.3f} s / {human(med('rsync_wire'))}")
    record("delta1", edits=rows, load=load_note())
    P.both_up()


def live_events(P, n_events, gap, kinds, ino, bdir, adir, timeout=10):
    lat = {k: [] for k in kinds}
    rnd = random.Random(5)
    for i in range(n_events):
        kind = kinds[i % len(kinds)]
        name = f"{kind}-{i:05d}.txt"
        data = rnd.randbytes(4096)
        final = os.path.join(adir, name)
        ino.drain()
        if kind == "rename":
            tmp = os.path.join(adir, f".{name}.tmp")
            t0 = time.perf_counter()
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, final)
        else:
            t0 = time.perf_counter()
            with open(final, "wb") as f:
                f.write(data)
        q = os.path.join(bdir, name)

        def ok():
            try:
                with open(q, "rb") as f:
                    return f.read() == data
            except OSError:
                return False
        t1 = ino.wait(name, IN_CLOSE_WRITE | IN_MOVED_TO, ok, time.perf_counter() + timeout)
        lat[kind].append((t1 - t0) * 1000)
        time.sleep(gap)
    return lat


def lat_summary(xs):
    return {"n": len(xs), "p50_ms": pct(xs, 50), "p90_ms": pct(xs, 90), "p99_ms": pct(xs, 99),
            "max_ms": max(xs), "min_ms": min(xs), "mean_ms": statistics.mean(xs)}


def fmt_lat(s):
    return (f"n={s['n']} p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f}, p99 {s['p99_ms']:.2f}, "
            f"max {s['max_ms']:.2f}, min {s['min_ms']:.2f}")


def scenario_live():
    P = Pair.get()
    P.ensure_synced()
    cl = P.cl
    P.both_up()
    adir, bdir = P.src + "/live", cl.data("b") + "/live"
    os.makedirs(adir, exist_ok=True)
    wait_until("live/ on b", lambda: os.path.isdir(bdir), 30, 0.01)
    wait_idle([cl.pid("a"), cl.pid("b")], 120)
    say(f"\n== live: {LIVE_EVENTS} x 4 KiB file written on a (temp+rename / plain write), "
        f"{LIVE_GAP * 1000:.0f} ms apart -> complete on b (inotify on b)")
    ino = Inotify()
    ino.watch(bdir, IN_CLOSE_WRITE | IN_MOVED_TO)
    c0 = cpu_of(cl.pid("a")), cpu_of(cl.pid("b"))
    lat = live_events(P, LIVE_EVENTS, LIVE_GAP, ["rename", "write"], ino, bdir, adir)
    c1 = cpu_of(cl.pid("a")), cpu_of(cl.pid("b"))
    ino.close()
    allx = lat["rename"] + lat["write"]
    out = {k: lat_summary(v) for k, v in lat.items()}
    out["all"] = lat_summary(allx)
    for k in ("rename", "write", "all"):
        say(f"   {k:7s}: {fmt_lat(out[k])}")
    say(f"   CPU per event: a {(c1[0] - c0[0]) / len(allx) * 1000:.2f} ms, b {(c1[1] - c0[1]) / len(allx) * 1000:.2f} ms")
    with open(os.path.join(KEEP, "live-latencies.json"), "w") as f:
        json.dump(lat, f)
    record("live", **out, cpu_ms_per_event_a=(c1[0] - c0[0]) / len(allx) * 1000,
           cpu_ms_per_event_b=(c1[1] - c0[1]) / len(allx) * 1000, load=load_note())


def scenario_delete():
    P = Pair.get()
    P.ensure_synced()
    cl = P.cl
    P.both_up()
    adir, bdir = P.src + "/del", cl.data("b") + "/del"
    os.makedirs(adir, exist_ok=True)
    rnd = random.Random(9)
    names = [f"gone-{i:05d}.txt" for i in range(DEL_EVENTS)]
    for nm in names:
        with open(os.path.join(adir, nm), "wb") as f:
            f.write(rnd.randbytes(4096))
    wait_until(f"{DEL_EVENTS} files on b", lambda: os.path.isdir(bdir) and
               sum(1 for _ in os.scandir(bdir)) >= DEL_EVENTS, 120, 0.05)
    wait_idle([cl.pid("a"), cl.pid("b")], 120)
    say(f"\n== delete: unlink one file on a, {DEL_GAP * 1000:.0f} ms apart, -> gone on b ({DEL_EVENTS} events)")
    ino = Inotify()
    ino.watch(bdir, IN_DELETE | IN_MOVED_FROM)
    lat = []
    for nm in names:
        ino.drain()
        q = os.path.join(bdir, nm)
        t0 = time.perf_counter()
        os.unlink(os.path.join(adir, nm))
        t1 = ino.wait(nm, IN_DELETE | IN_MOVED_FROM, lambda: not os.path.lexists(q), time.perf_counter() + 10)
        lat.append((t1 - t0) * 1000)
        time.sleep(DEL_GAP)
    ino.close()
    s = lat_summary(lat)
    say(f"   delete: {fmt_lat(s)}")
    record("delete", **s, load=load_note())


def scenario_scale():
    say(f"\n== scale: {SCALE_FILES} small files in {SCALE_DIRS} dirs, one group, one node ({FS})")
    S = Scratch("scale")
    T = S.path
    # a group of one node: nothing to send, `sync` is the rescan alone
    cl = Cluster(T, ["s"], group="big", paths=["/data"])
    root = cl.data("s")
    t = time.perf_counter()
    per = SCALE_FILES // SCALE_DIRS
    payload = b"x" * 100
    k = 0
    for d in range(SCALE_DIRS):
        dd = os.path.join(root, f"{d // 100:03d}", f"{d:05d}")
        os.makedirs(dd)
        n = per if d < SCALE_DIRS - 1 else SCALE_FILES - k
        for i in range(n):
            fd = os.open(f"{dd}/f{i:05d}.html", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
        k += n
    ndirs = SCALE_DIRS + (SCALE_DIRS + 99) // 100 + 1
    say(f"   generated {k} files, {ndirs} directories in {time.perf_counter() - t:.1f} s")
    t0 = time.perf_counter()
    cl.start("s")
    pid = cl.pid("s")

    def counted():
        g = cl.gstat(cl.status("s", timeout=120))
        return g["files"] == k
    wait_until(f"the daemon to index {k} files", counted, TIMEOUT, 0.1)
    t_index = time.perf_counter() - t0
    cpu_index = cpu_of(pid)
    rss_index = proc_kib(pid, "VmRSS") * 1024
    hwm_index = proc_kib(pid, "VmHWM") * 1024
    settle = wait_idle([pid], 300)
    cpu_idle = cpu_of(pid)
    rss_idle = proc_kib(pid, "VmRSS") * 1024
    say(f"   first index: {t_index:.2f} s (daemon start -> status shows {k} files), CPU {cpu_index:.2f} s; "
        f"idle {settle if settle is None else round(settle, 1)} s later (CPU {cpu_idle:.2f} s)")
    say(f"   RSS when counted {human(rss_index)} ({rss_index / k:.0f} B/file), peak {human(hwm_index)} "
        f"({hwm_index / k:.0f} B/file), when idle {human(rss_idle)} ({rss_idle / k:.0f} B/file)")
    # inotify watches used by the daemon
    watches = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                watches += sum(1 for ln in open(f"/proc/{pid}/fdinfo/{fd}") if ln.startswith("inotify wd:"))
        except OSError:
            pass
    maxw = int(open("/proc/sys/fs/inotify/max_user_watches").read())
    say(f"   inotify watches held by the daemon: {watches} (directories: {ndirs}); max_user_watches {maxw}")
    rescans = []
    for i in range(RUNS):
        wall, cpu = cl.sync("s", timeout=600)
        rescans.append((wall, cpu))
    say("   `sync` with the daemon running (SPEC: zero scans): " + ", ".join(f"{w:.3f} s (CPU {c:.2f})" for w, c in rescans))
    stats = []
    for i in range(RUNS):
        wall, cpu, r = timed(cl.cmd("s", "status", "--json"), timeout=120)
        stats.append(wall)
    say("   status --json: " + ", ".join(f"{w * 1000:.1f} ms" for w in stats))
    rss_after = proc_kib(pid, "VmRSS") * 1024
    hwm_after = proc_kib(pid, "VmHWM") * 1024
    cl.stop("s")
    # the real rescan: one-shot `sync` without a daemon walks the tree against the index
    rescans_nd = []
    for i in range(RUNS):
        wall, cpu = cl.sync("s", timeout=600)
        rescans_nd.append((wall, cpu))
    best = min(w for w, _ in rescans_nd)
    say("   rescan, nothing changed (one-shot `sync`, no daemon: walk + compare with the index): " +
        ", ".join(f"{w:.2f} s (CPU {c:.2f})" for w, c in rescans_nd) + f" = {best / k * 1e5:.3f} s per 100,000 files (best)")
    # restart: index already there
    t0 = time.perf_counter()
    cl.start("s")
    pid = cl.pid("s")
    wait_until("restart index", counted, TIMEOUT, 0.1)
    t_restart = time.perf_counter() - t0
    wait_idle([pid], 300)
    rss_restart = proc_kib(pid, "VmRSS") * 1024
    cpu_restart = cpu_of(pid)
    say(f"   restart: status shows {k} files after {t_restart:.2f} s; idle RSS {human(rss_restart)} "
        f"({rss_restart / k:.0f} B/file), CPU {cpu_restart:.2f} s")
    idx = run(["du", "-sb", cl.state("s")], check=False).stdout.split()[:1]
    cl.stop("s")
    record("scale", files=k, dirs=ndirs, index_s=t_index, index_cpu_s=cpu_index, settle_s=settle,
           cpu_idle=cpu_idle, rss_counted=rss_index, rss_peak=hwm_index, rss_idle=rss_idle,
           rss_after_rescans=rss_after, peak_after_rescans=hwm_after, rss_restart=rss_restart,
           restart_s=t_restart, restart_cpu_s=cpu_restart, sync_daemon=rescans, rescans_nodaemon=rescans_nd,
           rescan_s_per_100k=best / k * 1e5, status_s=stats,
           watches=watches, max_user_watches=maxw, state_bytes=int(idx[0]) if idx else None,
           load=load_note())


def scenario_fanout():
    say(f"\n== fanout: {FAN_NODES} daemons on loopback, {FAN_FILES} x 4 KiB files created on node n01")
    S = Scratch("fanout")
    names = [f"n{i + 1:02d}" for i in range(FAN_NODES)]
    cl = Cluster(S.path, names, group="f", paths=["/data"])
    for n in names:
        cl.start(n)
    for n in names:
        cl.wait_connected(n, 120)
    pids = [cl.pid(n) for n in names]
    wait_idle(pids, 60)
    base = {n: cl.status(n) for n in names}
    cpu0 = {n: cpu_of(cl.pid(n)) for n in names}
    rnd = random.Random(3)
    src = cl.data(names[0])
    t0 = time.perf_counter()
    for i in range(FAN_FILES):
        d = os.path.join(src, f"dir{i % 10}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
            f.write(rnd.randbytes(4096))
    t_written = time.perf_counter() - t0
    per_node = {}

    def count(n):
        c = 0
        for dp, _dn, fn in os.walk(cl.data(n)):
            c += len(fn)
        return c
    pending = set(names[1:])
    deadline = time.perf_counter() + TIMEOUT
    while pending:
        if time.perf_counter() > deadline:
            raise BenchError(f"fanout: nodes {sorted(pending)} did not get {FAN_FILES} files")
        for n in list(pending):
            if count(n) >= FAN_FILES:
                per_node[n] = time.perf_counter() - t0
                pending.discard(n)
        time.sleep(0.02)
    t_all = time.perf_counter() - t0
    for n in names[1:]:
        cl.wait_in_sync(n, FAN_FILES, 120)
    wait_idle(pids, 120)
    payload = FAN_FILES * 4096
    rows = []
    tot = 0
    for n in names:
        st = cl.status(n)
        t1 = st.get("transfer") or {}
        t_0 = base[n].get("transfer") or {}
        recv = sum(t1.get(k, 0) - t_0.get(k, 0) for k in ("chunk_bytes_in", "inline_bytes_in"))
        items = t1.get("items_in", 0) - t_0.get("items_in", 0)
        out = t1.get("chunk_bytes_out", 0) - t_0.get("chunk_bytes_out", 0)
        frm = {p["name"]: p.get("bytes_received", 0) - next((q.get("bytes_received", 0) for q in base[n]["peers"]
                                                             if q["name"] == p["name"]), 0) for p in st["peers"]}
        senders = {k: v for k, v in frm.items() if v > 0}
        tot += recv
        rows.append({"node": n, "recv": recv, "items_in": items, "chunk_out": out, "t_all_files_s": per_node.get(n),
                     "from_peers": senders, "cpu_s": cpu_of(cl.pid(n)) - cpu0[n]})
        say(f"   {n}: got all files at {per_node.get(n, 0):.2f} s, received {human(recv)} "
            f"({recv / payload:.2f} x the payload), items_in {items}, sent chunks {human(out)}, CPU {rows[-1]['cpu_s']:.2f} s, "
            f"bytes per peer link: {', '.join(f'{k} {human(v)}' for k, v in sorted(senders.items())) or '-'}")
    say(f"   all {FAN_NODES - 1} nodes complete after {t_all:.2f} s (files written in {t_written:.2f} s); "
        f"total received {human(tot)} = {tot / payload:.2f} x the payload (ideal {FAN_NODES - 1})")
    cl.stop_all()
    record("fanout", nodes=FAN_NODES, files=FAN_FILES, t_all_s=t_all, t_written_s=t_written, total_recv=tot,
           payload=payload, per_node=rows, load=load_note())


def tcp_by_pid(netns=None):
    """TCP payload bytes (sent, received) per pid, from `ss -tinpH`: what went over each socket
    after encryption (not counting TCP/IP headers)."""
    out = run(ns_prefix(netns) + ["ss", "-tinpH"], check=False).stdout.splitlines()
    res = {}
    pids = []
    for line in out:
        if not line[:1].isspace():
            pids = [int(x.split(",")[0]) for x in line.split("pid=")[1:]]
            continue
        sent = recv = 0
        for tok in line.split():
            if tok.startswith("bytes_sent:"):
                sent = int(tok.split(":")[1])
            elif tok.startswith("bytes_received:"):
                recv = int(tok.split(":")[1])
        for p in pids:
            a, b = res.get(p, (0, 0))
            res[p] = (a + sent, b + recv)
    return res


class Mesh:
    """N daemons in one group on loopback, every one linked with every other."""

    def __init__(self, name, n):
        self.S = Scratch(name)
        self.names = [f"n{i + 1:02d}" for i in range(n)]
        self.cl = Cluster(self.S.path, self.names, group="m", paths=["/data"])
        for nm in self.names:
            self.cl.start(nm, wait=False)
        for nm in self.names:
            self.cl.wait_up(nm)
        for nm in self.names:
            self.cl.wait_connected(nm, 300)
        self.pids = [self.cl.pid(nm) for nm in self.names]

    def links(self):
        """Frame bytes per link as {(node, peer): (sent, received)}, from every `status`."""
        out = {}
        for nm in self.names:
            for p in self.cl.status(nm)["peers"]:
                out[(nm, p["name"])] = (p.get("bytes_sent", 0), p.get("bytes_received", 0))
        return out

    def tcp(self):
        by = tcp_by_pid()
        return sum(by.get(p, (0, 0))[0] for p in self.pids)

    def received(self):
        """Content written by each node (inline + chunks), from `status`."""
        return {nm: self.cl.received(nm)[0] for nm in self.names}

    def stop(self):
        self.cl.stop_all()


def scenario_mesh():
    """One change on a full mesh of MESH_NODES daemons: time until every other node holds it,
    content written per node, frame bytes per link (status) and TCP bytes in all, against the
    target 1.2 x (N-1) x payload + 30 KiB (SPEC §7). The keep-alives of the same time without a
    change are measured first and subtracted."""
    n = MESH_NODES
    say(f"\n== mesh: {n} daemons on loopback, full mesh, one change at a time on one node")
    M = Mesh("mesh", n)
    cl = M.cl
    wait_idle(M.pids, 120)
    rows = []
    for k, size in enumerate(MESH_SIZES * MESH_RUNS):
        origin = M.names[k % n]
        # the cost of the same time without a change: keep-alives
        f0, t0w = M.links(), M.tcp()
        t0 = time.perf_counter()
        time.sleep(3)
        f1, t1w = M.links(), M.tcp()
        idle_s = time.perf_counter() - t0
        idle_frames = sum(v[0] for v in f1.values()) - sum(v[0] for v in f0.values())
        idle_tcp = t1w - t0w
        r0 = M.received()
        data = random.Random(k).randbytes(size)
        rel = f"c{k:03d}.bin"
        paths = [cl.data(nm) + "/" + rel for nm in M.names if nm != origin]
        # written outside the group and renamed in: one change, not a temp file and a rename
        tmp = os.path.join(cl.root(origin), rel + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        g0, g0w = M.links(), M.tcp()
        t0 = time.perf_counter()
        os.rename(tmp, cl.data(origin) + "/" + rel)
        pending = set(paths)
        deadline = t0 + 60
        while pending and time.perf_counter() < deadline:
            for p in list(pending):
                try:
                    if os.path.getsize(p) == size:
                        pending.discard(p)
                except OSError:
                    pass
            if pending:
                time.sleep(0.002)
        t_all = time.perf_counter() - t0
        if pending:
            raise BenchError(f"mesh: {len(pending)} nodes lack the change after 60 s")
        # acknowledgements and anything late
        time.sleep(2)
        g1, g1w = M.links(), M.tcp()
        span = time.perf_counter() - t0
        r1 = M.received()
        per_link = {key: g1[key][0] - g0.get(key, (0, 0))[0] for key in g1}
        frames = sum(per_link.values())
        tcp = g1w - g0w
        frames_net = frames - idle_frames / idle_s * span
        tcp_net = tcp - idle_tcp / idle_s * span
        wrote = {nm: r1[nm] - r0[nm] for nm in M.names}
        target = 1.2 * (n - 1) * size + 30 * 1024
        # a keep-alive and its answer are ~100 B a link in this time: count links that carried more
        busy = sorted(((v, a, b) for (a, b), v in per_link.items() if v > 300), reverse=True)
        by_sender = {}
        for (a, b), v in per_link.items():
            by_sender[a] = by_sender.get(a, 0) + v
        row = {"size": size, "origin": origin, "t_all_s": t_all, "frames": frames, "tcp": tcp,
               "frames_net": frames_net, "tcp_net": tcp_net, "idle_frames_per_s": idle_frames / idle_s,
               "idle_tcp_per_s": idle_tcp / idle_s, "span_s": span, "target": target,
               "wrote_min": min(v for k2, v in wrote.items() if k2 != origin),
               "wrote_max": max(v for k2, v in wrote.items() if k2 != origin),
               "links_used": len(busy), "by_sender": by_sender,
               "top_links": [(a, b, v) for v, a, b in busy[:8]]}
        rows.append(row)
        say(f"   {size} B on {origin}: all {n - 1} complete after {t_all * 1000:.0f} ms; each wrote "
            f"{row['wrote_min']}-{row['wrote_max']} B; frames {human(frames)} ({human(frames_net)} without "
            f"the keep-alives of {span:.1f} s, {human(idle_frames / idle_s)}/s), TCP {human(tcp)} "
            f"({human(tcp_net)} net); target {human(target)}: {'met' if tcp_net <= target else 'MISSED'}")
        say(f"      links that carried over 300 B: {len(busy)} of {n * (n - 1)} directions; senders of over 2 KiB: "
            + ", ".join(f"{a} {human(v)}" for a, v in sorted(by_sender.items()) if v > 2048))
    cl_rss = [proc_kib(p, "VmRSS") for p in M.pids]
    say(f"   RSS per daemon {min(cl_rss) / 1024:.1f}-{max(cl_rss) / 1024:.1f} MiB")
    record("mesh", nodes=n, runs=rows, rss_kib=cl_rss, load=load_note())
    M.stop()


def scenario_churn():
    """CHURN_RATE changes a second on random nodes for CHURN_SECS, on meshes of each size in
    CHURN_NODES: bytes on the wire (TCP, all daemons) per change and per receiving node, which
    stays flat when the cost grows linearly with the nodes. Every node writes files of its own
    (no conflicts); the trees are compared at the end."""
    for n in CHURN_NODES:
        say(f"\n== churn: {n} daemons, {CHURN_RATE} changes/s of {CHURN_SIZE} B on random nodes for {CHURN_SECS} s")
        M = Mesh(f"churn{n}", n)
        cl = M.cl
        wait_idle(M.pids, 120)
        rnd = random.Random(n)
        f0, t0w = M.links(), M.tcp()
        t0 = time.perf_counter()
        time.sleep(3)
        idle_tcp = (M.tcp() - t0w) / (time.perf_counter() - t0)
        t0w = M.tcp()
        cpu0 = sum(cpu_of(p) for p in M.pids)
        t0 = time.perf_counter()
        count = 0
        while True:
            now = time.perf_counter() - t0
            if now >= CHURN_SECS:
                break
            due = count / CHURN_RATE
            if due > now:
                time.sleep(due - now)
            nm = rnd.choice(M.names)
            p = os.path.join(cl.data(nm), nm, f"f{rnd.randrange(50):02d}.bin")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = os.path.join(cl.root(nm), "churn.tmp")
            with open(tmp, "wb") as f:
                f.write(rnd.randbytes(CHURN_SIZE))
            os.rename(tmp, p)
            count += 1
        t_write = time.perf_counter() - t0

        def trees():
            out = []
            for nm in M.names:
                t = {}
                for dp, _dn, fn in os.walk(cl.data(nm)):
                    for f in fn:
                        q = os.path.join(dp, f)
                        try:
                            t[os.path.relpath(q, cl.data(nm))] = hashlib.blake2b(open(q, "rb").read()).hexdigest()
                        except OSError:
                            t[q] = None
                out.append(t)
            return out
        wait_until("every node to hold the same tree", lambda: all(t == trees()[0] for t in trees()), 300, 0.5)
        t_conv = time.perf_counter() - t0
        time.sleep(2)
        span = time.perf_counter() - t0
        tcp = M.tcp() - t0w
        cpu = sum(cpu_of(p) for p in M.pids) - cpu0
        net = tcp - idle_tcp * span
        per = net / count / (n - 1)
        say(f"   {count} changes in {t_write:.1f} s; converged {t_conv - t_write:.1f} s after the last; TCP "
            f"{human(tcp)} ({human(net)} without keep-alives): {per:.0f} B per change per receiving node "
            f"({per / CHURN_SIZE:.2f} x the payload); daemons' CPU {cpu:.1f} s")
        record("churn", nodes=n, changes=count, secs=t_write, converge_s=t_conv - t_write, tcp=tcp, tcp_net=net,
               per_change_per_node=per, payload=CHURN_SIZE, cpu=cpu, idle_tcp_per_s=idle_tcp, load=load_note())
        M.stop()


RELAY = r"""
import asyncio, sys, time
lh, lp, th, tp, delay, cap = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]) / 1000, int(sys.argv[6])

async def pump(r, w):
    q = asyncio.Queue()
    room = asyncio.Semaphore(cap // 65536)   # bytes in flight inside the relay (the 'pipe')
    async def out():
        while True:
            due, data = await q.get()
            if data is None:
                break
            d = due - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            w.write(data)
            await w.drain()
            for _ in range((len(data) + 65535) // 65536):
                room.release()
        try:
            w.write_eof()
        except OSError:
            pass
    t = asyncio.ensure_future(out())
    try:
        while True:
            data = await r.read(65536)
            await room.acquire()
            if not data:
                q.put_nowait((0, None))
                break
            q.put_nowait((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        q.put_nowait((0, None))
    try:
        await t
    except (ConnectionError, OSError):
        pass

async def conn(cr, cw):
    try:
        ur, uw = await asyncio.open_connection(th, tp)
    except OSError:
        cw.close(); return
    await asyncio.gather(pump(cr, uw), pump(ur, cw), return_exceptions=True)
    cw.close(); uw.close()

async def main():
    srv = await asyncio.start_server(conn, lh, lp)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""


class Netns:
    """Two network namespaces joined by a veth pair. The kernel here has no netem (no qdisc for
    delay), so the link is: tbf (rate) on both veth ends, and the one-way delay added by a
    userspace relay (RELAY) in front of each listener: a connection from A to B's service goes
    to a relay in A (local), which holds each read for RTT/2 before writing it across the shaped
    veth, and likewise back. Application round trips then cost the RTT; TCP's own window growth
    sees the short hop to the relay (an approximation, said in the README)."""

    def __init__(self):
        sfx = str(os.getpid() % 100000)
        self.a, self.b = f"csbA{sfx}", f"csbB{sfx}"
        self.ha, self.hb = "10.213.37.1", "10.213.37.2"
        CLEANUPS.append(self.remove)
        for ns in (self.a, self.b):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        va, vb = f"vA{sfx}", f"vB{sfx}"
        run(["ip", "link", "add", va, "netns", self.a, "type", "veth", "peer", "name", vb, "netns", self.b])
        self.netem = True
        for ns, v, h in ((self.a, va, self.ha), (self.b, vb, self.hb)):
            run(["ip", "-n", ns, "addr", "add", f"{h}/24", "dev", v])
            run(["ip", "-n", ns, "link", "set", v, "up"])
            r = run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", v, "root", "netem", "delay",
                     f"{WAN_RTT_MS / 2}ms", "rate", WAN_RATE, "limit", "100000"], check=False)
            if r.returncode != 0:
                self.netem = False
                run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", v, "root", "tbf", "rate", WAN_RATE,
                     "burst", "64kb", "latency", "50ms"])
        self.relay_delay = 0 if self.netem else WAN_RTT_MS / 2

    def expose(self, ns_from, target_host, target_port):
        """An address that clients in ns_from use to reach target_host:target_port with the
        link's delay: the target itself with netem, else a relay in ns_from."""
        if self.netem:
            return target_host, target_port
        host = self.ha if ns_from == self.a else self.hb
        port = free_ports(1)[0]
        p = subprocess.Popen(ns_prefix(ns_from) + [sys.executable, "-c", RELAY, host, str(port), target_host,
                                                   str(target_port), str(self.relay_delay), str(8 << 20)],
                             stdout=subprocess.PIPE, text=True)
        CHILDREN.append(p)
        if p.stdout.readline().strip() != "ready":
            raise BenchError("relay did not start")
        return host, port

    def measure_rtt(self):
        port = free_ports(1)[0]
        srv = subprocess.Popen(ns_prefix(self.b) + [sys.executable, "-c",
                               f"import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                               f"s.bind(('{self.hb}',{port}));s.listen(8)\nwhile True:\n c,_=s.accept()\n while True:\n"
                               f"  d=c.recv(100)\n  if not d: break\n  c.sendall(d)\n c.close()"])
        CHILDREN.append(srv)
        time.sleep(0.5)
        h, p = self.expose(self.a, self.hb, port)
        r = run(ns_prefix(self.a) + [sys.executable, "-c",
                f"import socket,time\nc=socket.create_connection(('{h}',{p}))\nts=[]\nfor i in range(5):\n"
                f" t=time.perf_counter();c.sendall(b'x');c.recv(10);ts.append(time.perf_counter()-t)\nprint(min(ts)*1000)"],
                check=False)
        srv.kill()
        srv.wait()
        try:
            return float(r.stdout.strip())
        except ValueError:
            return None

    def remove(self):
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def scenario_wan():
    say(f"\n== wan: {WAN_MIB} MiB of text web content over a shaped link ({WAN_RTT_MS} ms RTT, {WAN_RATE})")
    S = Scratch("wan")
    T = S.path
    N = Netns()
    rtt = N.measure_rtt()
    how = "netem" if N.netem else f"tbf {WAN_RATE} + userspace relay adding {N.relay_delay} ms each way (no netem in this kernel)"
    say(f"   namespaces {N.a} ({N.ha}) <-> {N.b} ({N.hb}), {how}; measured application RTT {rtt and round(rtt, 1)} ms")
    src = os.path.join(T, "web-src")
    t = time.perf_counter()
    nf, nb = gen_web(src, WAN_MIB, 11)
    z = run(["sh", "-c", f"tar cf - -C {src} . | zstd -1 -c | wc -c"], check=False).stdout.strip()
    say(f"   generated {nf} files, {human(nb)} in {time.perf_counter() - t:.1f} s; tar|zstd -1: "
        f"{human(int(z)) if z.isdigit() else '?'}")
    sshd = Sshd(T, host=N.hb, netns=N.b)
    sshd.wait_up(client_ns=N.a, via=N.expose(N.a, N.hb, sshd.port))
    res = {"files": nf, "bytes": nb, "rtt_ms": rtt, "link": how}
    for label, extra in (("rsync", ()), ("rsync-z", ("-z",))):
        dst = os.path.join(T, f"dst-{label}")
        rt, sent, _ = sshd.rsync(src, dst, f"wan-{label}", extra)
        res[label] = {"s": rt, "sent": sent}
        say(f"   {label:9s} over ssh: {rt:.2f} s, sent {human(sent)} ({sent * 8 / rt / 1e6:.1f} Mbit/s on the wire)")

    def cs_run(label, cluster_extra, data_src, nfiles):
        sub = os.path.join(T, label)
        os.makedirs(sub)
        cl = Cluster(sub, ["a", "b"], group="w", paths=["/data"], cluster_extra=cluster_extra,
                     hosts={"a": N.ha, "b": N.hb}, netns={"a": N.a, "b": N.b},
                     addr_map=lambda n, h, p: N.expose(N.b if n == "a" else N.a, h, p))
        os.rmdir(cl.data("a"))
        os.rename(data_src, cl.data("a"))
        cl.start("a")
        # let a index its tree first: what is timed is the transfer
        wait_until("a indexed", lambda: cl.gstat(cl.status("a"))["files"] == nfiles, 300, 0.1)
        t0 = time.perf_counter()
        cl.start("b")
        tt = cl.wait_in_sync("b", nfiles, TIMEOUT, t0)
        recv, _tr = cl.received("b")
        wire = cl.tcpbytes("a")
        diff = verify_same(cl.data("a"), cl.data("b"), f"wan-{label}")
        cl.stop_all()
        os.rename(cl.data("a"), data_src)
        os.makedirs(cl.data("a"))
        return tt, recv, wire[0], diff
    for label, extra in (("cs-auto", ""), ("cs-off", 'compress = "off"')):
        tt, recv, wire, diff = cs_run(label, extra, src, nf)
        res[label] = {"s": tt, "payload": recv, "tcp": wire, "diff": diff}
        say(f"   clustersync {label[3:]:4s}: {tt:.2f} s (b started -> in sync; a had indexed), payload {human(recv)}, "
            f"TCP a->b {human(wire)} ({wire * 8 / tt / 1e6:.1f} Mbit/s), {diff} differing entries")
    # bwlimit: incompressible data, limit per peer link
    bsrc = os.path.join(T, "bw-src")
    rnd = random.Random(17)
    os.makedirs(bsrc)
    for i in range(BWLIMIT_MIB):
        with open(os.path.join(bsrc, f"r{i:03d}.bin"), "wb") as f:
            f.write(rnd.randbytes(1 << 20))
    tt, recv, wire, diff = cs_run("cs-bwlimit", f'bwlimit = "{BWLIMIT}"', bsrc, BWLIMIT_MIB)
    rate = wire / tt
    res["bwlimit"] = {"limit": BWLIMIT, "s": tt, "tcp": wire, "rate_Bps": rate, "diff": diff}
    say(f"   bwlimit {BWLIMIT}: {BWLIMIT_MIB} MiB incompressible in {tt:.2f} s = {human(rate)}/s on the wire "
        f"(payload {human(recv)})")
    res["ratio_auto_vs_rsync"] = res["cs-auto"]["s"] / res["rsync"]["s"]
    res["ratio_auto_vs_rsync_z"] = res["cs-auto"]["s"] / res["rsync-z"]["s"]
    say(f"   ratios: cs auto / rsync {ratio(res['cs-auto']['s'], res['rsync']['s'])}, / rsync -z "
        f"{ratio(res['cs-auto']['s'], res['rsync-z']['s'])}; cs auto / cs off {ratio(res['cs-auto']['s'], res['cs-off']['s'])}")
    record("wan", **res, load=load_note())


def perf_report(data, out_prefix):
    """Flat (self) profile by symbol and by thread, plus the callers tree for the top entries."""
    rep = {}
    for label, args in (("self", ["--no-children", "--sort", "sym", "--percent-limit", "0.7"]),
                        ("threads", ["--no-children", "--sort", "comm", "--percent-limit", "0.5"]),
                        ("children", ["--children", "--sort", "sym", "--percent-limit", "3"])):
        r = run([PERF, "report", "-i", data, "--stdio", "-g", "none", *args], check=False, timeout=900)
        txt = r.stdout
        with open(f"{out_prefix}-{label}.txt", "w") as f:
            f.write(txt + r.stderr[-2000:])
        rep[label] = [ln for ln in txt.splitlines() if ln.strip() and not ln.startswith("#")][:40]
    # inclusive time of clustersync's own functions: the phases
    r = run([PERF, "report", "-i", data, "--stdio", "-g", "none", "--children", "--sort", "sym",
             "--percent-limit", "0.5"], check=False, timeout=900)
    ph = [" ".join(ln.split()[:2] + [ln.split("[.]", 1)[-1].strip()[:160]]) for ln in r.stdout.splitlines()
          if "[.]" in ln and ln.split("[.]", 1)[-1].strip().startswith(("clustersync::", "<clustersync::"))]
    with open(f"{out_prefix}-phases.txt", "w") as f:
        f.write("\n".join(ph) + "\n")
    rep["phases"] = ph[:40]
    r = run([PERF, "report", "-i", data, "--stdio", "-g", "none", "--no-children", "--sort", "dso"],
            check=False, timeout=900)
    rep["dso"] = [ln for ln in r.stdout.splitlines() if ln.strip() and not ln.startswith("#")][:8]
    return rep


def scenario_profile():
    """perf record (dwarf call graphs) of both daemons during the initial sync, then during a
    series of live changes; reports in the log dir."""
    say("\n== profile: perf record of the initial sync and of live changes")
    r = run([PERF, "record", "-q", "-o", os.path.join(KEEP, "perf-probe.data"), "--", "true"], check=False)
    if r.returncode != 0:
        say(f"   perf does not work here: {r.stderr.strip()[:300]}")
        record("profile", ok=False, error=r.stderr[-500:])
        return
    E["BENCH_PROFILE_INITIAL"] = "1"
    Pair.inst = None
    scenario_initial()
    P = Pair.get()
    cl = P.cl
    reps = {}
    # the perf processes ended with the daemons in scenario_initial (restarted without perf)
    for n in ("a", "b"):
        reps[f"initial-{n}"] = perf_report(os.path.join(KEEP, f"perf-initial-{n}.data"),
                                           os.path.join(KEEP, f"perf-initial-{n}"))
    # live: restart both under perf, 100 events
    cl.stop_all()
    for n in ("a", "b"):
        cl.start(n, perf_out=os.path.join(KEEP, f"perf-live-{n}.data"), log="clustersync=debug,info")
    cl.wait_connected("a")
    adir, bdir = P.src + "/live", cl.data("b") + "/live"
    os.makedirs(adir, exist_ok=True)
    wait_until("live/ on b", lambda: os.path.isdir(bdir), 30, 0.01)
    wait_idle([cl.pid("a"), cl.pid("b")], 120)
    ino = Inotify()
    ino.watch(bdir, IN_CLOSE_WRITE | IN_MOVED_TO)
    lat = live_events(P, 100, LIVE_GAP, ["write"], ino, bdir, adir)
    ino.close()
    say(f"   live under perf: {fmt_lat(lat_summary(lat['write']))}")
    cl.stop_all()
    for n in ("a", "b"):
        reps[f"live-{n}"] = perf_report(os.path.join(KEEP, f"perf-live-{n}.data"),
                                        os.path.join(KEEP, f"perf-live-{n}"))
    for k, v in reps.items():
        say(f"   --- {k} (self time by symbol; full reports in {KEEP})")
        for ln in v["self"][:15]:
            say("     " + ln[:150])
        say("     by dso: " + " | ".join(" ".join(x.split()) for x in v["dso"][:5]))
        say("     clustersync functions, inclusive (children, self):")
        for ln in v["phases"][:20]:
            say("       " + ln)
    record("profile", ok=True, reports=reps)
    Pair.inst = None


def link_bytes(cl, n):
    """Bytes n's daemon sent and received on its current links (status --json, every peer)."""
    st = cl.status(n)
    return sum(p.get("bytes_sent", 0) + p.get("bytes_received", 0) for p in st["peers"])


def idle_cpu(names, cl, seconds):
    """CPU seconds the daemons of names used over `seconds` of idling, and that as % of one core."""
    pids = [cl.pid(n) for n in names]
    before = [cpu_of(p) for p in pids]
    time.sleep(seconds)
    used = sum(cpu_of(p) - b for p, b in zip(pids, before))
    return used, 100.0 * used / (seconds * len(names))


def scenario_verify():
    """Anti-entropy (SPEC §5.14): `verify` and `verify --deep` on the 20,020-file pair, and the
    CPU an idle 3-node cluster spends, with the default verify_every and with comparisons every
    second. (The 1,000,000-file figures come from `cargo bench --bench summary`.)"""
    P = Pair.get()
    P.ensure_synced()
    P.both_up()
    cl = P.cl
    say(f"\n== verify: `clustersync verify` and `verify --deep` on a ({P.n} files, {human(P.bytes)})")
    ts, bs = [], []
    for _ in range(max(RUNS, 5)):
        b0 = link_bytes(cl, "a")
        t, _, r = timed(cl.cmd("a", "verify", "--json"))
        b1 = link_bytes(cl, "a")
        rep = json.loads(r.stdout)
        if r.returncode != 0 or not all(c["matched"] for c in rep["compared"]):
            raise BenchError(f"verify on an equal pair said {r.returncode}: {r.stdout[-300:]}")
        ts.append(t)
        bs.append(b1 - b0)
    say(f"   verify (equal, whole command): {', '.join(f'{x * 1000:.1f}' for x in ts)} ms; "
        f"bytes on the link {', '.join(str(x) for x in bs)} (keep-alives included)")
    ds = []
    for _ in range(RUNS):
        t, _, r = timed(cl.cmd("a", "verify", "--deep", "--json"))
        rep = json.loads(r.stdout)
        if r.returncode != 0:
            raise BenchError(f"verify --deep said {r.returncode}: {r.stdout[-300:]}")
        ds.append(t)
    say(f"   verify --deep: {', '.join(f'{x:.3f}' for x in ds)} s for {rep['deep_files']} files, "
        f"{human(rep['deep_bytes'])} (page cache warm)")
    record("verify", files=P.n, bytes=P.bytes, verify_s=ts, verify_link_bytes=bs, deep_s=ds,
           deep_files=rep["deep_files"], deep_bytes=rep["deep_bytes"], load=load_note())

    say(f"\n== verify-idle: an idle 3-node cluster, {IDLE_S:.0f} s")
    res = {}
    for every in ("10m", "1s"):
        S = Scratch("idle-" + every)
        c3 = Cluster(S.path, ["a", "b", "c"], group="g", paths=["/data"],
                     group_extra=f'verify_every = "{every}"\n')
        gen_tree(c3.data("a"), 1000, 10, 0, 7)
        for n in ("a", "b", "c"):
            c3.start(n)
        c3.wait_in_sync("c", 1000, TIMEOUT)
        c3.wait_in_sync("b", 1000, TIMEOUT)
        wait_idle([c3.pid(n) for n in ("a", "b", "c")])
        used, pct = idle_cpu(["a", "b", "c"], c3, IDLE_S)
        st = c3.status("a")
        lv = next(g for g in st["groups"] if g["name"] == "g").get("last_verified", {})
        say(f"   verify_every = {every}: {used:.3f} CPU s over {IDLE_S:.0f} s for 3 daemons = "
            f"{pct:.4f} % of a core per daemon; a's last_verified: "
            + ", ".join(f"{p} {v.get('time')} matched={v.get('matched')}" for p, v in lv.items()))
        res[every] = (used, pct)
        c3.stop_all()
        S.remove()
    per = (res["1s"][0] - res["10m"][0]) / (3 * IDLE_S)
    say(f"   one comparison (equal groups of 1,000 files, both sides) costs about "
        f"{per * 1000:.2f} ms of CPU; at the default 10m that is {per / 600 * 100:.5f} % of a core "
        f"per pair")
    record("verify-idle", idle_s=IDLE_S, cpu_default=res["10m"][0], pct_default=res["10m"][1],
           cpu_1s=res["1s"][0], pct_1s=res["1s"][1], per_comparison_cpu_s=per, load=load_note())


SCEN = {"initial": scenario_initial, "oneshot": scenario_oneshot, "small": scenario_small,
        "delta": scenario_delta, "live": scenario_live, "delete": scenario_delete,
        "delta1": scenario_delta1, "mesh": scenario_mesh, "churn": scenario_churn, "scale": scenario_scale, "fanout": scenario_fanout, "wan": scenario_wan,
        "verify": scenario_verify, "profile": scenario_profile}
ALL = ["initial", "oneshot", "small", "delta", "delta1", "live", "delete", "fanout", "mesh", "churn", "wan",
       "scale", "verify"]


def main():
    args = sys.argv[1:] or ["all"]
    todo = []
    for a in args:
        if a == "all":
            todo += ALL
        elif a in SCEN:
            todo.append(a)
        else:
            sys.exit(f"bench: unknown scenario {a!r}; known: all {' '.join(SCEN)}")
    say(f"bench: clustersync {SHA} ({BIN}); scenarios {' '.join(todo)}; logs {KEEP}")
    drop_caches()
    say(f"bench: {load_note()}")
    record("meta", sha=SHA, bin=BIN, fs=FS, scenarios=todo, start=RUN_ID, load=load_note(),
           knobs={k: v for k, v in E.items() if k.startswith("BENCH_")})
    failed = []
    for s in todo:
        try:
            SCEN[s]()
        except Exception as e:  # noqa: BLE001 - report and go on with the next scenario
            import traceback
            traceback.print_exc()
            say(f"bench: scenario {s} FAILED: {e}")
            record(s, failed=str(e))
            failed.append(s)
            if s in ("initial",) or Pair.inst is not None and s in ("oneshot", "small", "delta", "delta1", "live", "delete"):
                # the pair may be in a bad state: start over for the next pair scenario
                try:
                    Pair.inst.cl.stop_all()
                except Exception:  # noqa: BLE001
                    pass
                Pair.inst = None
        if s in ("delete",) or s == todo[-1]:
            pass
    say(f"\nbench: done; {load_note()}; results in {KEEP}/results.jsonl")
    if failed:
        say(f"bench: FAILED scenarios: {' '.join(failed)}")
    return 1 if failed else 0


def cleanup():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
            except Exception:  # noqa: BLE001
                p.kill()
    for c in reversed(CLEANUPS):
        try:
            c()
        except Exception as e:  # noqa: BLE001
            say(f"bench: cleanup: {e}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        rc = main()
    finally:
        cleanup()
    sys.exit(rc)
