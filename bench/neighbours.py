"""Driver for bench/neighbours.sh: a quiet tenant's latency while a noisy one sends.

The quiet tenant sends N one-recording conversations over one SFTP session (paramiko), one
after the other; each latency runs from the end of its metadata upload to its metadata.json
appearing in the dir sink (the conversation complete there). Meanwhile, the noisy tenant sends
one load over its own session:

  idle   nothing
  zip    a zip of ZIP_GIB GiB of zeros (small to send, long to unpack)
  files  FILES small recordings, as fast as one session sends them
  wide   a CSV with 150,000 columns (WIDE_ROWS rows)
  backlog  BACKLOG one-recording conversations (default 20,000) made ready at once: recordings
         written into the noisy drop folder (as an FTP backfill or a mount would), then one
         CSV naming them all, so the forwarders have a backlog of that tenant's

Prints one line per load: p50 and p99 in milliseconds, and whether the noisy load was still
being taken in (or, for the backlog, forwarded) when the quiet tenant's last conversation was
forwarded; and the catalog writer's hold p99 and max over the series, from /metrics (the
summary covers about the last minute).
"""

import io
import os
import sys
import threading
import time
import zipfile

import paramiko

PORT = int(os.environ["PORT"])
WORK = os.environ["WORK"]
OUTBOX = os.path.join(WORK, "var/outbox")
N = int(os.environ.get("N", "100"))
ZIP_GIB = float(os.environ.get("ZIP_GIB", "2"))
FILES = int(os.environ.get("FILES", "5000"))
WIDE_ROWS = int(os.environ.get("WIDE_ROWS", "300"))
BACKLOG = int(os.environ.get("BACKLOG", "20000"))
METRICS = os.environ.get("METRICS")
HEADER = "Contact Reference,Agent Email,Contact Date,Audio Filename"


def connect(tenant):
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.connect(username=tenant, pkey=paramiko.Ed25519Key.from_private_key_file(os.path.join(WORK, tenant + "_key")))
    return t, paramiko.SFTPClient.from_transport(t)


def wav(samples):
    """A WAV file (8 kHz, 8-bit mono PCM) around `samples`: intake reads its duration."""
    return (b"RIFF" + (36 + len(samples)).to_bytes(4, "little") + b"WAVEfmt \x10\0\0\0\x01\0\x01\0"
            + (8000).to_bytes(4, "little") + (8000).to_bytes(4, "little") + b"\x01\0\x08\0data"
            + len(samples).to_bytes(4, "little") + samples)


def row(cid, recording):
    return f"{cid},agent@example.com,2019-05-03T09:27:23Z,{recording}"


def quiet_run(sftp, tag, busy=lambda: False):
    """N conversations, one at a time; returns (latency in ms, noisy load busy at its end)."""
    audio = wav(os.urandom(4096))
    out = []
    for i in range(N):
        cid = f"Q-{tag}-{i:03d}"
        sftp.putfo(io.BytesIO(audio), f"{cid}.wav")
        sftp.putfo(io.BytesIO(f"{HEADER}\n{row(cid, cid + '.wav')}\n".encode()), f"{cid}.csv")
        t0 = time.monotonic()
        target = os.path.join(OUTBOX, "quiet/2019/05/03", cid, "metadata.json")
        while not os.path.exists(target):
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"{cid} not forwarded within 300 s")
            time.sleep(0.002)
        out.append(((time.monotonic() - t0) * 1000, busy()))
    return out


