#!/usr/bin/env python
"""raydemucs benchmark: one command, every contender on the same files and model, one table.

    python bench/run.py                      # 8 clips of 10-20 s, 200 dispatch tasks
    python bench/run.py --quick              # 2 clips of 3 s, 20 dispatch tasks (development)
    python bench/run.py --device cuda        # floor + demucs CLI on the GPU; needs no Ray
    python bench/run.py --only roformer      # the RoFormer row alone (engine vs reference demix)

See bench/README.md for what each contender is and how to read the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

CONTENDERS_CPU = ["floor", "cli", "old", "cold", "warm", "warm-unlent", "warm-bf16", "warm-ov",
                  "warm-ov-bf16"]
CONTENDERS_CUDA = ["floor", "cli"]
ROFORMER = "roformer"   # the RoFormer row (bench/roformer.py), on the CPU after the contenders
LABELS = {"floor": "floor (apply_model, 2 procs)", "cli": "demucs CLI (1 process)",
          "old": "old design (1 process/file, 2 at a time)", "cold": "raydemucs cold (submit --wait)",
          "warm": "raydemucs warm fp32 (service running)",
          "warm-unlent": "raydemucs warm fp32, idle cores not lent",
          "warm-bf16": "raydemucs warm bf16 (torch autocast)",
          "warm-ov": "raydemucs warm fp32, OpenVINO network",
          "warm-ov-bf16": "raydemucs warm bf16, OpenVINO network"}
WARM = {"warm": ("fp32", "eager"), "warm-unlent": ("fp32", "eager"), "warm-bf16": ("bf16", "eager"),
        "warm-ov": ("fp32", "openvino"), "warm-ov-bf16": ("bf16", "openvino")}
# issue 15: warm fp32 >= 1.0x CLI, bf16 >= 1.8x CLI with >= 35 dB SNR against fp32, fp32 paths
# within 1 LSB of the CLI; issue 6: warm >= 1.6x old, cold (on 8 files) >= 1.0x CLI; dispatch
# p50 <= 10 ms, p99 <= 50 ms.
TARGETS = [("warm", "cli", 1.0), ("warm-ov", "cli", 1.0), ("warm-bf16", "cli", 1.8),
           ("warm-ov-bf16", "cli", 1.8), ("warm", "old", 1.6), ("cold", "cli", 1.0)]
SNR_TARGETS = [("warm-bf16", 35.0), ("warm-ov-bf16", 35.0)]
LSB_TARGETS = ["warm", "warm-ov", "cold"]
DISPATCH_TARGETS = [("p50_ms", 10.0), ("p99_ms", 50.0)]
PUBLISHED = Path(__file__).resolve().parent / "published.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="number of input clips (default 8)")
    parser.add_argument("--min-s", type=float, default=10.0, help="shortest clip, seconds")
    parser.add_argument("--max-s", type=float, default=20.0, help="longest clip, seconds")
    parser.add_argument("--dispatch-tasks", type=int, default=200,
                        help="short tasks for the dispatch-latency probe (0 to skip)")
    parser.add_argument("--quick", action="store_true",
                        help="2 clips of 3 s and 20 dispatch tasks: a couple of minutes")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: floor and demucs CLI on the GPU only, without Ray")
    parser.add_argument("--only", help="comma-separated subset of: "
                        + ",".join([*CONTENDERS_CPU, ROFORMER]))
    parser.add_argument("--roformer-s", type=float, default=4.0,
                        help="the RoFormer row's clip, seconds (default 4: one 8 s chunk, "
                             "one forward pass per row)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the contenders, rotating their order; the median is reported")
    parser.add_argument("--floor-procs", type=int, help="floor processes (default 2 on cpu, 1 on cuda)")
    parser.add_argument("--cold-preload", action="store_true",
                        help="cold run with RAYDEMUCS_SEPARATION_MODEL/REPO set, so workers "
                             "preload the benchmark model instead of the config default")
    parser.add_argument("--cold-ray", choices=["auto", "local"], default="auto",
                        help="auto: RAY_ADDRESS unset (as a user runs it) unless another Ray "
                             "cluster runs here, then RAY_ADDRESS=local; local: always the latter")
    parser.add_argument("--check", action="store_true",
                        help=f"compare each contender's ratio to the CLI with the published one "
                             f"({PUBLISHED.name}); exit 1 when one fell by more than --tolerance")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="--check: the fall in a ratio taken as a regression (default 0.05)")
    parser.add_argument("--publish", action="store_true",
                        help=f"write this run's ratios to {PUBLISHED.name}, for later --check")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "latest.json")
    parser.add_argument("--work-dir", type=Path, help="inputs, model and outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.min_s, args.max_s = 2, 3.0, 3.0
        args.dispatch_tasks = min(args.dispatch_tasks, 20)
    if args.clips < 1 or args.min_s <= 0 or args.max_s < args.min_s:
        parser.error("need --clips >= 1 and 0 < --min-s <= --max-s")
    return args


def cpu_model() -> str | None:
    """The CPU's name as /proc/cpuinfo gives it (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name")), None)
    except OSError:
        return None


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    try:
        import demucs

        info["demucs"] = demucs.__version__
    except Exception:
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except Exception:
        pass
    try:
        import ray

        info["ray"] = ray.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_one(name: str, ctx: dict, args, round_no: int) -> dict:
    work, repo, files = ctx["work"], ctx["repo"], ctx["files"]
    out = work / "out" / f"{name}-r{round_no}"
    log = work / "logs" / f"{name}-r{round_no}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if name == "floor":
        procs = args.floor_procs or (1 if args.device == "cuda" else 2)
        threads = 1 if args.device == "cpu" else 0
        result = benchlib.run_floor(repo, files, ctx["durations"], procs, threads, args.device)
    elif name == "cli":
        result = benchlib.run_cli(repo, files, out, args.device, log)
    elif name == "old":
        result = benchlib.run_old(repo, files, out, args.device, 2, log)
    elif name == "cold":
        import raybench

        result = raybench.run_cold(repo, files, out, work, log, preload=args.cold_preload,
                                   ray_mode=args.cold_ray)
    elif name in WARM:
        import raybench

        with raybench.LocalRay():
            precision, runtime = WARM[name]
            result = raybench.run_warm(repo, files, out, work, precision=precision,
                                       runtime=runtime, lend_cores=name != "warm-unlent")
    else:
        raise ValueError(name)
    if round_no == 0:
        ctx["outputs"][name] = out  # kept to compare with the CLI's stems
    else:
        shutil.rmtree(out, ignore_errors=True)
    return result


