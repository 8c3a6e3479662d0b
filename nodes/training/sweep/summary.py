"""A sweep's numbers, and the trip back of its best candidates (a device call returns at most 8 files of 16 MB).

    python -m guardgraph.nodes.training.sweep.summary pack RUNS OUT
        OUT/summary.json: each candidate's training.json, config.json, held-out report as deployed and probe numbers
        (held-out F1 at the thresholds its config.json holds);
        a table on stdout; the weights of the three that fail the fewest of the issue's probe bars (as the probe's
        report names them; then by mean held-out F1) as NAME.w0 and NAME.w1 (two halves).
    python -m guardgraph.nodes.training.sweep.summary unpack FETCHED NAME DIR
        DIR: the candidate NAME as an artifact folder (weights rejoined, config.json, training.json, the example
        classifier's negatives added), for ``guardgraph eval --guard-backend offline --guard-model DIR``.

Which candidate ships is decided by the selection rule written in nodes/training/README.md before the run, not here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELD_OUT = ("User without window/sentence rows", "Agent without window/sentence rows")
PACKED = 3


def _json_after_log(text: str) -> dict:
    """The JSON object that follows train.py's progress lines."""
    return json.loads(text[text.index("\n{") + 1 :] if not text.startswith("{") else text)


def candidate(run: Path) -> dict:
    found: dict = {"name": run.name}
    for key, name in (("training", "training.json"), ("config", "config.json"), ("probe", "probe.json")):
        if (run / name).is_file():
            found[key] = _json_after_log((run / name).read_text())
    metrics = found["training"]["heldout_metrics"] if "training" in found else None
    if (run / "evaluate.json").is_file():
        # measured at the thresholds config.json holds, which the evaluation may have moved
        metrics = _json_after_log((run / "evaluate.json").read_text())
        found["deployed"] = metrics.pop("deployed")
        found["deployed"].pop("sweep", None)
    if metrics is not None:
        found["f1"] = [metrics[key]["f1"] for key in HELD_OUT] + [metrics["contrast_prompts"]["f1"]]
    found["failed"] = found["probe"]["failed"] if "probe" in found else ["not measured"]  # the probe's own bars
    return found


def row(found: dict) -> str:
    cells = [found["name"], *(f"{f:.4f}" for f in found.get("f1", []))]
    if "probe" in found:
        p = found["probe"]
        cells += [f"{p[f'padded {r}']['recall']:.3f} / {p[f'padded {r}']['fpr']:.3f}" for r in ("User", "Agent")]
        cells += [f"{len(p['long benign User'])} / {len(p['long benign Agent'])}", str(p["lisbon"]["blocks"])]
    if "deployed" in found:
        windows = found["deployed"]["windows"]
        cells += [f"{windows[r]['recall']:.3f} / {windows[r]['fpr']:.3f}" for r in ("User", "Agent")]
        cells.append(str(found["config"].get("sentence_evidence")))
    return " | ".join([*cells, ", ".join(found["failed"]) or "-"])


def pack(runs: Path, out: Path) -> None:
    found = [candidate(run) for run in sorted(runs.iterdir()) if run.is_dir()]
    found.sort(key=lambda c: (len(c["failed"]), -sum(c.get("f1", [0, 0])[:2])))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(found, indent=1))
    print(
        "name | held-out F1 User | Agent | contrast | padded recall / FPR User | Agent | long benign User / Agent"
        " | Lisbon refused | deployed recall / FPR User | Agent | margins | failed bars"
    )
    for c in found:
        print(row(c))
    for c in found[:PACKED]:
        weights = runs / c["name"] / "weights.safetensors"
        if weights.is_file():
            data = weights.read_bytes()
            half = (len(data) + 1) // 2
            (out / f"{c['name']}.w0").write_bytes(data[:half])
            (out / f"{c['name']}.w1").write_bytes(data[half:])


def unpack(fetched: Path, name: str, artifact: Path) -> None:
    # the example classifier's encoder is needed here only, not on the GPU machine that packs
    from guardgraph.nodes.training.benign_negatives import write_benign_negatives

    found = {c["name"]: c for c in json.loads((fetched / "summary.json").read_text())}
    if name not in found or not (fetched / f"{name}.w0").is_file():
        raise SystemExit(f"{fetched}: no packed candidate {name!r} (packed: the first {PACKED} of summary.json)")
    artifact.mkdir(parents=True, exist_ok=True)
    halves = [(fetched / f"{name}.w{i}").read_bytes() for i in (0, 1)]
    (artifact / "weights.safetensors").write_bytes(b"".join(halves))
    for key in ("config", "training"):
        (artifact / f"{key}.json").write_text(json.dumps(found[name][key], indent=1) + "\n")
    write_benign_negatives(artifact, int(found[name]["training"]["seed"]))
    print(f"wrote {artifact}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="tabulate RUNS and pack the best candidates into OUT")
    packing.add_argument("runs", type=Path)
    packing.add_argument("out", type=Path)
    unpacking = commands.add_parser("unpack", help="rebuild candidate NAME from FETCHED as an artifact folder DIR")
    unpacking.add_argument("fetched", type=Path)
    unpacking.add_argument("name")
    unpacking.add_argument("artifact", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.runs, args.out)
    else:
        unpack(args.fetched, args.name, args.artifact)


if __name__ == "__main__":
    main()
