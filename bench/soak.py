#!/usr/bin/env python3
"""The soak: dropsync under load from real clients while its peers and itself are broken, then a
ledger check of everything the clients were told had arrived. Run through bench/soak.sh.

Tenants: alpha and gamma upload CSV batches (one or two recordings per call, bad rows, zips,
cut uploads), beta uploads sidecars (call.wav + call.json), all over SFTP from OpenSSH sftp,
paramiko and rclone; delta never uploads: dropsync polls its FTP server (pyftpdlib). Everything
is forwarded to `rclone serve s3`.

Faults: kill -9 of the daemon every --kill-every seconds (restarted at once, as systemd would);
the S3 server stopped for --s3-outage seconds twice; the FTP server killed while a download is in
flight; gamma's drop folder filled to its quota for a while (its uploads are refused, the others
go on).

A client counts a conversation as delivered only when every upload of it succeeded; one that
fails is retried whole, as a contact centre's script would. At the end, with no more faults:
every delivered conversation must be in S3 once, with identical bytes and a matching
metadata.json; every object in S3 must be a known version of a known file (nothing half-written);
every bad row must be in its report as rejected; nothing may be left ready, forwarding or failed.
"""
import argparse
import csv
import hashlib
import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config
import paramiko

logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # cut uploads make it complain
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "dropsync")
TIME = "2019-05-03T09:27:23Z"
DAY = "2019/05/03"
SFTP_TENANTS = ["alpha", "beta", "gamma"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wav(ms):
    """A WAV (8 kHz, 8-bit mono) of `ms` milliseconds of noise: real audio, distinct bytes."""
    data = os.urandom(ms * 8)
    return (b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt \x10\0\0\0\x01\0\x01\0"
            + (8000).to_bytes(4, "little") * 2 + b"\x01\0\x08\0data" + len(data).to_bytes(4, "little")
            + data)


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Ledger:
    """What the clients sent and were told, and what must therefore be in S3 and the reports."""

    def __init__(self):
        self.lock = threading.Lock()
        self.delivered = {}   # (tenant, id) -> {"agent", "files": {name: sha}}
        self.attempted = {}   # (tenant, id) -> same, every conversation any client started
        self.bad_rows = []    # (tenant, metadata file, id) delivered inside a delivered file
        self.versions = {}    # (tenant, file name) -> set of sha256 the clients ever completed
        self.counts = {"sessions": 0, "failed_sessions": 0, "cut_uploads": 0, "zips": 0,
                       "sidecars": 0, "bad_rows": 0, "quota_refusals": 0}
        self.deliveries = []  # (time, tenant, client kind) of each delivery

    def attempt(self, tenant, conv):
        with self.lock:
            self.attempted[(tenant, conv["id"])] = conv
            for name, data in conv["files"].items():
                self.versions.setdefault((tenant, name), set()).add(sha(data))

    def deliver(self, tenant, conv, kind, bad=()):
        with self.lock:
            if conv["files"]:  # a rejected sidecar delivers only its bad row
                self.delivered[(tenant, conv["id"])] = conv
            self.bad_rows.extend((tenant, conv["metadata_file"], b) for b in bad)
            self.deliveries.append((time.time(), tenant, kind))

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n


class Soak:
    def __init__(self, args):
        self.a = args
        self.w = args.workdir
        self.stop_load = threading.Event()
        self.ledger = Ledger()
        self.events = []
        self.samples = []  # (t, pid, rss_kib, fds, anon_kib)
        self.t0 = time.time()
        self.daemon = None
        self.s3 = None
        self.ftpd = None
        self.quota_window = None
        self.crashed = []
        self.sftp_port, self.s3_port, self.ftp_port = free_port(), free_port(), free_port()

    # ---------------------------------------------------------------- setup and processes
    def log(self, what):
        line = f"[{time.time() - self.t0:6.0f}s] {what}"
        self.events.append(line)
        print(line, flush=True)

    def setup(self):
        for d in ["state", "store/calls", "ftp-root", "clients", "keys"]:
            os.makedirs(os.path.join(self.w, d), exist_ok=True)
        for t in SFTP_TENANTS:
            key = os.path.join(self.w, "keys", t)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        for name, value in [("ak", "AKID"), ("sk", "SECRET"), ("ftp.pw", "secret"), ("rclone.conf", "")]:
            with open(os.path.join(self.w, name), "w") as f:
                f.write(value)
        with open(os.path.join(self.w, "dropsync.toml"), "w") as f:
            f.write(self.config())

    def config(self):
        q = self.a.gamma_quota_mib
        row_mapping = ('[tenants.mapping]\nconversation_id = "id"\nagent = "agent"\n'
                       'contact_time = "time"\nrecording = "recording"\n')
        tenants = ""
        for t in SFTP_TENANTS:
            tenants += f'[[tenants]]\nid = "{t}"\nauthorized_keys_file = "keys/{t}.pub"\n'
            if t == "gamma":
                tenants += f'quota = {{ bytes = "{q} MiB" }}\n'
            if t == "beta":  # sidecars: the metadata file's stem is the conversation
                tenants += '[tenants.mapping]\nagent = "agent"\ncontact_time = "time"\n'
            else:
                tenants += row_mapping
        tenants += (f'[[tenants]]\nid = "delta"\n{row_mapping}[[tenants.ftp]]\n'
                    f'url = "ftp://calls@127.0.0.1:{self.ftp_port}/"\npassword_file = "ftp.pw"\n'
                    'poll_interval = "3s"\nmin_age = "2s"\nafter_download = "delete"\ntimeout = "20s"\n')
        return f'''state_dir = "state"
[sftp]
listen = "127.0.0.1:{self.sftp_port}"
host_key = "state/ssh_host_ed25519_key"
max_sessions = 600
max_sessions_per_ip = 600
max_startups = 400
max_startups_per_source = 400
[sink]
type = "s3"
bucket = "calls"
prefix = "soak/"
endpoint = "http://127.0.0.1:{self.s3_port}"
path_style = true
access_key_id_file = "ak"
secret_access_key_file = "sk"
[matching]
grace = "1h"
[limits]
quota = {{ bytes = "4 GiB", files = 100000, sessions = 200 }}
[forwarding]
workers = 4
retry_min = "1s"
retry_max = "20s"
{tenants}'''

    def start_daemon(self):
        log = open(os.path.join(self.w, "daemon.log"), "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.daemon = subprocess.Popen([BIN, "run", "--config", os.path.join(self.w, "dropsync.toml")],
                                       stdout=log, stderr=log, env=env)

    def start_s3(self):
        log = open(os.path.join(self.w, "s3.log"), "ab")
        self.s3 = subprocess.Popen(["rclone", "serve", "s3", os.path.join(self.w, "store"),
                                    "--addr", f"127.0.0.1:{self.s3_port}", "--auth-key", "AKID,SECRET"],
                                   stdout=log, stderr=log)
        wait_port(self.s3_port)

    def start_ftpd(self):
        log = open(os.path.join(self.w, "ftpd.out"), "ab")
        self.ftpd = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/peers/ftpd.py"),
                                      "--root", os.path.join(self.w, "ftp-root"), "--port", str(self.ftp_port),
                                      "--throttle", str(self.a.ftp_throttle), "--log",
                                      os.path.join(self.w, "ftpd.log")], stdout=log, stderr=log)
        wait_port(self.ftp_port)

    def cli(self, *args):
        out = subprocess.run([BIN, *args, "--config", os.path.join(self.w, "dropsync.toml")],
                             capture_output=True, timeout=120)
        return out.stdout

    # ---------------------------------------------------------------- fault injection
    def faults(self):
        """kill -9 on a fixed beat, two S3 outages, an FTP kill mid-download, a full quota."""
        load = int(self.a.minutes * 60)
        plan = [(t, "kill") for t in range(self.a.kill_every, load, self.a.kill_every)]
        plan += [(load * 0.25, "s3"), (load * 0.7, "s3"), (load * 0.4, "ftp"), (load * 0.8, "ftp"),
                 (load * 0.35, "quota")]
        plan.sort()
        for at, what in plan:
            while time.time() - self.t0 < at:
                if self.stop_load.wait(0.2):
                    return
            threading.Thread(target=getattr(self, f"fault_{what}"), daemon=True).start()

    def fault_kill(self):
        pid = self.daemon.pid
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()
        self.log(f"kill -9 daemon (pid {pid}); restarting")
        self.start_daemon()

    def fault_s3(self):
        self.s3.send_signal(signal.SIGKILL)
        self.s3.wait()
        self.log(f"S3 server killed for {self.a.s3_outage} s")
        time.sleep(self.a.s3_outage)
        self.start_s3()
        self.log("S3 server back")

    def fault_ftp(self):
        """Kills the FTP server once a download is in flight (a RETR not yet completed)."""
        deadline, flying = time.time() + 60, set()
        while time.time() < deadline and not flying:
            lines = open(os.path.join(self.w, "ftpd.log")).read().split("\n")
            starts = [i for i, line in enumerate(lines) if "starting FTP server" in line]
            for line in lines[starts[-1] if starts else 0:]:  # this server's life only
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "RETR":
                    key = (parts[0], parts[2])
                    if parts[3].startswith("completed="):
                        flying.discard(key)
                    else:
                        flying.add(key)
            if not flying:
                time.sleep(0.05)
        self.ftpd.send_signal(signal.SIGKILL)
        self.ftpd.wait()
        names = sorted(os.path.basename(path) for _, path in flying)
        self.log(f"FTP server killed with {len(names)} downloads in flight {names[:3]}")
        time.sleep(5)
        self.start_ftpd()
        self.log("FTP server back")

    def fault_quota(self):
        """Fills gamma's drop folder to its quota with recordings no row names, keeps it full
        for a while, then removes them: gamma's uploads are refused meanwhile, not the others'."""
        names, refused = [], []

        def fill(sftp):
            name = f"filler-{len(names)}.wav"
            try:
                with sftp.open(name, "wb") as f:
                    f.set_pipelined(True)  # fast: the quota, not paramiko, should end it
                    f.write(wav(1000) + os.urandom(8 << 20))
            except IOError as e:
                if "quota" not in str(e):
                    raise
                refused.append(str(e))
                return True
            names.append(name)
            return False

        def empty(sftp):
            if names:
                try:
                    sftp.remove(names[-1])
                except FileNotFoundError:
                    pass
                names.pop()
            return not names

        self.as_gamma_until(fill)
        start = time.time()
        self.log(f"gamma's quota full after {len(names)} filler files: {refused[0]!r}")
        time.sleep(self.a.quota_hold)
        self.as_gamma_until(empty)
        self.quota_window = (start, time.time(), refused[0])
        self.log("gamma's filler files removed")

    def as_gamma_until(self, step):
        """Calls step(sftp) on a paramiko session of gamma until it returns True. A kill -9
        meanwhile cuts the session: it reconnects and goes on."""
        while True:
            try:
                t, sftp = self.paramiko_connect("gamma")
                try:
                    while not step(sftp):
                        pass
                    return
                finally:
                    t.close()
            except (OSError, EOFError, paramiko.SSHException):
                time.sleep(1)

    # ---------------------------------------------------------------- clients
    def paramiko_connect(self, tenant):
        t = paramiko.Transport(("127.0.0.1", self.sftp_port))
        t.banner_timeout = t.auth_timeout = 30
        t.connect(username=tenant, pkey=paramiko.Ed25519Key.from_private_key_file(
            os.path.join(self.w, "keys", tenant)))
        return t, paramiko.SFTPClient.from_transport(t)

    def client(self, n):
        try:
            self.client_loop(n)
        except Exception as e:  # a bug of the soak itself: it must not pass unnoticed
            self.crashed.append(f"client {n}: {e!r}")
            raise

    def client_loop(self, n):
        kind = ["paramiko", "openssh", "rclone"][n % 3]
        tenant = SFTP_TENANTS[(n // 3) % 3]
        rng = random.Random(n)
        scratch = os.path.join(self.w, "clients", str(n))
        os.makedirs(scratch, exist_ok=True)
        seq = 0
        while not self.stop_load.is_set():
            seq += 1
            conv, uploads, bad = self.make_conversation(tenant, f"{tenant[0]}{n}-{seq}", rng)
            self.ledger.attempt(tenant, conv)
            cut = rng.random() < 0.1
            while not self.stop_load.is_set():
                ok = self.upload(kind, tenant, uploads, scratch, cut)
                self.ledger.count("sessions")
                if ok:
                    self.ledger.deliver(tenant, conv, kind, bad)
                    break
                self.ledger.count("failed_sessions")
                cut = False
                time.sleep(rng.uniform(0.5, 2))
            time.sleep(rng.uniform(0, self.a.think))

    def make_conversation(self, tenant, cid, rng):
        """The conversation `cid` as the files a client uploads, in order."""
        recs = {f"{cid}-{i}.wav": wav(rng.choice([300, 1000, 4000, 15000])) for i in range(rng.choice([1, 1, 2]))}
        agent = f"agent-{cid}@{tenant}.example"
        if tenant == "beta":  # a sidecar per call
            cid = f"{cid}-1"
            recs = {f"{cid}.wav": next(iter(recs.values()))}
            meta_name = f"{cid}.json"
            bad = rng.random() < 0.05
            meta = json.dumps([{"agent": agent, "time": "soon" if bad else TIME, "note": "sidecar"}]).encode()
            self.ledger.count("sidecars")
            conv = {"id": cid, "agent": agent, "files": recs, "metadata_file": meta_name}
            if bad:
                self.ledger.count("bad_rows")
                conv = {**conv, "files": {}}
                return conv, list(recs.items()) + [(meta_name, meta)], [cid]
            return conv, list(recs.items()) + [(meta_name, meta)], []
        meta_name = f"{cid}.csv"
        rows = [["id", "agent", "time", "recording"], [cid, agent, TIME, ";".join(recs)]]
        bad = []
        if rng.random() < 0.1:
            bad = [f"{cid}-bad"]
            rows.append([bad[0], agent, "not a time", "nothing.wav"])
            self.ledger.count("bad_rows")
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        conv = {"id": cid, "agent": agent, "files": recs, "metadata_file": meta_name}
        uploads = list(recs.items()) + [(meta_name, text.getvalue().encode())]
        if rng.random() < 0.1:
            packed = io.BytesIO()
            with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in uploads:
                    z.writestr(name, data)
            self.ledger.count("zips")
            uploads = [(f"{cid}.zip", packed.getvalue())]
            conv["zip"] = f"{cid}.zip"
        return conv, uploads, bad

    def upload(self, kind, tenant, uploads, scratch, cut):
        try:
            if cut:
                self.cut_upload(kind, tenant, uploads[0], scratch)
            if kind == "paramiko":
                return self.upload_paramiko(tenant, uploads)
            for name, data in uploads:
                with open(os.path.join(scratch, name), "wb") as f:
                    f.write(data)
            if kind == "openssh":
                return self.run_client(self.openssh(tenant, uploads, scratch)).returncode == 0
            for name, _ in uploads:  # rclone: one session per file, in order
                if self.run_client(self.rclone(tenant, os.path.join(scratch, name), name)).returncode != 0:
                    return False
            return True
        except (OSError, EOFError, paramiko.SSHException, socket.error, subprocess.TimeoutExpired):
            return False
        finally:
            for name, _ in uploads:
                try:
                    os.remove(os.path.join(scratch, name))
                except FileNotFoundError:
                    pass

    def run_client(self, cmd):
        out = subprocess.run(cmd, capture_output=True, timeout=120)
        if out.returncode != 0 and b"quota" in out.stderr.lower() + out.stdout.lower():
            self.ledger.count("quota_refusals")
        return out

    def upload_paramiko(self, tenant, uploads):
        t, sftp = self.paramiko_connect(tenant)
        try:
            for name, data in uploads:
                try:
                    # putfo, not open/write/close: paramiko's SFTPFile.close() swallows a CLOSE
                    # that could not be sent or was refused, so a daemon killed right then would
                    # look like a success. putfo stats the file after CLOSE (confirm=True).
                    sftp.putfo(io.BytesIO(data), name, confirm=True)
                except IOError as e:
                    if "quota" in str(e).lower():
                        self.ledger.count("quota_refusals")
                    raise
            return True
        finally:
            t.close()

    def cut_upload(self, kind, tenant, upload, scratch):
        """Starts sending the first file and drops the connection halfway (paramiko), or kills
        the client process soon after it starts (sftp, rclone)."""
        name, data = upload
        self.ledger.count("cut_uploads")
        if kind == "paramiko":
            t, sftp = self.paramiko_connect(tenant)
            f = sftp.open(name, "wb")
            f.write(data[: len(data) // 2])
            t.sock.close()  # no CLOSE of the handle, no channel close: the TCP connection just ends
            t.close()
            return
        path = os.path.join(scratch, name)
        with open(path, "wb") as f:
            f.write(data)
        cmd = self.openssh(tenant, [upload], scratch) if kind == "openssh" else self.rclone(tenant, path, name)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(0.01, 0.3))
        p.kill()
        p.wait()

    def openssh(self, tenant, uploads, scratch):
        batch = os.path.join(scratch, "batch")
        with open(batch, "w") as f:
            f.writelines(f'put "{os.path.join(scratch, name)}" "{name}"\n' for name, _ in uploads)
        return ["sftp", "-q", "-b", batch, "-P", str(self.sftp_port), "-i", os.path.join(self.w, "keys", tenant),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
                f"{tenant}@127.0.0.1"]

    def rclone(self, tenant, path, name):
        remote = (f":sftp,host=127.0.0.1,port={self.sftp_port},user={tenant},"
                  f"key_file={os.path.join(self.w, 'keys', tenant)}:")
        return ["rclone", "copyto", "--config", os.path.join(self.w, "rclone.conf"), "--retries", "1",
                "--low-level-retries", "1", "--contimeout", "30s", "--timeout", "60s", path, remote + name]

    def ftp_feeder(self):
        """delta's calls appear on its FTP server: recordings first, then their CSV, each written
        under a dot name and renamed into place."""
        rng = random.Random(7)
        root = os.path.join(self.w, "ftp-root")
        seq = 0
        while not self.stop_load.is_set():
            seq += 1
            cid = f"d-{seq}"
            recs = {f"{cid}.wav": wav(rng.choice([60_000, 400_000, 800_000]))}  # past the throttle's burst
            meta = f"id,agent,time,recording\n{cid},agent-{cid}@delta.example,{TIME},{cid}.wav\n".encode()
            conv = {"id": cid, "agent": f"agent-{cid}@delta.example", "files": recs, "metadata_file": f"{cid}.csv"}
            self.ledger.attempt("delta", conv)
            for name, data in list(recs.items()) + [(f"{cid}.csv", meta)]:
                with open(os.path.join(root, f".{name}.tmp"), "wb") as f:
                    f.write(data)
                os.rename(os.path.join(root, f".{name}.tmp"), os.path.join(root, name))
            self.ledger.deliver("delta", conv, "ftp")
            time.sleep(self.a.ftp_every)

    # ---------------------------------------------------------------- watching
    def monitor(self):
        while not self.stop_monitor.is_set():
            pid = self.daemon.pid
            try:
                # VmRSS, and its anonymous part (the heap; the rest is mapped files: the binary,
                # the catalog's WAL index)
                kib = {l.split(":")[0]: int(l.split()[1]) for l in open(f"/proc/{pid}/status")
                       if l.startswith(("VmRSS:", "RssAnon:"))}
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                self.samples.append((time.time() - self.t0, pid, kib["VmRSS"], fds, kib["RssAnon"]))
            except (OSError, KeyError, ValueError):
                pass
            self.stop_monitor.wait(2)

    def status(self):
        try:
            return json.loads(self.cli("status", "--json") or b"{}")
        except (json.JSONDecodeError, subprocess.TimeoutExpired):
            return {}

    def s3_client(self):
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.s3_port}", aws_access_key_id="AKID",
                            aws_secret_access_key="SECRET", region_name="us-east-1",
                            config=botocore.config.Config(s3={"addressing_style": "path"},
                                                          max_pool_connections=16))

    def s3_objects(self, s3):
        keys, token = {}, None
        while True:
            page = s3.list_objects_v2(Bucket="calls", Prefix="soak/", **({"ContinuationToken": token} if token else {}))
            keys.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def drain(self):
        """Waits, with every fault over, until each delivered conversation's metadata.json is in S3."""
        s3 = self.s3_client()
        deadline = time.time() + self.a.drain_timeout
        while True:
            keys = self.s3_objects(s3)
            missing = [k for k in self.ledger.delivered if f"soak/{k[0]}/{DAY}/{k[1]}/metadata.json" not in keys]
            refused = [k for k in missing if self.zip_refused_for_quota(*k)]
            missing = [k for k in missing if k not in refused]
            if refused and not missing:
                self.ledger.count("quota_refusals", len(refused))
                self.log(f"drain: {len(refused)} delivered zip(s) refused at unpacking for the quota, "
                         f"as their reports say: {', '.join('/'.join(k) for k in refused[:5])}")
            if not missing or time.time() > deadline:
                self.log(f"drain: {len(self.ledger.delivered) - len(missing)} of {len(self.ledger.delivered)} "
                         "delivered conversations in S3")
                return keys, missing
            time.sleep(3)

    # ---------------------------------------------------------------- the ledger check
    def check(self, keys, missing):
        problems = []
        s3 = self.s3_client()
        problems += [f"lost: {t}/{c} was delivered but is not in S3" for t, c in missing[:20]]
        if len(missing) > 20:
            problems.append(f"... and {len(missing) - 20} more lost")
        folders = {}
        for key in keys:
            parts = key.split("/")
            if len(parts) != 7 or "/".join(parts[2:5]) != DAY:
                problems.append(f"unexpected key {key}")
                continue
            folders.setdefault((parts[1], parts[5]), set()).add(parts[6])

        def one(item):
            (tenant, cid), names = item
            out = []
            conv = self.ledger.attempted.get((tenant, cid))
            if conv is None:
                return [f"unknown conversation in S3: {tenant}/{cid}"]
            base = f"soak/{tenant}/{DAY}/{cid}/"
            if "metadata.json" not in names:
                return [f"recordings without metadata.json: {base}"] if (tenant, cid) in self.ledger.delivered else []
            doc = json.loads(s3.get_object(Bucket="calls", Key=base + "metadata.json")["Body"].read())
            want = {n: sha(d) for n, d in conv["files"].items()}
            got = {r["file"]: r["sha256"] for r in doc.get("recordings", [])}
            if got != want:
                out.append(f"{base}metadata.json lists {got}, the client sent {want}")
            if (doc.get("tenant"), doc.get("conversation_id"), doc.get("agent"), doc.get("contact_time")) != (
                    tenant, cid, conv["agent"], TIME):
                out.append(f"{base}metadata.json has the wrong fields: {doc}")
            if names - {"metadata.json"} != set(want):
                out.append(f"{base} holds {sorted(names)}, expected {sorted(want)} and metadata.json")
            for name in names - {"metadata.json"}:
                data = s3.get_object(Bucket="calls", Key=base + name)["Body"].read()
                if sha(data) not in self.ledger.versions.get((tenant, name), set()):
                    out.append(f"half-written or foreign bytes: {base}{name} ({len(data)} bytes)")
                elif name in want and sha(data) != want[name]:
                    out.append(f"{base}{name} is not the version metadata.json names")
            return out

        with ThreadPoolExecutor(8) as pool:
            for found in pool.map(one, folders.items()):
                problems += found
        started = time.time()
        while True:  # reports follow the catalog a little behind: a bounded wait, measured
            missing_reports = self.check_reports()
            if not missing_reports or time.time() - started > 120:
                break
            time.sleep(1)
        self.log(f"reports: {len(self.ledger.bad_rows) - len(missing_reports)} of {len(self.ledger.bad_rows)} "
                 f"bad rows in their reports {time.time() - started:.0f} s after the drain")
        problems += missing_reports
        status = self.status()
        for tenant, view in status.get("tenants", {}).items():
            stuck = {k: v for k, v in view.get("states", {}).items() if k in ("ready", "forwarding", "failed") and v}
            if stuck:
                problems.append(f"{tenant}: left {stuck} after the drain")
        return problems, folders, status

    def zip_refused_for_quota(self, tenant, cid):
        """A zip is taken in whole while its tenant's quota holds it; unpacked past the quota,
        nothing of it is (SPEC §8) and its report says so. Its conversations were never
        accepted, so they are not lost."""
        name = self.ledger.delivered[(tenant, cid)].get("zip")
        if not name:
            return False
        path = os.path.join(self.w, "state", "drop", tenant, "reports", f"{name}.report.csv")
        try:
            rows = list(csv.reader(open(path, newline="")))
        except FileNotFoundError:
            return False
        return any(len(r) > 4 and r[3] == "rejected" and "quota exceeded" in r[4] for r in rows[1:])

    def check_reports(self):
        problems = []
        for tenant, name, cid in self.ledger.bad_rows:
            path = os.path.join(self.w, "state", "drop", tenant, "reports", f"{name}.report.csv")
            try:
                rows = list(csv.reader(open(path, newline="")))
            except FileNotFoundError:
                problems.append(f"no report for {tenant}/{name} (bad row {cid})")
                continue
            if not any(r[1] == cid and r[3] == "rejected" and r[4] for r in rows[1:]):
                problems.append(f"bad row {cid} is not rejected with a reason in {tenant}/reports/{name}.report.csv")
        return problems

    # ---------------------------------------------------------------- the run
    def run(self):
        self.setup()
        self.start_s3()
        self.start_ftpd()
        self.start_daemon()
        wait_port(self.sftp_port)
        self.stop_monitor = threading.Event()
        threads = [threading.Thread(target=self.monitor, daemon=True),
                   threading.Thread(target=self.faults, daemon=True),
                   threading.Thread(target=self.ftp_feeder, daemon=True)]
        threads += [threading.Thread(target=self.client, args=(n,), daemon=True) for n in range(self.a.sessions)]
        self.log(f"load: {self.a.sessions} client sessions at once for {self.a.minutes} min; workdir {self.w}")
        for t in threads:
            t.start()
        next_report = 60
        while time.time() - self.t0 < self.a.minutes * 60:
            time.sleep(1)
            if time.time() - self.t0 >= next_report:
                next_report += 60
                self.progress()
        self.stop_load.set()
        self.log("load over; waiting for the clients to finish their last upload")
        for t in threads[3:]:
            t.join(timeout=180)
        while self.s3.poll() is not None or self.ftpd.poll() is not None:
            time.sleep(1)  # an outage still running: let it end
        keys, missing = self.drain()
        self.stop_monitor.set()
        problems, folders, status = self.check(keys, missing)
        return self.summary(problems, folders, status)

    def progress(self):
        last = self.samples[-1] if self.samples else (0, 0, 0, 0, 0)
        c = self.ledger.counts
        self.log(f"delivered {len(self.ledger.delivered)} conversations in {c['sessions']} sessions "
                 f"({c['failed_sessions']} failed and retried); daemon RSS {last[2] / 1024:.0f} MiB, {last[3]} fds")

    def memory_rule(self, problems, load_end):
        """A leak shows as a life of the daemon that ends fatter than an earlier life of the same
        length under the same load. So compare the peak anonymous RSS (the heap: mapped files
        follow the page cache) of the first and the last whole lives between kills; each starts
        cold, so start-up is in both. Without two whole lives (no kills), the two halves of the
        last 5 minutes stand in, which a short run's start-up can skew."""
        lives = {}
        for s in self.samples:
            if s[0] <= load_end:
                lives.setdefault(s[1], []).append(s)
        span = lambda xs: xs[-1][0] - xs[0][0]
        whole = [xs for xs in list(lives.values())[:-1] if self.a.kill_every and span(xs) >= 0.8 * self.a.kill_every]
        if len(whole) >= 2:
            base = whole[1] if len(whole) >= 3 else whole[0]
            first, last = max(s[4] for s in base), max(s[4] for s in whole[-1])
            which = "second" if len(whole) >= 3 else "first"
            where = (f"the {which} whole life (pid {base[0][1]}) and the last (pid {whole[-1][0][1]}), "
                     f"{len(whole)} in all")
        else:
            last5 = [s for s in self.samples if load_end - 300 <= s[0] <= load_end]
            halves = [[s[4] for s in last5 if s[0] < load_end - 150], [s[4] for s in last5 if s[0] >= load_end - 150]]
            first, last = (max(h) if h else 0 for h in halves)
            where = "the two halves of the last 5 minutes (no two whole lives between kills)"
        growth = last / first - 1 if first else 0
        print(f"anonymous RSS (KiB, peak): {first} and {last} in {where}: {growth * 100:+.1f} %")
        if growth > 0.10:
            problems.append(f"anonymous RSS grew {growth * 100:.1f} % between {where}")

    def summary(self, problems, folders, status):
        c = self.ledger.counts
        load_end = self.a.minutes * 60
        last5 = [s for s in self.samples if load_end - 300 <= s[0] <= load_end]
        halves = [[s for s in last5 if s[0] < load_end - 150], [s for s in last5 if s[0] >= load_end - 150]]
        print("\n== RSS and open file descriptors of the daemon, per minute (max) ==")
        print(" minute   RSS MiB   anon MiB   fds   pids")
        for m in range(0, int(max((s[0] for s in self.samples), default=0)) // 60 + 1):
            xs = [s for s in self.samples if m * 60 <= s[0] < (m + 1) * 60]
            if xs:
                print(f"  {m:5d}   {max(s[2] for s in xs) / 1024:7.1f}   {max(s[4] for s in xs) / 1024:8.1f}   "
                      f"{max(s[3] for s in xs):4d}   {len({s[1] for s in xs})}")
        with open(os.path.join(self.w, "samples.csv"), "w") as f:
            f.write("seconds,pid,rss_kib,fds,anon_kib\n")
            f.writelines(",".join(str(round(v) if i == 0 else v) for i, v in enumerate(s)) + "\n"
                         for s in self.samples)
        self.memory_rule(problems, load_end)
        # Descriptors follow the sessions open at the sampled moment, so a leak shows as a rising
        # middle: the median of each window.
        first, second = (median([s[3] for s in h]) if h else 0 for h in halves)
        growth = second / first - 1 if first else 0
        print(f"fds (median): {first} in minutes {(load_end - 300) / 60:.1f}-{(load_end - 150) / 60:.1f}, "
              f"{second} in the 2.5 minutes after: {growth * 100:+.1f} %")
        if growth > 0.10:
            problems.append(f"fds (median) grew {growth * 100:.1f} % over the last 5 minutes of load")
        per_tenant = {}
        for t, _ in self.ledger.delivered:
            per_tenant[t] = per_tenant.get(t, 0) + 1
        in_s3 = sum(1 for names in folders.values() if "metadata.json" in names)
        print("\n== Soak summary ==")
        print(f"load {self.a.minutes} min, {self.a.sessions} concurrent clients; faults: "
              f"{sum('kill -9' in e for e in self.events)} kill -9, {sum('S3 server killed' in e for e in self.events)} "
              f"S3 outages, {sum('FTP server killed' in e for e in self.events)} FTP kills "
              f"({sum('downloads in flight' in e and 'with 0 ' not in e for e in self.events)} mid-download), "
              f"{sum('quota full' in e for e in self.events)} full quota")
        print(f"sessions {c['sessions']} ({c['failed_sessions']} failed, retried), cut uploads {c['cut_uploads']}, "
              f"zips {c['zips']}, sidecars {c['sidecars']}, bad rows {c['bad_rows']} "
              f"({len(self.ledger.bad_rows)} delivered), quota refusals seen by clients {c['quota_refusals']}")
        print(f"delivered conversations per tenant: {per_tenant}; conversations in S3: {in_s3}")
        if self.quota_window and self.quota_window[0] > self.t0 + load_end:
            problems.append("gamma's quota filled only after the load: make the run longer")
        elif self.quota_window:
            a, b, why = self.quota_window
            during = {}
            for t, tenant, _ in self.ledger.deliveries:
                if a <= t <= b:
                    during[tenant] = during.get(tenant, 0) + 1
            print(f"while gamma's quota was full ({b - a:.0f} s, refused with {why!r}): deliveries {during}")
            if not during.get("alpha") or not during.get("beta"):
                problems.append(f"alpha or beta stalled while gamma's quota was full: {during}")
        else:
            problems.append("the quota fault did not run")
        problems += [f"soak client crashed: {c}" for c in self.crashed]
        kinds = {k: sum(1 for *_, x in self.ledger.deliveries if x == k) for k in ("paramiko", "openssh", "rclone")}
        print(f"delivered conversations per client: {kinds}")
        problems += [f"no conversation delivered by {k}" for k, v in kinds.items() if not v]
        panics = [l for l in open(os.path.join(self.w, "daemon.log"), errors="replace") if "panicked" in l]
        if panics:
            problems.append(f"{len(panics)} panics in daemon.log: {panics[0].strip()}")
        print(f"catalog after the drain: { {t: v.get('states') for t, v in status.get('tenants', {}).items()} }")
        print(f"\nproblems: {len(problems)}")
        for p in problems[:50]:
            print(f"  - {p}")
        return 1 if problems else 0

    def cleanup(self):
        for p in [self.daemon, self.s3, self.ftpd]:
            if p and p.poll() is None:
                p.kill()
                p.wait()


def median(xs):
    return sorted(xs)[len(xs) // 2]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--kill-every", type=int, default=90)
    p.add_argument("--s3-outage", type=int, default=30)
    p.add_argument("--quota-hold", type=int, default=45)
    p.add_argument("--gamma-quota-mib", type=int, default=256)
    p.add_argument("--ftp-throttle", type=int, default=1_000_000, help="bytes/s per FTP download")
    p.add_argument("--ftp-every", type=float, default=2.0, help="seconds between delta's calls")
    p.add_argument("--think", type=float, default=1.0, help="most seconds a client waits between calls")
    p.add_argument("--drain-timeout", type=int, default=600)
    p.add_argument("--workdir", required=True)
    soak = Soak(p.parse_args())
    try:
        code = soak.run()
    finally:
        soak.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