def percentile(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def make_zip(path, gib):
    chunk = bytes(1 << 20)
    entries = max(1, int(gib * 4))
    per_entry = int(gib * 1024 / entries)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for e in range(entries):
            with z.open(f"z{e}.wav", "w", force_zip64=True) as f:
                for _ in range(per_entry):
                    f.write(chunk)


def wide_csv():
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"

    def name(i):
        s = "k"
        while True:
            s += digits[i % 36]
            i //= 36
            if i == 0:
                return s

    cols = ",".join(name(i) for i in range(150_000))
    values = ",".join(["v"] * 150_000)
    body = [f"{HEADER},{cols}"]
    for i in range(WIDE_ROWS):
        body.append(f"{row(f'W-{i}', f'w{i}.wav')},{values}")
    return ("\n".join(body) + "\n").encode()


def noisy(load, sftp, staged):
    if load == "zip":
        sftp.put(staged["zip"], "big.zip")
    elif load == "files":
        data = os.urandom(2048)
        for i in range(FILES):
            sftp.putfo(io.BytesIO(data), f"n{i:05d}.wav")
    elif load == "wide":
        sftp.putfo(io.BytesIO(staged["wide"]), "wide.csv")
    elif load == "backlog":
        folder = os.path.join(WORK, "var/drop/noisy")
        audio = wav(os.urandom(2048))
        rows = [HEADER]
        for i in range(BACKLOG):
            with open(os.path.join(folder, f"b{i:05d}.wav"), "wb") as f:
                f.write(audio)
            rows.append(row(f"B-{i:05d}", f"b{i:05d}.wav"))
        tmp = os.path.join(folder, ".backlog.csv.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(rows) + "\n")
        os.rename(tmp, os.path.join(folder, "backlog.csv"))


def noisy_done(load):
    """Whether the noisy load has been taken in whole: its report written (the zip unpacked,
    the CSV read) and nothing of the noisy tenant left in the intake queue (the zip's entries
    and the small files hashed and recorded); for the backlog, every conversation forwarded."""
    if load == "backlog":
        return status("noisy").get("states", {}).get("forwarded", 0) >= BACKLOG
    reports = os.path.join(WORK, "var/drop/noisy/reports")
    report = {"zip": "big.zip.report.csv", "wide": "wide.csv.report.csv"}.get(load)
    if report and not os.path.exists(os.path.join(reports, report)):
        return False
    return intake_queued("noisy") == 0


def intake_queued(tenant):
    return status(tenant).get("intake_queued", 0)


def status(tenant):
    import json
    import subprocess

    out = subprocess.run(
        [os.environ["DROPSYNC"], "status", "--json", "--tenant", tenant, "--config", os.path.join(WORK, "dropsync.toml")],
        capture_output=True,
        text=True,
    )
    try:
        return json.loads(out.stdout)["tenants"][tenant]
    except (ValueError, KeyError):
        return {}


def writer_hold():
    """The catalog writer's hold and wait p99 and max (ms) over about the last minute, from
    /metrics: how long one holder kept it, and how long others waited for it."""
    if not METRICS:
        return ""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{METRICS}/metrics").read().decode()
    q = {}
    for line in body.splitlines():
        for kind in ("hold", "wait"):
            if line.startswith(f"dropsync_catalog_writer_{kind}_seconds{{"):
                label, value = line.rsplit(" ", 1)
                q[kind, label.split('quantile="')[1].split('"')[0]] = float(value) * 1000
    nan = float("nan")
    return "".join(
        f"  writer {kind} p99 {q.get((kind, '0.99'), nan):.1f} ms max {q.get((kind, '1'), nan):.1f} ms"
        for kind in ("hold", "wait")
    )


def main():
    loads = sys.argv[1:] or ["idle", "zip", "files", "wide", "backlog"]
    staged = {}
    if "zip" in loads:
        staged["zip"] = os.path.join(WORK, "big.zip")
        make_zip(staged["zip"], ZIP_GIB)
    if "wide" in loads:
        staged["wide"] = wide_csv()
    tq, quiet = connect("quiet")
    tn, loud = connect("noisy")
    quiet_run(quiet, "warm")  # warm-up, not counted
    for load in loads:
        th = threading.Thread(target=noisy, args=(load, loud, staged))
        th.start()
        if load == "backlog":
            th.join()  # the backlog is in place; the quiet tenant sends while it is forwarded
            while status("noisy").get("states", {}).get("ready", 0) < BACKLOG // 4 and not noisy_done(load):
                time.sleep(0.05)
        elif load != "idle":
            time.sleep(0.2)  # let the noisy load get going (the zip's upload is quick)

        def busy():
            return load != "idle" and (th.is_alive() or not noisy_done(load))

        runs = quiet_run(quiet, load, busy)
        th.join()
        lat = [ms for ms, _ in runs]
        during = [ms for ms, b in runs if b]
        overlap = f"{len(during)}/{len(runs)} while the noisy load was being taken in"
        if during and load != "idle":
            overlap += f" (their p99 {percentile(during, 99):.1f} ms)"
        print(
            f"{load:6s} p50 {percentile(lat, 50):8.1f} ms  p99 {percentile(lat, 99):8.1f} ms  "
            f"max {max(lat):8.1f} ms  {overlap}{writer_hold()}",
            flush=True,
        )
    tq.close()
    tn.close()


main()