def stem_files(folder: Path) -> dict:
    """`{(clip, stem): path}` for the wav stems anywhere under `folder`."""
    return {(path.parent.name, path.stem): path for path in folder.rglob("*.wav")}


def compare(reference: Path, folder: Path) -> dict | None:
    """All the stems under `folder` against the same stems under `reference` (16-bit wavs):
    `benchlib.agreement`; None when the stems differ in name."""
    ref, ours = stem_files(reference), stem_files(folder)
    if not ref or set(ref) != set(ours):
        return None
    return benchlib.agreement((benchlib.read_wav(path), benchlib.read_wav(ours[key]))
                              for key, path in ref.items())


def median(values: list[float]) -> float:
    data = sorted(values)
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def summarize(runs: dict[str, list[dict]], audio_s: float, against_cli: dict) -> dict:
    contenders = {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        entry = {"label": LABELS[name], "runs": results, "audio_s": audio_s}
        if ok:
            wall = median([r["wall_s"] for r in ok])
            cpu = [r["cpu_s"] for r in ok if r.get("cpu_s")]
            entry.update(wall_s=wall, throughput=audio_s / wall, cpu_s=median(cpu) if cpu else None,
                         peak_rss_worker_bytes=max((r.get("peak_rss_worker_bytes") or 0) for r in ok) or None)
        else:
            entry["error"] = results[-1]["error"]
        entry.update(against_cli.get(name) or {})
        contenders[name] = entry
    for entry in contenders.values():
        for ref in ("floor", "cli", "old"):
            base = contenders.get(ref, {}).get("throughput")
            if base and entry.get("throughput"):
                entry[f"vs_{ref}"] = entry["throughput"] / base
        cli_cpu = contenders.get("cli", {}).get("cpu_s")
        if cli_cpu and entry.get("cpu_s"):
            entry["cpu_vs_cli"] = cli_cpu / entry["cpu_s"]
    return contenders


def evaluate_targets(contenders: dict, dispatch: dict | None, clips: int) -> list[dict]:
    targets = []
    for name, ref, want in TARGETS:
        value = contenders.get(name, {}).get(f"vs_{ref}")
        note = "issue 6 sets it for 8 files" if name == "cold" and clips != 8 else ""
        targets.append({"target": f"{name} >= {want:g}x {ref}", "value": value, "want": want,
                        "pass": None if value is None else value >= want, "note": note})
    for name, want in SNR_TARGETS:
        value = contenders.get(name, {}).get("snr_db")
        targets.append({"target": f"{name} SNR >= {want:g} dB", "value": value, "want": want,
                        "pass": None if value is None else value >= want,
                        "note": "against the demucs CLI's fp32 stems"})
    for name in LSB_TARGETS:
        value = contenders.get(name, {}).get("max_diff_lsb")
        targets.append({"target": f"{name} within 1 LSB of the CLI", "value": value, "want": 1,
                        "pass": None if value is None else value <= 1, "note": "largest |diff|"})
    for key, limit in DISPATCH_TARGETS:
        value = (dispatch or {}).get(key)
        targets.append({"target": f"dispatch {key.split('_')[0]} <= {limit:g} ms", "value": value,
                        "want": limit, "pass": None if value is None else value <= limit, "note": ""})
    return targets


def ratios(contenders: dict) -> dict[str, float]:
    return {name: c["vs_cli"] for name, c in contenders.items() if c.get("vs_cli")}


def publish(report: dict) -> None:
    PUBLISHED.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d", time.localtime(report["started_at"])),
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "workload": workload(report["args"]), "machine": report["machine"],
        "vs_cli": ratios(report["contenders"])}, indent=2) + "\n")


