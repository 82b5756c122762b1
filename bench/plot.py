#!/usr/bin/env python3
"""Plot bench results: grouped bars of each target's TPS relative to direct PostgreSQL.

Usage: plot.py results.csv results.png   (pgrelay-bench runs it; bench/run sets up the venv)
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = [
    ("bare_relay", "bare TCP relay (floor)", "#9e9e9e"),
    ("pgrelay_primary", "pgrelay, primary only", "#1f77b4"),
    ("pgrelay_cluster", "pgrelay, 1+2 routing", "#2ca02c"),
    ("pgbouncer", "PgBouncer transaction", "#ff7f0e"),
]


def main(csv_path, png_path):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = []  # (script, mode, clients) in file order
    for r in rows:
        key = (r["script"], r["mode"], r["clients"])
        if key not in groups:
            groups.append(key)
    by = {(r["script"], r["mode"], r["clients"], r["target"]): r for r in rows}

    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 5.5))
    width = 0.8 / len(TARGETS)
    top = 1.2
    in_legend = set()
    for i, (key, label, color) in enumerate(TARGETS):
        for g, (script, mode, clients) in enumerate(groups):
            r = by.get((script, mode, clients, key))
            x = g - 0.4 + width * (i + 0.5)
            if r is None:
                continue
            if r["status"] == "ok" and r["tps_ratio_to_direct"]:
                v = float(r["tps_ratio_to_direct"])
                top = max(top, v * 1.15)
                ax.bar(x, v, width, color=color, label=None if key in in_legend else label)
                in_legend.add(key)
                mark = "†" if r["ratio_reference"] else ""
                ax.text(x, v, f"{v:.2f}{mark}", ha="center", va="bottom", fontsize=7)
            else:
                word = "failed" if r["status"] == "failed" else ("n/a" if r["status"] == "ok" else r["status"])
                ax.text(x, 0.02, word, ha="center", va="bottom", rotation=90, fontsize=8, color=color)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="direct PostgreSQL = 1.0")
    labels = []
    for script, mode, clients in groups:
        ref = any(
            by.get((script, mode, clients, k), {}).get("ratio_reference") for k, _, _ in TARGETS
        )
        noun = "client" if clients == "1" else "clients"
        labels.append(f"{script}\n{mode}\n{clients} {noun}" + ("\n(† vs direct\nat fewer clients)" if ref else ""))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, top)
    ax.set_ylabel("TPS relative to direct PostgreSQL")
    ax.set_title("pgbench TPS through each proxy, relative to direct PostgreSQL", pad=40)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
