"""The summary as text for the terminal: the headline figures, latencies, errors and one row per tenant."""

from __future__ import annotations

from typing import Any


def render(summary: dict[str, Any]) -> str:
    req, thr, good = summary["requests"], summary["throughput"], summary["goodput"]
    slo = summary["slo"]
    lines = [
        f"duration                {summary['duration_s']:.2f} s",
        f"requests                {req['sent']} sent, {req['succeeded']} ok, {req['failed']} failed "
        f"({req['rejected']} rejected: {100 * req['rejection_rate']:.1f}%)",
        f"request throughput      {thr['requests_per_s']:.2f} req/s",
        f"output token throughput {thr['output_tokens_per_s']:.1f} tok/s "
        f"(total incl. prompt {thr['total_tokens_per_s']:.1f} tok/s)",
        f"goodput                 {good['requests_per_s']:.2f} req/s, {100 * good['fraction_of_sent']:.1f}% of sent "
        f"meet TTFT <= {_slo(slo['ttft_s'])} and TPOT <= {_slo(slo['tpot_s'])}; rejection rate "
        f"{100 * good['rejection_rate']:.1f}%",
        f"fairness (Jain)         {summary['fairness']['jain_output_throughput_per_weight']:.3f} on tokens/s per "
        f"weight, {summary['fairness']['jain_success_fraction']:.3f} on success fraction "
        f"({summary['fairness']['tenants']} tenant(s))",
        "",
        _grid(["latency (ms)", "mean", "p50", "p90", "p95", "p99", "max", "n"],
              [[name.upper(), *_row(summary["latency_ms"][name])] for name in ("ttft", "tpot", "itl", "e2e")]),
    ]
    errors = summary["errors"]
    if errors["by_status"]:
        lines += ["", "errors by status: " + ", ".join(f"{k}: {v}" for k, v in errors["by_status"].items()),
                  "errors by reason: " + ", ".join(f"{k}: {v}" for k, v in errors["by_reason"].items()),
                  "most common errors:"]
        lines += [f"  {e['count']:>6} x {e['error']}" for e in errors.get("most_common", ())]
    if len(summary["tenants"]) > 1:
        rows = []
        for name, t in summary["tenants"].items():
            ttft = t["latency_ms"]["ttft"] or {}
            rows.append([name, str(t["requests"]["sent"]), str(t["requests"]["succeeded"]),
                         str(t["requests"]["rejected"]), f"{t['throughput']['requests_per_s']:.2f}",
                         f"{t['throughput']['output_tokens_per_s']:.1f}", _ms(ttft.get("p50")), _ms(ttft.get("p99")),
                         f"{t['goodput']['requests_per_s']:.2f}"])
        lines += ["", _grid(["tenant", "sent", "ok", "rejected", "req/s", "out tok/s", "TTFT p50", "TTFT p99",
                             "goodput/s"], rows)]
    return "\n".join(lines)


def _slo(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _row(stats: dict[str, float] | None) -> list[str]:
    if stats is None:
        return ["-"] * 7
    return [_ms(stats[k]) for k in ("mean", "p50", "p90", "p95", "p99", "max")] + [str(int(stats["count"]))]


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    out = [_line(header, widths)]
    out.append("  ".join("-" * w for w in widths))
    out += [_line(row, widths) for row in rows]
    return "\n".join(out)


def _line(cells: list[str], widths: list[int]) -> str:
    """The first column left-aligned, the others right-aligned."""
    return "  ".join(
        cell.ljust(width) if i == 0 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )
