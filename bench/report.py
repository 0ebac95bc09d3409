#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""report.py OUTDIR: turn a bench/guest.sh run into results.json,
results.md and chart.png (gnuplot) in OUTDIR.

report.py --checks OUTDIR: print "ok|not ok<TAB>description" lines about
the harness itself (each contender ran, counters moved...), for run.sh's
TAP output.  Timings are never judged there.

Every figure is the median over the repetitions; the spread is the minimum
and maximum.  A ratio is taken within each repetition (the contenders of one
repetition ran back to back) and then summarised the same way.
"""
import json
import math
import os
import shlex
import statistics
import subprocess
import sys

CONTENDERS = ["linear", "snapN", "snapP", "fleece", "fleececopy", "fleecetrack", "era"]
NAMES = {"linear": "dm-linear", "snapN": "dm-snapshot N",
         "snapP": "dm-snapshot P", "fleece": "dm-fleece",
         "fleececopy": "dm-fleece, discard_policy copy",
         "fleecetrack": "dm-fleece, bitmap on metadata", "era": "dm-era"}
SECTOR = 512


# ---- input --------------------------------------------------------------------

def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" not in line:
                continue
            k, v = line.split("=", 1)
            parts = shlex.split(v)
            env[k] = parts[0] if parts else ""
    return env


def load_fio(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    i = text.find("{")
    if i < 0:
        return None
    try:
        return json.loads(text[i:])
    except ValueError:
        return None


def pct(d, p):
    try:
        return d["clat_ns"]["percentile"][p] / 1000.0
    except (KeyError, TypeError):
        return None


def job_by_name(fio, name):
    for j in fio.get("jobs", []):
        if j.get("jobname") == name:
            return j
    return fio["jobs"][0] if fio.get("jobs") else None


def run_metrics(r, fio):
    """Metrics of one run, by name; values in IOPS, MB/s, or microseconds."""
    m = {}
    if not fio or not fio.get("jobs"):
        return m
    w, kind = r["workload"], r["kind"]
    if w == "viewread":
        rd = job_by_name(fio, "reader")
        m["read_mbs"] = rd["read"]["bw_bytes"] / 1e6
        m["read_bytes"] = rd["read"]["io_bytes"]
        if kind == "loaded":
            wr = job_by_name(fio, "writer")
            if wr is not None and wr is not rd:
                m["writer_iops"] = wr["write"]["iops"]
        return m
    j = fio["jobs"][0]
    if w == "discard":
        m["trim_mbs"] = j["trim"]["bw_bytes"] / 1e6
        m["trim_bytes"] = j["trim"]["io_bytes"]
        st = r.get("parsed_status") or {}
        if "slots_used" in st:
            m["slots_used"] = st["slots_used"]
        return m
    if kind == "randread-qd32":
        m["iops"] = j["read"]["iops"]
        m["read_bytes"] = j["read"]["io_bytes"]
        return m
    wr = j["write"]
    m["write_bytes"] = wr["io_bytes"]
    m["write_ios"] = wr["total_ios"]
    m["iops"] = wr["iops"]
    m["write_mbs"] = wr["bw_bytes"] / 1e6
    if kind in ("lat-qd1", "randwrite-qd1", "firstgen-qd1", "firstgen-qd32") or \
            kind.startswith("lat-qd1-"):
        m["p50_us"] = pct(wr, "50.000000")
        m["p99_us"] = pct(wr, "99.000000")
    return m


def parse_status(status):
    """fleece: chunks copied; dm-snapshot: chunks used (from sectors)."""
    f = status.split()
    if not f:
        return None
    if f[0] in ("fleece-view", "fleece") and len(f) >= 11:
        try:
            return {"state": f[1], "copied": int(f[4]),
                    "slots_used": int(f[6].split("/")[0]), "error": f[10]}
        except ValueError:
            return None
    if f[0] == "snapshot" and len(f) >= 2:
        if "/" in f[1] and len(f) >= 3:
            used, _total = f[1].split("/")
            return {"state": "valid", "used_sectors": int(used),
                    "metadata_sectors": int(f[2])}
        return {"state": f[1].lower()}
    return None


def copy_counts(r):
    """Chunks the snapshot copied during a first-write run (from its status)
    and the chunks the run wrote to (each needs exactly one copy)."""
    st, m = r["parsed_status"], r["metrics"]
    if r["workload"] not in ("firstwrite", "firstwrite-seq") or not st or not m:
        return None, None
    if "copied" in st:
        copied = st["copied"]
    elif "used_sectors" in st:
        copied = (st["used_sectors"] - st["metadata_sectors"]) // (r["chunk_kb"] * 2)
    else:
        return None, None
    if r["workload"] == "firstwrite":
        expected = m.get("write_ios")
    else:
        expected = -(-m.get("write_bytes", 0) // (r["chunk_kb"] * 1024))
    return copied, expected


def read_runs(out):
    runs = []
    path = os.path.join(out, "runs.tsv")
    if not os.path.exists(path):
        return runs
    with open(path) as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            if len(c) < 13:
                continue
            r = {"mode": c[0], "workload": c[1], "contender": c[2],
                 "chunk_kb": int(c[3]), "rep": int(c[4]), "kind": c[5],
                 "fio": c[6], "rc": int(c[7]),
                 "sectors": {"origin_read": int(c[8]), "origin_write": int(c[9]),
                             "exception_read": int(c[10]),
                             "exception_write": int(c[11])},
                 "status": c[12]}
            fio = load_fio(os.path.join(out, c[6])) if c[6] != "-" else None
            r["parsed_status"] = parse_status(c[12])
            r["metrics"] = run_metrics(r, fio) if r["rc"] == 0 else {}
            r["ok"] = r["rc"] == 0 and bool(r["metrics"])
            r["chunks_copied"], r["chunks_expected"] = copy_counts(r)
            runs.append(r)
    return runs


def kv(text):
    d = {}
    for tok in text.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                d[k] = int(v)
            except ValueError:
                pass
    return d


def used_kb(m):
    """Memory in use outside the page cache, counting per-cpu free pages as free."""
    free = m.get("FreeBuddy", m.get("MemFree", 0)) + m.get("FreePcp", 0)
    return m["MemTotal"] - free - m.get("Buffers", 0) - m.get("Cached", 0)


def status_chunks(status, ckb):
    st = parse_status(status)
    if st and "copied" in st:
        return st["copied"]
    if st and "used_sectors" in st:
        return (st["used_sectors"] - st["metadata_sectors"]) // (ckb * 2)
    return None


def read_memory(out):
    """mem.tsv: mode contender chunk_kb rep seq_mb origin_sectors, then the
    meminfo phases base, setup, random, sequential, removed, then the status
    lines after the random and after the sequential writes."""
    rows = []
    path = os.path.join(out, "mem.tsv")
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            if len(c) < 13:
                continue
            phases = {}
            for cell in c[6:11]:
                name, _, rest = cell.partition(" ")
                phases[name] = kv(rest)
            ckb = int(c[2])
            rows.append({"mode": c[0], "contender": c[1], "chunk_kb": ckb,
                         "rep": int(c[3]), "sequential_mb": int(c[4]),
                         "origin_chunks": int(c[5]) // (ckb * 2),
                         "chunks_random": status_chunks(c[11], ckb),
                         "chunks_total": status_chunks(c[12], ckb),
                         "phases": phases, "status_random": c[11], "status_sequential": c[12]})
    return rows


# ---- arithmetic -------------------------------------------------------------------

def summary(values):
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v),
            "values": v}


# (id, workload, kind, metric, label, unit, better)
MEASURES = [
    ("passthrough-randwrite-iops", "passthrough", "randwrite-qd32", "iops",
     "no snapshot: 4K randwrite QD32", "IOPS", "higher"),
    ("passthrough-randread-iops", "passthrough", "randread-qd32", "iops",
     "no snapshot: 4K randread QD32", "IOPS", "higher"),
    ("passthrough-randwrite-p50", "passthrough", "randwrite-qd1", "p50_us",
     "no snapshot: 4K randwrite QD1 p50", "us", "lower"),
    ("passthrough-seqwrite-bw", "passthrough", "seqwrite-1m", "write_mbs",
     "no snapshot: 1M seq write", "MB/s", "higher"),
    ("firstwrite-iops", "firstwrite", "iops-qd32", "iops",
     "first write 4K rand QD32", "IOPS", "higher"),
    ("firstwrite-p50", "firstwrite", "lat-qd1", "p50_us",
     "first write 4K rand QD1 p50", "us", "lower"),
    ("firstwrite-p99", "firstwrite", "lat-qd1", "p99_us",
     "first write 4K rand QD1 p99", "us", "lower"),
    ("firstwrite-seq-bw", "firstwrite-seq", "seqwrite-1m", "write_mbs",
     "first write 1M seq", "MB/s", "higher"),
    ("steady-iops", "steady", "iops-qd32", "iops",
     "steady 4K rand QD32", "IOPS", "higher"),
    ("steady-p50", "steady", "lat-qd1", "p50_us",
     "steady 4K rand QD1 p50", "us", "lower"),
    ("steady-p99", "steady", "lat-qd1", "p99_us",
     "steady 4K rand QD1 p99", "us", "lower"),
    ("viewread-idle", "viewread", "idle", "read_mbs",
     "image 1M seq read, idle", "MB/s", "higher"),
    ("viewread-loaded", "viewread", "loaded", "read_mbs",
     "image 1M seq read, origin 4K randwrite", "MB/s", "higher"),
    ("viewread-loaded-writer", "viewread", "loaded", "writer_iops",
     "origin 4K randwrite during image read", "IOPS", "higher"),
    ("release-idle-p99", "release", "lat-qd1-idle", "p99_us",
     "first write 4K rand QD1 p99, no release", "us", "lower"),
    ("release-busy-p99", "release", "lat-qd1-releasing", "p99_us",
     "first write 4K rand QD1 p99, whole-device release running", "us", "lower"),
    ("discard-bw", "discard", "trim-1m", "trim_mbs",
     "discard of the whole device during a snapshot, 1M trims", "MB/s", "higher"),
    ("discard-slots", "discard", "trim-1m", "slots_used",
     "exception slots that discard cost", "slots", "lower"),
    ("tracking-dirty-iops", "tracking", "dirty-qd32", "iops",
     "tracked 4K rand QD32, blocks already dirty", "IOPS", "higher"),
    ("tracking-firstgen-iops", "tracking", "firstgen-qd32", "iops",
     "first write per tracking block, 4K QD32", "IOPS", "higher"),
    ("tracking-firstgen-p50", "tracking", "firstgen-qd32", "p50_us",
     "first write per tracking block, 4K QD32 p50", "us", "lower"),
    ("tracking-firstgen-qd1-p50", "tracking", "firstgen-qd1", "p50_us",
     "first write per tracking block, 4K QD1 p50", "us", "lower"),
]


def aggregate(runs):
    """One entry per (mode, measure, chunk): per contender summaries, ratios."""
    table = []
    keys = sorted({(r["mode"], r["workload"], r["kind"], r["chunk_kb"]) for r in runs if r["ok"]})
    for mid, w, kind, metric, label, unit, better in MEASURES:
        for mode in ["mem", "ssd"]:
            chunks = sorted({k[3] for k in keys if k[0] == mode and k[1] == w and k[2] == kind})
            for ckb in chunks:
                per = {}
                by_rep = {}
                for r in runs:
                    if (r["ok"] and r["mode"] == mode and r["workload"] == w and
                            r["kind"] == kind and r["chunk_kb"] == ckb):
                        val = r["metrics"].get(metric)
                        if val is None:
                            continue
                        per.setdefault(r["contender"], []).append(val)
                        by_rep.setdefault(r["rep"], {})[r["contender"]] = val
                if not per:
                    continue
                entry = {"id": mid, "mode": mode, "workload": w, "kind": kind,
                         "metric": metric, "label": label, "unit": unit, "better": better,
                         "chunk_kb": ckb,
                         "contenders": {c: summary(v) for c, v in per.items()},
                         "ratios": {}}
                for a, b in [("fleece", "linear"), ("fleece", "snapN"), ("fleece", "snapP"),
                             ("snapN", "linear"), ("snapP", "linear"),
                             ("fleece", "fleececopy"), ("fleecetrack", "fleece"),
                             ("fleecetrack", "era")]:
                    vals = [rep[a] / rep[b] for rep in by_rep.values()
                            if a in rep and b in rep and rep[b]]
                    s = summary(vals)
                    if s:
                        entry["ratios"]["%s/%s" % (a, b)] = s
                table.append(entry)
    return table


def bytes_moved(runs):
    """Bytes on both devices per byte the workload wrote, against the ideal
    (2C+W)/W of a copy-before-write (read C, write C, write W)."""
    out = []
    groups = {}
    for r in runs:
        if not r["ok"] or r["workload"] not in ("firstwrite", "firstwrite-seq"):
            continue
        if r["kind"] not in ("iops-qd32", "seqwrite-1m"):
            continue
        wb = r["metrics"].get("write_bytes")
        if not wb:
            continue
        s = r["sectors"]
        chunk = r["chunk_kb"] * 1024
        if r["workload"] == "firstwrite":
            touched = r["metrics"]["write_ios"]		# one write per chunk
        else:
            touched = -(-wb // chunk)
        ideal = 1.0 if r["contender"] == "linear" else (2.0 * chunk * touched + wb) / wb
        moved = sum(s.values()) * SECTOR
        g = groups.setdefault((r["mode"], r["workload"], r["chunk_kb"], r["contender"]), [])
        g.append({"measured": moved / wb, "ideal": ideal, "ratio": moved / wb / ideal,
                  "origin_read": s["origin_read"] * SECTOR / wb,
                  "origin_write": s["origin_write"] * SECTOR / wb,
                  "exception_read": s["exception_read"] * SECTOR / wb,
                  "exception_write": s["exception_write"] * SECTOR / wb})
    for (mode, w, ckb, c), g in sorted(groups.items()):
        e = {"mode": mode, "workload": w, "chunk_kb": ckb, "contender": c,
             "ideal": statistics.median(x["ideal"] for x in g)}
        for k in ("measured", "ratio", "origin_read", "origin_write", "exception_read",
                  "exception_write"):
            e[k] = summary([x[k] for x in g])
        out.append(e)
    return out


def memory(rows):
    per = {}
    for row in rows:
        ph = row["phases"]
        if not all(p in ph for p in ("base", "setup", "random", "sequential", "removed")):
            continue
        nr, nt = row["chunks_random"], row["chunks_total"]
        if not nr or not nt or nt <= nr:
            continue
        u = {k: used_kb(v) for k, v in ph.items()}
        d = {
            "random_per_chunk": (u["random"] - u["setup"]) * 1024.0 / nr,
            "sequential_per_chunk": (u["sequential"] - u["random"]) * 1024.0 / (nt - nr),
            "used_per_chunk": (u["sequential"] - u["setup"]) * 1024.0 / nt,
            "slab_per_chunk": (ph["sequential"]["Slab"] - ph["setup"]["Slab"]) * 1024.0 / nt,
            "vmalloc_per_chunk": (ph["sequential"]["VmallocUsed"] -
                                  ph["setup"]["VmallocUsed"]) * 1024.0 / nt,
            "setup_kb": u["setup"] - u["base"],
            "setup_per_origin_chunk": (u["setup"] - u["base"]) * 1024.0 / row["origin_chunks"],
            "left_after_removal_kb": u["removed"] - u["base"],
            "chunks_random": nr,
            "chunks_sequential": nt - nr,
            "chunks_copied": nt,
        }
        per.setdefault((row["mode"], row["contender"], row["chunk_kb"]), []).append(d)
    out = []
    for (mode, c, ckb), ds in sorted(per.items()):
        e = {"mode": mode, "contender": c, "chunk_kb": ckb}
        for k in ds[0]:
            e[k] = summary([d[k] for d in ds])
        out.append(e)
    return out


def find(table, mid, mode="mem", chunk=None):
    for e in table:
        if e["id"] == mid and e["mode"] == mode and (chunk is None or e["chunk_kb"] == chunk):
            return e
    return None


def targets(table, mem, env):
    dchunk = int(env.get("DEFAULT_CHUNK", "8")) // 2
    res = []

    def ratio_target(name, mid, ratio, op, goal, chunk=None):
        e = find(table, mid, chunk=chunk)
        s = e["ratios"].get(ratio) if e else None
        if not s:
            res.append({"target": name, "goal": "%s %.2fx" % (op, goal), "value": None,
                        "verdict": "no data"})
            return
        v = s["median"]
        met = v >= goal if op == ">=" else v <= goal
        res.append({"target": name, "goal": "%s %.2fx" % (op, goal), "measure": mid,
                    "chunk_kb": e["chunk_kb"], "ratio": ratio, "value": v,
                    "min": s["min"], "max": s["max"], "verdict": "met" if met else "MISSED"})

    ratio_target("pass-through (4K randwrite QD32 IOPS)", "passthrough-randwrite-iops",
                 "fleece/linear", ">=", 0.97)
    ratio_target("steady state (4K randwrite QD32 IOPS)", "steady-iops",
                 "fleece/linear", ">=", 0.95)
    ratio_target("first-write 4K random, 4K chunks, IOPS", "firstwrite-iops",
                 "fleece/snapN", ">=", 1.5, chunk=4)
    ratio_target("first-write p50 latency (4K chunks)", "firstwrite-p50",
                 "fleece/snapN", "<=", 0.7, chunk=4)
    ratio_target("view sequential read (idle)", "viewread-idle",
                 "fleece/linear", ">=", 0.9, chunk=dchunk)
    ratio_target("view sequential read (origin under 4K random writes)", "viewread-loaded",
                 "fleece/linear", ">=", 0.9, chunk=dchunk)
    # dm-fleece against itself: no other contender has a release.
    busy, idle = find(table, "release-busy-p99"), find(table, "release-idle-p99")
    if busy and idle and "fleece" in busy["contenders"] and "fleece" in idle["contenders"]:
        b, i = busy["contenders"]["fleece"], idle["contenders"]["fleece"]
        v = b["median"] / i["median"] if i["median"] else float("inf")
        res.append({"target": "first-write p99 during a whole-device release",
                    "goal": "<= 2.00x", "measure": "release-busy-p99",
                    "chunk_kb": busy["chunk_kb"], "ratio": "releasing/no release",
                    "value": v, "min": b["min"] / i["max"] if i["max"] else v,
                    "max": b["max"] / i["min"] if i["min"] else v,
                    "verdict": "met" if v <= 2.0 else "MISSED"})
    # An fstrim during a backup: discard_policy defer spends no slot.
    e = find(table, "discard-slots", chunk=dchunk)
    if e and "fleece" in e["contenders"]:
        s = e["contenders"]["fleece"]
        res.append({"target": "discard during a snapshot: exception slots used",
                    "goal": "== 0", "measure": "discard-slots", "chunk_kb": e["chunk_kb"],
                    "value": s["median"], "min": s["min"], "max": s["max"], "unit": "slots",
                    "verdict": "met" if s["max"] == 0 else "MISSED"})
    else:
        res.append({"target": "discard during a snapshot: exception slots used",
                    "goal": "== 0", "value": None, "verdict": "no data"})
    ratio_target("discard during a snapshot, MB/s against linear", "discard-bw",
                 "fleece/linear", ">=", 0.9, chunk=dchunk)
    ratio_target("tracked writes to dirty blocks (4K QD32 IOPS)", "tracking-dirty-iops",
                 "fleecetrack/fleece", ">=", 0.97)
    ratio_target("first writes per generation (4K QD32 IOPS)", "tracking-firstgen-iops",
                 "fleecetrack/era", ">=", 1.5)
    ratio_target("first writes per generation (4K QD32 p50)", "tracking-firstgen-p50",
                 "fleecetrack/era", "<=", 0.7)
    m = [e for e in mem if e["contender"] == "fleece" and e["mode"] == "mem"]
    if m and m[0]["used_per_chunk"]:
        s = m[0]["used_per_chunk"]
        res.append({"target": "memory per copied chunk", "goal": "<= 16 bytes",
                    "value": s["median"], "min": s["min"], "max": s["max"],
                    "chunk_kb": m[0]["chunk_kb"], "unit": "bytes",
                    "verdict": "met" if s["median"] <= 16 else "MISSED"})
    else:
        res.append({"target": "memory per copied chunk", "goal": "<= 16 bytes",
                    "value": None, "verdict": "no data"})
    return res


# ---- output ---------------------------------------------------------------------

def fmt_num(v, unit=""):
    if v is None:
        return "-"
    if unit == "us" or abs(v) < 10:
        s = "%.1f" % v if abs(v) >= 1 or unit == "us" else "%.3g" % v
    else:
        s = "%.0f" % v
    return s


def fmt_sum(s, unit=""):
    if not s:
        return "-"
    return "%s (%s–%s)" % (fmt_num(s["median"], unit), fmt_num(s["min"], unit),
                           fmt_num(s["max"], unit))


def fmt_ratio(s):
    if not s:
        return "-"
    return "**%.2f** (%.2f–%.2f)" % (s["median"], s["min"], s["max"])


def chunk_label(ckb):
    return "%dM" % (ckb // 1024) if ckb >= 1024 and ckb % 1024 == 0 else "%dK" % ckb


def markdown(env, meta, table, moved, mem, tg, runs):
    def discard_unsupported(mode):
        try:
            with open(os.path.join(meta.get("out", ""), "discard-unsupported")) as f:
                return any(l.split()[:2] == [mode, "snapN"] for l in f)
        except OSError:
            return False

    L = []
    quick = env.get("QUICK") == "1"
    L.append("# dm-fleece benchmark: %s" % env.get("kver", "?"))
    L.append("")
    if quick:
        L.append("**QUICK run: a harness check; these numbers mean nothing.**")
        L.append("")
    L.append("Module: %s." % env.get("SOURCE", "?"))
    L.append("")
    L.append("One QEMU TCG guest (%s), %s repetition(s) of %s s per run, contenders "
             "interleaved within each repetition.  Devices: null_blk memory_backed=1, origin "
             "%s MiB and exception %s MiB, prefilled; mode `mem` completes at once, mode `ssd` "
             "adds %s us per I/O (irqmode=2).  Figures: median (min–max) over the "
             "repetitions; a ratio is computed per repetition, then summarised.  Only ratios "
             "mean anything: TCG makes every absolute figure slow."
             % (meta.get("guest", "?"), env.get("REPS"), env.get("RUNTIME"),
                env.get("ORIGIN_MB"), env.get("EXC_MB"),
                int(env.get("SSD_NSEC", "0")) // 1000))
    L.append("")
    load = meta.get("host_load")
    if load:
        L.append("Host load average while the guest ran: mean %.1f, max %.1f, on %d CPUs%s."
                 % (load["mean"], load["max"], load["cpus"],
                    "; above the CPU count, other guests preempted this one and QD1 "
                    "latencies (and the IOPS of QD1 runs) carry multi-millisecond stalls"
                    if load["mean"] > load["cpus"] else ""))
        L.append("")
    nok = sum(1 for r in runs if r["ok"])
    L.append("%d runs, %d failed or unparsed." % (nok, len(runs) - nok))
    L.append("")

    L.append("## Targets (mode mem)")
    L.append("")
    L.append("| target | goal | measured | verdict |")
    L.append("|---|---|---|---|")
    for t in tg:
        if t["value"] is None:
            val = "-"
        elif t.get("unit") == "bytes":
            val = "%.1f B (%.1f–%.1f), %s chunks" % (t["value"], t["min"], t["max"],
                                                     chunk_label(t["chunk_kb"]))
        elif t.get("unit") == "slots":
            val = "%d slots (%d–%d), %s chunks" % (t["value"], t["min"], t["max"],
                                                  chunk_label(t["chunk_kb"]))
        else:
            val = "%.2fx %s (%.2f–%.2f), %s chunks" % (
                t["value"], t["ratio"].replace("fleece", "dm-fleece")
                .replace("snapN", "dm-snapshot N").replace("linear", "dm-linear"),
                t["min"], t["max"], chunk_label(t["chunk_kb"]))
        L.append("| %s | %s | %s | %s |" % (t["target"], t["goal"], val, t["verdict"]))
    L.append("")

    for mode in ["mem", "ssd"]:
        rows = [e for e in table if e["mode"] == mode]
        if not rows:
            continue
        L.append("## Throughput and latency, mode %s" % mode)
        L.append("")
        L.append("Ratios are dm-fleece ÷ the other (for latency lower is better; for "
                 "everything else higher is better).")
        L.append("")
        L.append("| measure | chunk | unit | dm-linear | dm-snapshot N | dm-snapshot P | "
                 "dm-fleece | fleece ÷ linear | fleece ÷ snap N | fleece ÷ snap P |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for e in rows:
            c = e["contenders"]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                e["label"], chunk_label(e["chunk_kb"]), e["unit"],
                fmt_sum(c.get("linear"), e["unit"]), fmt_sum(c.get("snapN"), e["unit"]),
                fmt_sum(c.get("snapP"), e["unit"]), fmt_sum(c.get("fleece"), e["unit"]),
                fmt_ratio(e["ratios"].get("fleece/linear")),
                fmt_ratio(e["ratios"].get("fleece/snapN")),
                fmt_ratio(e["ratios"].get("fleece/snapP"))))
        L.append("")
        copy_rows = [e for e in rows if "fleececopy" in e["contenders"]]
        if copy_rows:
            L.append("Origin discards during a snapshot: dm-snapshot's snapshot-origin "
                     "takes none at all%s; dm-fleece holds them back (discard_policy "
                     "defer) or copies first (copy):" % (
                         " (it refused them in this run)" if discard_unsupported(mode)
                         else ""))
            L.append("")
            L.append("| measure | chunk | defer | copy | defer ÷ copy |")
            L.append("|---|---|---|---|---|")
            for e in copy_rows:
                c = e["contenders"]
                L.append("| %s | %s | %s | %s | %s |" % (
                    e["label"], chunk_label(e["chunk_kb"]), fmt_sum(c.get("fleece"), e["unit"]),
                    fmt_sum(c.get("fleececopy"), e["unit"]),
                    fmt_ratio(e["ratios"].get("fleece/fleececopy"))))
            L.append("")
        snap_rows = [e for e in rows if "snapN/linear" in e["ratios"]]
        if snap_rows:
            L.append("dm-snapshot against dm-linear, for scale:")
            L.append("")
            L.append("| measure | chunk | snap N ÷ linear | snap P ÷ linear |")
            L.append("|---|---|---|---|")
            for e in snap_rows:
                L.append("| %s | %s | %s | %s |" % (
                    e["label"], chunk_label(e["chunk_kb"]),
                    fmt_ratio(e["ratios"].get("snapN/linear")),
                    fmt_ratio(e["ratios"].get("snapP/linear"))))
            L.append("")

    if moved:
        L.append("## Bytes moved per byte written (first writes)")
        L.append("")
        L.append("All I/O on the origin and exception null_blk devices (/sys/block/*/stat) "
                 "divided by the bytes fio wrote.  Ideal for a copy-before-write: (2C+W)/W "
                 "per first write of W bytes to a chunk of C bytes (read C, write C, write "
                 "W); 1 for dm-linear.")
        L.append("")
        L.append("| mode | workload | chunk | contender | measured | ideal | measured ÷ ideal "
                 "| origin rd | origin wr | exception rd | exception wr |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for e in moved:
            L.append("| %s | %s | %s | %s | %s | %.1f | %s | %.2f | %.2f | %.2f | %.2f |" % (
                e["mode"], "4K random" if e["workload"] == "firstwrite" else "1M sequential",
                chunk_label(e["chunk_kb"]), NAMES.get(e["contender"], e["contender"]),
                fmt_num(e["measured"]["median"]), e["ideal"],
                fmt_ratio(e["ratio"]).replace("**", ""),
                e["origin_read"]["median"], e["origin_write"]["median"],
                e["exception_read"]["median"], e["exception_write"]["median"]))
        L.append("")

    if mem:
        L.append("## Kernel memory per copied chunk")
        L.append("")
        L.append("Memory in use (MemTotal − free pages, buddy and per-cpu lists − Buffers − "
                 "Cached, after dropping caches: slab, vmalloc and pages alike) on a freshly "
                 "started snapshot, after 4K writes to %s chunks in random order, then after "
                 "1M sequential writes over %s MiB more: bytes per chunk copied in each "
                 "phase, and over both (*all*, with its slab and vmalloc parts).  dm-snapshot "
                 "merges runs of consecutive exceptions into one entry, hence its low "
                 "sequential figure.  *setup*: what starting the snapshot took, per origin "
                 "chunk; *left*: what removing it did not give back (±100s of KiB is noise)."
                 % (env.get("MEM_RAND_CHUNKS"), env.get("MEM_MB")))
        L.append("")
        L.append("| contender | chunk | chunks copied | random, B/chunk | sequential, B/chunk "
                 "| all, B/chunk | slab | vmalloc | setup, B/origin chunk | left, KiB |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for e in mem:
            L.append("| %s | %s | %d + %d | %s | %s | %s | %s | %s | %s | %s |" % (
                NAMES.get(e["contender"], e["contender"]), chunk_label(e["chunk_kb"]),
                e["chunks_random"]["median"], e["chunks_sequential"]["median"],
                fmt_sum(e["random_per_chunk"], "us"), fmt_sum(e["sequential_per_chunk"], "us"),
                fmt_sum(e["used_per_chunk"], "us"), fmt_sum(e["slab_per_chunk"], "us"),
                fmt_sum(e["vmalloc_per_chunk"], "us"), fmt_sum(e["setup_per_origin_chunk"], "us"),
                fmt_sum(e["left_after_removal_kb"])))
        L.append("")
    L.append("Chart: chart.png.  Raw data: results.json (every run), fio/*.json.")
    L.append("")
    return "\n".join(L)


CHART_ITEMS = [
    ("passthrough-randwrite-iops", None, "no snap\\nrandwrite"),
    ("passthrough-randread-iops", None, "no snap\\nrandread"),
    ("steady-iops", None, "steady\\nIOPS"),
    ("steady-p50", None, "steady\\np50"),
    ("firstwrite-iops", 4, "1st write\\nIOPS 4K"),
    ("firstwrite-iops", 64, "1st write\\nIOPS 64K"),
    ("firstwrite-iops", 1024, "1st write\\nIOPS 1M"),
    ("firstwrite-p50", 4, "1st write\\np50 4K"),
    ("firstwrite-p50", 64, "1st write\\np50 64K"),
    ("firstwrite-p50", 1024, "1st write\\np50 1M"),
    ("firstwrite-seq-bw", 4, "1st seq\\nwrite 4K"),
    ("firstwrite-seq-bw", 64, "1st seq\\nwrite 64K"),
    ("firstwrite-seq-bw", 1024, "1st seq\\nwrite 1M"),
    ("viewread-idle", None, "image read\\nidle"),
    ("viewread-loaded", None, "image read\\nloaded"),
]


def chart(out, table, env):
    """Speed of dm-fleece relative to dm-linear and dm-snapshot N (>1: faster;
    latency inverted so that higher is better everywhere), mode mem."""
    rows = []
    for mid, ckb, label in CHART_ITEMS:
        e = find(table, mid, chunk=ckb)
        if not e:
            continue
        vals = []
        for ref in ("linear", "snapN"):
            s = e["ratios"].get("fleece/" + ref)
            if not s:
                vals += ["NaN", "NaN", "NaN"]
                continue
            med, lo, hi = s["median"], s["min"], s["max"]
            if e["better"] == "lower":
                med, lo, hi = 1 / med, 1 / hi, 1 / lo
            vals += ["%.4f" % med, "%.4f" % lo, "%.4f" % hi]
        rows.append('"%s" %s' % (label, " ".join(vals)))
    dat = os.path.join(out, "chart.dat")
    # gnuplot refuses a histogram column without a single valid point.
    series = []
    for col, name, color in ((2, "vs dm-linear", "#4477aa"), (5, "vs dm-snapshot N", "#ee6677")):
        if any(r.split('" ', 1)[1].split()[col - 2] != "NaN" for r in rows):
            series.append('"%s" using %d:%d:%d:xtic(1) title "%s" lc rgb "%s"'
                          % (dat, col, col + 1, col + 2, name, color))
    if not series:
        return False
    plot = "plot " + ", \\\n     ".join(series)
    with open(dat, "w") as f:
        f.write("# label  vs_linear lo hi  vs_snapN lo hi\n")
        f.write("\n".join(rows) + "\n")
    gp = os.path.join(out, "chart.gp")
    title = "dm-fleece relative speed (%s, mode mem; >1 = dm-fleece faster, latency inverted)" \
        % env.get("kver", "")
    if env.get("QUICK") == "1":
        title = "QUICK run (meaningless numbers): " + title
    with open(gp, "w") as f:
        f.write("""set terminal pngcairo size 1400,650 font ",10"
set output "%s"
set title "%s"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y 2
set yrange [0.0078:16]
set bmargin 5
set ytics ("1/128" 0.0078125, "1/32" 0.03125, "1/8" 0.125, "1/4" 0.25, "1/2" 0.5, "0.9" 0.9, "1" 1, "1.5" 1.5, "2" 2, "4" 4, "8" 8, "16" 16)
set grid ytics
set key top left
set xtics rotate by 0 font ",8"
set ylabel "dm-fleece / other (median, bars: min-max)"
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 lc rgb "black"
%s
""" % (os.path.join(out, "chart.png"), title, plot))
    if not rows:
        return False
    r = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        return False
    return True


def checks(out, env, runs, mem_rows):
    """The harness's own checks: (verdict, description), verdict "ok",
    "not ok", or "skip" (what a QUICK run had no time left for)."""
    res = []
    skipped = set()
    try:
        with open(os.path.join(out, "skipped-for-time")) as f:
            skipped = {tuple(l.split()) for l in f if len(l.split()) == 2}
    except OSError:
        pass

    def add(cond, desc, skippable=False):
        res.append(("ok" if cond else "skip" if skippable and skipped else "not ok", desc))

    workloads = (env.get("MEM_WORKLOADS", "") + " " + env.get("SSD_WORKLOADS", "")).split()
    for c in CONTENDERS:
        if c in ("fleecetrack", "era") and "tracking" not in workloads:
            continue
        got = [r for r in runs if r["contender"] == c and r["ok"]]
        add(bool(got), "%s contender ran (%d runs with results)" % (NAMES[c], len(got)), True)
    fw = [r for r in runs if r["contender"] == "fleece" and r["workload"] == "firstwrite"
          and r["ok"]]
    copied = [r["parsed_status"]["copied"] for r in fw
              if r["parsed_status"] and "copied" in r["parsed_status"]]
    add(bool(copied) and all(x > 0 for x in copied),
        "dm-fleece view copied chunks on first writes (status: %s)"
        % (copied[:4] if copied else "none"), True)
    valid = [r for r in fw if r["parsed_status"] and r["parsed_status"].get("state") == "active"]
    add(bool(fw) and len(valid) == len(fw),
        "dm-fleece snapshot stayed active through the first writes", True)
    sn = [r for r in runs if r["contender"] in ("snapN", "snapP") and
          r["workload"] == "firstwrite" and r["ok"]]
    used = [r for r in sn if r["parsed_status"] and r["parsed_status"].get("used_sectors", 0) > 0]
    add(bool(sn) and len(used) == len(sn), "dm-snapshot stayed valid and copied chunks", True)
    dr = [r for r in runs if r["workload"] == "discard" and r["ok"]]
    defer = [r["metrics"].get("slots_used") for r in dr if r["contender"] == "fleece"]
    copy = [r["metrics"].get("slots_used") for r in dr if r["contender"] == "fleececopy"]
    add(bool(defer) and all(x == 0 for x in defer) and bool(copy) and all(x and x > 0 for x in copy),
        "a discard during a snapshot: no slot with discard_policy defer (%s), slots with copy (%s)"
        % (defer[:4], copy[:4]), True)
    cw = [r for r in runs if r["ok"] and r["chunks_copied"] is not None]
    short = ["%s %s %s %dK: %d of %d" % (r["mode"], r["workload"], r["contender"], r["chunk_kb"],
                                        r["chunks_copied"], r["chunks_expected"])
             for r in cw if r["chunks_copied"] != r["chunks_expected"]]
    add(bool(cw) and not short,
        "each snapshot copied exactly the chunks first written (%d runs)%s"
        % (len(cw), ": " + "; ".join(short[:4]) if short else ""), not short)
    moved = [r for r in runs if r["ok"] and r["workload"] == "firstwrite" and
             r["contender"] != "linear" and r["sectors"]["exception_write"] > 0]
    add(bool(moved), "device byte counters (/sys/block/*/stat) moved", True)
    modes = env.get("MODES", "").split()
    for mode in modes:
        got = [r for r in runs if r["mode"] == mode and r["ok"]]
        add(bool(got), "mode %s ran (%d runs)" % (mode, len(got)), True)
    wl = set()
    for mode in modes:
        key = "SSD_WORKLOADS" if mode == "ssd" else "MEM_WORKLOADS"
        for w in env.get(key, "").split():
            if w != "memory":
                wl.add((mode, w))
    missing = sorted(mw for mw in wl
                     if not any(r["ok"] and (r["mode"], r["workload"]) == mw for r in runs))
    lost = ["%s/%s" % mw for mw in missing if mw not in skipped]
    late = ["%s/%s" % mw for mw in missing if mw in skipped]
    add(not lost, "every workload started produced results%s"
        % (": missing " + ", ".join(lost) if lost else ""))
    if late:
        res.append(("skip", "workloads left out for time: " + ", ".join(late)))
    bad = [r for r in runs if not r["ok"]]
    add(not bad, "no fio run or device setup failed (%d of %d)" % (len(bad), len(runs)))
    if "memory" in env.get("MEM_WORKLOADS", "").split():
        have = {r["contender"] for r in mem_rows}
        add(have >= {"fleece", "snapN", "snapP"},
            "memory probe ran for dm-fleece and dm-snapshot N/P", ("mem", "memory") in skipped)
    return res


def main():
    args = sys.argv[1:]
    only_checks = False
    if args and args[0] == "--checks":
        only_checks = True
        args = args[1:]
    if len(args) != 1:
        sys.exit("usage: report.py [--checks] OUTDIR")
    out = args[0]
    env = read_env(os.path.join(out, "bench.env"))
    runs = read_runs(out)
    mem_rows = read_memory(out)
    if only_checks:
        for verdict, desc in checks(out, env, runs, mem_rows):
            print("%s\t%s" % (verdict, desc))
        return
    meta = {"out": out}
    try:
        with open(os.path.join(out, "env.txt")) as f:
            meta["env"] = f.read().splitlines()
        k = [l for l in meta["env"] if l.startswith("cpus=")]
        meta["guest"] = "%s, %s vCPUs" % (env.get("kver"), k[0].split()[0][5:] if k else "?")
    except OSError:
        meta["guest"] = env.get("kver", "?")
    try:
        with open(os.path.join(out, "host-load.txt")) as f:
            vals = [float(l.split()[0]) for l in f if l.strip()]
        if vals:
            meta["host_load"] = {"mean": statistics.mean(vals), "max": max(vals),
                                 "cpus": os.cpu_count() or 0, "samples": len(vals)}
    except (OSError, ValueError):
        pass
    table = aggregate(runs)
    moved = bytes_moved(runs)
    mem = memory(mem_rows)
    tg = targets(table, mem, env)
    result = {"config": env, "meta": meta, "targets": tg, "measures": table,
              "bytes_moved": moved, "memory": mem, "memory_raw": mem_rows,
              "runs": [{k: v for k, v in r.items()} for r in runs],
              "checks": [{"verdict": v, "check": d} for v, d in checks(out, env, runs, mem_rows)]}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(env, meta, table, moved, mem, tg, runs))
    if not chart(out, table, env):
        # run.sh reports the missing chart as its own test point.
        sys.stderr.write("report.py: no chart.png (no ratio to plot, or gnuplot failed)\n")


if __name__ == "__main__":
    main()
