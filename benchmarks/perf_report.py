"""The performance report: docs/PERFORMANCE.md's tables from a benchmark run, its scaling plot, and the
hand-written findings of an earlier report kept across reruns."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from benchmarks.measure import Stats, ratio_stats
from pixelsail.model.backbone import ATTENTION_IMPLEMENTATIONS, PREFIX_SDPA


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def render(results: dict, meta: dict) -> str:
    peak = meta.get("peak")
    lines = [
        "# Pixel-SAIL performance",
        "",
        f"Reproduce: `{meta['command']}`",
        "",
        f"- machine: {meta['machine']}",
        f"- date: {meta['date']}; torch {torch.__version__}; python {platform.python_version()}",
        f"- every time is median (min–max) over {meta['repeats']} repeats after a warm-up; ratios are taken inside "
        "each repeat (the matmul reference runs right before and right after the case), then summarised the same way",
        ("- times are CPU seconds of the benchmark process (`time.process_time`, fixed thread count): time slices "
         "taken by other processes on this shared machine do not count; wall-clock medians are shown in section 1"
         if meta["clock"] == "cpu" else "- times are wall-clock seconds (device synchronised)"),
        "- FLOPs are counted analytically (`benchmarks/flops.py`: decoder matmuls, allowed attention pairs, patch "
        "embedding, upsampler, mask head; backward = 2x forward); memory is the peak extra "
        + ("CUDA allocation" if meta["device"] == "cuda" else "resident set (RSS) of one call, heap trimmed before it"),
        "",
        "## 1. How close to the machine's matmul rate",
        "",
        "| config | params | case | shape | time | wall time | achieved GFLOP/s | matmul reference GFLOP/s "
        "| ratio to matmul |" + (" MFU (bf16 peak) |" if peak else "") + " peak memory MiB |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else "") + "---|",
    ]
    for row in results["limit"]:
        s = row["train_shape"]
        for case, shape, ref_shape in (("train step (fwd+bwd)", f"B={s.batch}, {s.patches} patches + "
                                        f"{s.text_tokens} text, {s.masks_per_sample} mask", row["train_ref"]),
                                       ("prefill", f"{row['prefill_grid'][0] * row['prefill_grid'][1]} patches",
                                        row["prefill_ref"])):
            r = row["train" if case.startswith("train") else "prefill"]
            mfu = f" {Stats([x / peak for x in r.rate.values]).fmt(100, 1, '%')} |" if peak else ""
            lines.append(f"| {row['config']} | {row['params'] / 1e6:.1f}M | {case} | {shape} | "
                         f"{r.seconds.fmt(1e3, 1, ' ms')} | {r.extra['wall'].median * 1e3:.1f} ms | "
                         f"{r.rate.fmt(1e-9, 1)} | "
                         f"{r.ref_rate.fmt(1e-9, 1)} ({'x'.join(map(str, ref_shape))}) | "
                         f"**{r.ref_ratio.fmt(100, 0, '%')}** |{mfu} {mib(r.peak_bytes)} |")
    lines += ["", "Where the time goes (torch.profiler self time, one call):", ""]
    lines += ["| config | case | matmul kernels | fused attention | largest other ops (share of time, calls) |",
              "|---|---|---|---|---|"]
    for row in results["limit"]:
        for case in ("train", "prefill"):
            p = row[f"{case}_profile"]
            other = "; ".join(f"{k} {100 * s:.1f}% ({c})" for k, s, c in p["other"])
            lines.append(f"| {row['config']} | {case} | {100 * p['matmul_share']:.1f}% | "
                         f"{100 * p['attention_share']:.1f}% | {other} |")
    lines += ["", "## 2. Against a matched three-model pipeline (ViT + the same LLM + SAM-style decoder)", "",
              "One referring-segmentation query, image in -> mask out, answer forced to `Sure, [SEG].` in both "
              "(decoding costs the same in both: same LLM, same text). All callables (both pipelines, the "
              "follow-up, the parts) run back to back in every repeat.", "",
              "| config | image | params pixelsail | params peer (ViT / LLM / mask decoder) | pixelsail query | "
              "peer query | **peer / pixelsail** | follow-up (cached prefix) | **follow-up / first** | "
              "peak MiB pixelsail / peer | of which: pixelsail upsampler + mask MLP / peer ViT / peer mask decoder |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["peer"]:
        p, t = row["params"], row["times"]
        peer_total = p["vit"] + p["llm"] + p["mask_decoder"]
        lines.append(f"| {row['config']} | {row['side']}px | {p['pixelsail'] / 1e6:.1f}M | {peer_total / 1e6:.1f}M "
                     f"({p['vit'] / 1e6:.1f} / {p['llm'] / 1e6:.1f} / {p['mask_decoder'] / 1e6:.1f}) | "
                     f"{t['pixelsail'].fmt(1e3, 1, ' ms')} | {t['peer'].fmt(1e3, 1, ' ms')} | "
                     f"**{row['speedup'].fmt(digits=2, unit='x')}** | {t['follow_up'].fmt(1e3, 1, ' ms')} | "
                     f"**{row['follow_up_ratio'].fmt(digits=3)}** | "
                     f"{mib(row['memory']['pixelsail'])} / {mib(row['memory']['peer'])} | "
                     + " / ".join(t[k].fmt(1e3, 1, " ms") for k in ("pixelsail_mask_features", "peer_vit",
                                                                      "peer_mask_decoder")) + " |")
    sc = results["scaling"]
    attns = list(ATTENTION_IMPLEMENTATIONS)
    header = ["| patches | GFLOP | " + " | ".join(f"{a} ms" for a in attns) + " | sdpa / prefix | eager / prefix | "
              + " | ".join(f"{a} MiB" for a in attns) + " |",
              "|---|---|" + "---|" * (2 * len(attns) + 2)]
    lines += ["", f"## 3. Scaling ({sc['config']} config)", "",
              "Image resolution, prefill (`prefill_image`), by attention implementation: `prefix_sdpa` (fused, "
              "no L x L mask), `sdpa` (explicit (B,1,L,L) bool mask), `eager` (additive float mask). "
              "Ratios are to prefix_sdpa in the same repeat.", "",
              *header]
    for key, title in (("prefill", None), ("train", "Image resolution, training step (B=1, fwd+bwd):")):
        if title:
            lines += ["", title, "", *header]
        for r in sc[key]:
            t = r["times"]
            lines.append(f"| {r['patches']} | {r['flops'] / 1e9:.1f} | "
                         + " | ".join(t[a].fmt(1e3, 1) for a in attns)
                         + f" | {ratio_stats(t['sdpa'], t[PREFIX_SDPA]).fmt(digits=2, unit='x')}"
                         + f" | {ratio_stats(t['eager'], t[PREFIX_SDPA]).fmt(digits=2, unit='x')} | "
                         + " | ".join(mib(r["memory"][a]) for a in attns) + " |")
    base_t, base_q = sc["seg_train"][0]["seconds"], sc["seg_query"][0]["seconds"]
    lines += ["", "Number of `[SEG]` masks per answer (prefix_sdpa): training step and one query (prefill + "
              "cached text pass + masks).", "",
              "| masks | train step ms | train / 1 mask | train MiB | query ms | query / 1 mask | query MiB |",
              "|---|---|---|---|---|---|---|"]
    for tr, q in zip(sc["seg_train"], sc["seg_query"]):
        lines.append(f"| {tr['masks']} | {tr['seconds'].fmt(1e3, 1)} | {ratio_stats(tr['seconds'], base_t).fmt()}x | "
                     f"{mib(tr['memory'])} | {q['seconds'].fmt(1e3, 1)} | {ratio_stats(q['seconds'], base_q).fmt()}x | "
                     f"{mib(q['memory'])} |")
    lines += ["", "![scaling](performance_scaling.png)", ""]
    if meta.get("notes"):
        lines += ["## Notes", "", *meta["notes"], ""]
    return "\n".join(lines)


FINDINGS = "## Findings"


def kept_findings(path: Path) -> str:
    """The hand-written findings section (profile analysis, proposed fixes) of an earlier report, kept on rerun."""
    if not path.is_file():
        return ""
    text = path.read_text()
    at = text.find(FINDINGS)
    return "\n" + text[at:] if at >= 0 else ""


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = results["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in ((axes[0], "prefill", "prefill vs image patches"),
                           (axes[1], "train", "train step (B=1) vs image patches")):
        x = [r["patches"] for r in sc[key]]
        for attn in ATTENTION_IMPLEMENTATIONS:
            ax.plot(x, [r["times"][attn].median * 1e3 for r in sc[key]], marker="o", label=attn)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image patches")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.legend()
    ks = [r["masks"] for r in sc["seg_train"]]
    axes[2].plot(ks, [r["seconds"].median * 1e3 for r in sc["seg_train"]], marker="o", label="train step")
    axes[2].plot(ks, [r["seconds"].median * 1e3 for r in sc["seg_query"]], marker="o", label="query")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("[SEG] masks per answer")
    axes[2].set_ylabel("ms (median)")
    axes[2].set_title("cost vs number of masks")
    axes[2].legend()
    fig.suptitle(f"Pixel-SAIL scaling ({sc['config']} config)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
