"""What a finished job or batch hands back: the figures of the CLI's summary line and of
the store's ``progress.json``, as Python objects (``pipeline.upscale`` returns a
:class:`Result`, ``pipeline.upscale_batch`` a :class:`BatchResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import Cancelled, Error, Interrupted, JobFailed, Terminated


@dataclass(frozen=True)
class Result:
    """One finished job. Counts cover the whole job; ``*_run`` is what this call ran and
    ``*_resumed`` what it took over from the job store of an earlier, stopped run.

    ``output``: the published file or folder; ``seconds``: wall time of the call;
    ``out_megapixels``: output pixels of every frame, in millions; ``frames``: frames in
    the output (1 for an image); ``frames_resumed``: video frames in segments encoded
    before this call; ``regions_total``/``regions_run``: upscale work units;
    ``segments_total``/``segments_run``: video encode segments; ``scratch_peak_bytes``:
    the job store's largest sampled size (video; None for images); ``model_busy``: the
    region workers' share of time in the model (``pipeline.store.progress.ModelBusy``; None
    when no region ran); ``model``: the
    upscaler's name; ``weights``: the S3Diff weights directory the driver resolved (None
    for models without weights; no content fingerprint is computed); ``store_url``: the
    job store; ``store_kept``: whether it is still there (``store.keep``).
    """

    output: str
    seconds: float
    out_megapixels: float
    frames: int
    regions_total: int
    regions_run: int
    store_url: str
    segments_total: int = 0
    segments_run: int = 0
    scratch_peak_bytes: int | None = None
    model_busy: float | None = None
    input: str = ""
    frames_resumed: int = 0
    model: str = ""
    weights: str | None = None
    store_kept: bool = False

    @property
    def regions_resumed(self) -> int:
        return self.regions_total - self.regions_run

    @property
    def segments_resumed(self) -> int:
        return self.segments_total - self.segments_run

    @property
    def frames_run(self) -> int:
        return self.frames - self.frames_resumed

    @property
    def mp_per_s(self) -> float:
        """Output megapixels per second of wall time."""
        return self.out_megapixels / max(self.seconds, 1e-9)

    def line(self) -> str:
        """The CLI's summary line."""
        resumed = self.regions_resumed
        extra = f", {resumed} resumed from the store" if resumed else ""
        frames = f"{self.frames} frames, " if self.frames > 1 else ""
        if self.segments_total:
            extra += f", {self.segments_run}/{self.segments_total} segments encoded"
        if self.model_busy is not None:
            extra += f", {busy_text(self.model_busy)}"
        return (
            f"done in {self.seconds:.1f} s: {frames}{self.out_megapixels:.1f} output "
            f"megapixels ({self.mp_per_s:.1f} MP/s), {self.regions_run}/{self.regions_total} "
            f"regions run{extra} -> {self.output}"
        )


@dataclass
class ItemResult:
    """One item of a batch (one line of its JSON report). ``status``: done | skipped |
    failed | terminated | cancelled | interrupted | pending; ``error``: the one-line
    reason when not done."""

    input: str
    output: str
    status: str = "pending"
    frames: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    mp_per_s: float = 0.0
    regions_run: int = 0
    regions_total: int = 0
    segments_run: int = 0  # video: encode segments run / in all
    segments_total: int = 0
    scratch_peak_bytes: int | None = None
    model_busy: float | None = None  # share of the region workers' time in the model
    store: str | None = None
    error: str | None = None
    overrides: list[str] = field(default_factory=list)


STOPPED_STATUSES = ("terminated", "cancelled", "interrupted")


def exit_code(reports: list[ItemResult]) -> int:
    """0: every item done or skipped; 3: some failed; 75: stopped (none failed)."""
    statuses = {r.status for r in reports}
    if "failed" in statuses:
        return JobFailed.exit_code
    if statuses - {"done", "skipped"}:
        return Interrupted.exit_code
    return 0


def format_table(reports: list[ItemResult]) -> str:
    rows = [("#", "status", "frames", "MP", "time s", "MP/s", "busy", "output / error")]
    for i, r in enumerate(reports, 1):
        tail = r.output + (f"  ({r.error})" if r.error else "")
        rows.append(
            (
                str(i),
                r.status,
                str(r.frames) if r.frames else "-",
                f"{r.megapixels:.1f}" if r.megapixels else "-",
                f"{r.seconds:.1f}" if r.seconds else "-",
                f"{r.mp_per_s:.2f}" if r.mp_per_s else "-",
                f"{r.model_busy * 100:.0f}%" if r.model_busy is not None else "-",
                tail,
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(7)]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(row[:7], widths, strict=True)) + "  " + row[7]
        for row in rows
    ]
    counts: dict[str, int] = {}
    for r in reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


@dataclass
class BatchResult:
    """A finished batch: one :class:`ItemResult` per item, in order, and where the JSON
    report was written (None: no report). One item's failure is data here, as in the
    CLI's report; :meth:`check` raises it."""

    items: list[ItemResult]
    report: str | None = None

    @property
    def ok(self) -> bool:
        """Every item is done or skipped."""
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 0 all done or skipped, 3 some failed, 75 stopped."""
        return exit_code(self.items)

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.items:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def table(self) -> str:
        """The CLI's table of items."""
        return format_table(self.items)

    def error_line(self) -> str | None:
        """The CLI's one-line error for the items not done (None when all are)."""
        bad = [r for r in self.items if r.status not in ("done", "skipped")]
        if not bad:
            return None
        return f"{len(bad)} of {len(self.items)} item(s) not done: " + "; ".join(
            f"{r.input} ({r.status})" for r in bad[:10]
        )

    def check(self) -> BatchResult:
        """Raise unless every item is done or skipped: :class:`JobFailed` when one
        failed, else :class:`Terminated`/:class:`Cancelled`/:class:`Interrupted` for a
        stopped batch (resumable: run it again). Returns self, for chaining."""
        line = self.error_line()
        if line is None:
            return self
        statuses = {r.status for r in self.items}
        kind: type[Error] = JobFailed
        if "failed" not in statuses:
            kind = {"terminated": Terminated, "cancelled": Cancelled}.get(
                next((s for s in STOPPED_STATUSES if s in statuses), ""), Interrupted
            )
        raise kind(line)


def busy_text(fraction: float | None) -> str:
    """How summaries, ``status`` and batch reports say the region workers' share of time
    in the model (``pipeline.store.progress.ModelBusy``): "model busy 87%"."""
    return "" if fraction is None else f"model busy {fraction * 100:.0f}%"