def workload(args: dict) -> dict:
    return {key: args[key] for key in ("clips", "min_s", "max_s", "device")}


def check(report: dict, tolerance: float) -> list[str]:
    """Lines saying how each contender's ratio to the CLI moved since the published run; the
    ones that fell by more than `tolerance` start with REGRESSED."""
    published = json.loads(PUBLISHED.read_text())
    lines = [f"against {PUBLISHED.name} ({published['date']}: {published['command']})"]
    if published["workload"] != workload(report["args"]):
        lines.append(f"  note: another workload than the published {published['workload']}")
    for name, now in ratios(report["contenders"]).items():
        before = published["vs_cli"].get(name)
        if before is None:
            lines.append(f"  new        {name}: {now:.2f}x")
            continue
        mark = ("REGRESSED" if now < before * (1 - tolerance) else
                "improved" if now > before * (1 + tolerance) else "same")
        lines.append(f"  {mark:10} {name}: {before:.2f}x -> {now:.2f}x")
    return lines


def fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def render(report: dict) -> str:
    lines = []
    inputs, model = report["inputs"], report["model"]
    lines.append(f"model {model['name']}: htdemucs architecture, {model['params'] / 1e6:.2f} M params, "
                 f"random weights, segment {model['segment_s']:g} s, shifts 0, overlap 0.25, "
                 f"device {report['args']['device']}")
    lines.append(f"inputs: {len(inputs['durations_s'])} clips, {inputs['audio_s']:.1f} s of audio "
                 f"({min(inputs['durations_s']):g}-{max(inputs['durations_s']):g} s each); "
                 f"machine: {report['machine'].get('cpus')} CPUs "
                 f"({report['machine'].get('cpu_model') or 'model unknown'}), "
                 f"{report['machine'].get('platform')}")
    head = (f"{'contender':44} {'wall s':>8} {'audio s/s':>9} {'vs floor':>8} {'vs CLI':>7} "
            f"{'vs old':>7} {'RSS/worker':>11} {'CPU s':>7} {'CPU/CLI':>7} {'SNR dB':>7} "
            f"{'max LSB':>7}")
    lines += ["", head, "-" * len(head)]
    for name, c in report["contenders"].items():
        if "error" in c:
            lines.append(f"{c['label']:44} failed: {c['error'].splitlines()[0][:60]}")
            continue
        rss = c.get("peak_rss_worker_bytes")
        lines.append(f"{c['label']:44} {c['wall_s']:8.2f} {c['throughput']:9.3f} "
                     f"{fmt(c.get('vs_floor'), '7.2f')+'x' if c.get('vs_floor') else '       -'} "
                     f"{fmt(c.get('vs_cli'), '6.2f')+'x' if c.get('vs_cli') else '      -'} "
                     f"{fmt(c.get('vs_old'), '6.2f')+'x' if c.get('vs_old') else '      -'} "
                     f"{fmt(rss and rss / 2**20, '8.0f') + ' MB' if rss else '          -'} "
                     f"{fmt(c.get('cpu_s'), '7.1f'):>7} {fmt(c.get('cpu_vs_cli'), '6.2f') + 'x':>7} "
                     f"{fmt(c.get('snr_db'), '7.1f'):>7} {fmt(c.get('max_diff_lsb'), 'd'):>7}")
    for name in ("cold", *WARM):
        run = report["contenders"].get(name, {}).get("runs", [{}])[-1]
        b = run.get("breakdown")
        if b:
            lines.append("")
            if name == "cold":
                lines.append(f"cold: Ray address {run['ray_address']}; other Ray clusters seen: "
                             f"{len(run['other_clusters_seen'])}; workers preload "
                             f"{'the bench model (--cold-preload)' if run['preload_env'] else 'the config default (htdemucs)'}; "
                             f"whole Ray tree peak RSS {fmt(run['peak_rss_total_bytes'] and run['peak_rss_total_bytes'] / 2**20, '.0f')} MB")
            lines.append(f"{name} breakdown (last round): start->first submit {b['to_first_submit_s']:.2f} s | "
                         f"submit->first dispatch {b['submit_to_first_dispatch_s']:.2f} s | "
                         f"dispatch->last finish {b['first_dispatch_to_last_finish_s']:.2f} s | "
                         f"last finish->exit {b['last_finish_to_exit_s']:.2f} s")
            roles = run.get("cpu_by_role_s")
            if roles:
                lines.append(f"{' ' * len(name)} CPU s on the machine meanwhile: " + ", ".join(
                    f"{role} {spent:.1f}" for role, spent in roles.items() if spent >= 0.05))
            lines.append(f"{' ' * len(name)} in tasks: decode {b['sum_decode_s']:.2f} s, separate "
                         f"{b['sum_separate_s']:.2f} s, write {b['sum_write_s']:.2f} s, other "
                         f"{b['sum_task_overhead_s']:.2f} s (first task per worker: "
                         + ", ".join(f"{x:.2f}" for x in b["first_task_overhead_per_worker_s"]) + " s)")
    d = report.get("dispatch")
    if d:
        lines.append("")
        if "error" in d:
            lines.append(f"dispatch: failed: {d['error'].splitlines()[0]}")
        else:
            lines.append(f"dispatch ({d['tasks']} tasks of {report['args']['dispatch_clip_s']:g} s on "
                         f"demucs_unittest, {d['workers']} workers, {d['tasks_per_s']:.1f} tasks/s): "
                         f"finished->next started p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, "
                         f"max {d['max_ms']:.2f} ms (scheduler clock); worker-side idle p50 "
                         f"{fmt(d['worker_side_p50_ms'], '.1f')} ms, p99 {fmt(d['worker_side_p99_ms'], '.1f')} ms")
    load = report["machine"].get("load_avg_at_start"), report.get("load_avg_at_end")
    if load[0]:
        lines.append("")
        lines.append(f"load average (1/5/15 min) at start {load[0]}, at end {load[1]} on "
                     f"{report['machine'].get('cpus')} CPUs: other work on the machine skews every row")
    if report["targets"]:
        lines.append("")
        lines.append("targets (issues 6 and 15):")
    for t in report["targets"]:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        value = fmt(t["value"], ".2f")
        lines.append(f"  {mark}  {t['target']:28} measured {value}{'  (' + t['note'] + ')' if t['note'] else ''}")
    if report.get("roformer"):
        import roformer

        lines += roformer.cpu_lines(report["roformer"])
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = CONTENDERS_CUDA if args.device == "cuda" else CONTENDERS_CPU
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(wanted) - {*CONTENDERS_CPU, ROFORMER}
        if unknown:
            sys.exit(f"--only: unknown contender(s) {', '.join(sorted(unknown))}")
        names = [n for n in names if n in wanted]
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="raydemucs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict = {"started_at": started, "machine": machine_info(),
                    "args": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                             "dispatch_clip_s": 0.5}}
    try:
        print(f"work dir {work}", flush=True)
        repo = work / "models"
        t0 = time.monotonic()
        report["model"] = benchlib.build_model_repo(repo)
        report["model"]["params_loaded"] = benchlib.check_model_loads(repo)
        print(f"model {benchlib.MODEL_NAME}: {report['model']['params']:,} parameters "
              f"({report['model']['params'] / 1e6:.2f} M), built and reloaded in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        durations = benchlib.clip_durations(args.clips, args.min_s, args.max_s)
        files = benchlib.make_inputs(work / "inputs", durations)
        report["inputs"] = {"durations_s": durations, "audio_s": sum(durations),
                            "files": [str(f) for f in files]}
        ctx = {"work": work, "repo": repo, "files": files, "durations": durations, "outputs": {}}

        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)] if names else []
            for name in order:
                print(f"[round {round_no + 1}/{args.rounds}] {LABELS[name]} ...", flush=True)
                t0 = time.monotonic()
                try:
                    result = run_one(name, ctx, args, round_no)
                    print(f"    wall {result['wall_s']:.2f} s -> "
                          f"{sum(durations) / result['wall_s']:.3f} audio s/s", flush=True)
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                    print(f"    FAILED after {time.monotonic() - t0:.1f} s: {result['error']}", flush=True)
                runs[name].append(result)

        dispatch = None
        if args.device == "cpu" and args.dispatch_tasks > 0 and (not args.only or "warm" in names):
            print(f"dispatch probe: {args.dispatch_tasks} tasks on demucs_unittest ...", flush=True)
            import raybench

            clip = benchlib.write_wav(work / "inputs" / "short.wav", benchlib.make_signal(0.5, seed=99))
            try:
                with raybench.LocalRay():
                    dispatch = raybench.run_dispatch(clip, args.dispatch_tasks,
                                                     work / "out" / "dispatch", work)
            except Exception as exc:
                dispatch = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                print(f"    FAILED: {dispatch['error']}", flush=True)
            shutil.rmtree(work / "out" / "dispatch", ignore_errors=True)

        if args.device == "cpu" and (not args.only or ROFORMER in wanted):
            import roformer

            report["roformer"] = roformer.cpu_row(work, args.roformer_s)

        reference = ctx["outputs"].get("cli")
        against_cli = {name: compare(reference, folder) for name, folder in ctx["outputs"].items()
                       if reference is not None and name != "cli"}
        report["contenders"] = summarize(runs, sum(durations), against_cli)
        report["dispatch"] = dispatch
        report["targets"] = [] if args.device == "cuda" else evaluate_targets(
            report["contenders"], dispatch if dispatch and "error" not in dispatch else None, args.clips)
        report["elapsed_s"] = time.time() - started
        report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        text = render(report)
        report["table"] = text
        print()
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s in all)")
        failed = [n for n, c in report["contenders"].items() if "error" in c]
        failed += [ROFORMER] if "error" in report.get("roformer", {}) else []
        if args.publish:
            publish(report)
            print(f"published the ratios to {PUBLISHED}")
        regressed = []
        if args.check:
            lines = check(report, args.tolerance)
            print("\n".join(lines))
            regressed = [line for line in lines if "REGRESSED" in line]
        return 1 if failed or regressed or (dispatch and "error" in dispatch) else 0
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
