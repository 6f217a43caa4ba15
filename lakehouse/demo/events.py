"""Click-stream events as JSON lines, with the defects real event feeds carry."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

from lakehouse.demo.clock import from_micros, seasonal_times, to_micros
from lakehouse.demo.manifest import Manifest
from lakehouse.demo.orders import Catalogue

EVENT_TYPES = ("page_view", "click", "purchase")
EVENT_TYPE_SHARES = (0.7, 0.25, 0.05)
# Each line carries at most one defect, so the manifest's counts are exact.
EVENT_DEFECTS = (
    "malformed_line",  # not a JSON object: truncated, an HTML error page, a JSON array
    "missing_event_id",
    "unknown_event_type",
    "bad_timestamp",
    "duplicate_event",  # an earlier event again, same event_id, possibly from another file
    "late_event",  # a valid event whose timestamp is 2-8 hours before the file's window
)
MALFORMED = ("truncated", "<html><body>502 Bad Gateway</body></html>", "[1, 2, 3]")
BAD_TIMESTAMPS = ("2026-13-45T25:61:00Z", "yesterday", "", "1700000000")
HOUR_US = 3_600_000_000
EVENTS_FOLDER = "events"


def _timestamp_text(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _event(rng: np.random.Generator, micros: int, user_id: int | None, product_id: int) -> dict:
    kind = EVENT_TYPES[rng.choice(3, p=EVENT_TYPE_SHARES)]
    if kind == "page_view":
        properties = {
            "page": f"/products/{product_id}",
            "referrer": str(rng.choice(["search", "ad", "direct"])),
        }
    elif kind == "click":
        properties = {
            "element": str(rng.choice(["add_to_cart", "wishlist", "details"])),
            "product_id": product_id,
        }
    else:
        properties = {
            "order_value": round(float(rng.lognormal(3.5, 0.7)), 2),
            "items": int(1 + rng.poisson(1.5)),
        }
    return {
        "event_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        "user_id": user_id,
        "event_type": kind,
        "timestamp": _timestamp_text(micros),
        "properties": properties,
    }


def event_lines(
    rng: np.random.Generator,
    n: int,
    start: datetime,
    end: datetime,
    user_ids: np.ndarray,
    user_weights: np.ndarray,
    product_ids: np.ndarray,
    rates: dict[str, float],
    earlier: list[str],
) -> tuple[list[str], dict[str, int]]:
    """`n` lines for one file covering (start, end]; clean lines are appended to `earlier`."""
    probabilities = [rates[name] for name in EVENT_DEFECTS]
    defect = rng.choice(len(EVENT_DEFECTS) + 1, size=n, p=[*probabilities, 1 - sum(probabilities)])
    times = seasonal_times(rng, start, end, n)
    users = rng.choice(user_ids, size=n, p=user_weights)
    anonymous = rng.random(n) < 0.08
    products = rng.choice(product_ids, size=n)
    counts = dict.fromkeys(EVENT_DEFECTS, 0)
    lines = []
    for i in range(n):
        name = EVENT_DEFECTS[defect[i]] if defect[i] < len(EVENT_DEFECTS) else None
        if name == "duplicate_event" and earlier:
            lines.append(earlier[int(rng.integers(len(earlier)))])
            counts[name] += 1
            continue
        moment = int(times[i])
        if name == "late_event":
            moment = to_micros(start) - int(rng.integers(2 * HOUR_US, 8 * HOUR_US))
        event = _event(rng, moment, None if anonymous[i] else int(users[i]), int(products[i]))
        if name == "missing_event_id":
            del event["event_id"]
        elif name == "unknown_event_type":
            event["event_type"] = "scroll"
        elif name == "bad_timestamp":
            event["timestamp"] = BAD_TIMESTAMPS[int(rng.integers(len(BAD_TIMESTAMPS)))]
        line = json.dumps(event, separators=(",", ":"))
        if name == "malformed_line":
            variant = MALFORMED[int(rng.integers(len(MALFORMED)))]
            line = line[: len(line) // 2] if variant == "truncated" else variant
        elif name in (None, "late_event"):
            earlier.append(line)
        if name in counts and name != "duplicate_event":
            counts[name] += 1
        lines.append(line)
    return lines, counts


def write_event_file(folder: Path, name: str, lines: list[str]) -> Path:
    """Write atomically (temp file, then rename) so a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = folder / f".{name}.partial"
    partial.write_text("".join(f"{line}\n" for line in lines))
    partial.rename(target)
    return target


def write_event_files(
    rng: np.random.Generator,
    landing: Path,
    manifest: Manifest,
    catalogue: Catalogue,
    windows: list[tuple[datetime, datetime]],
    per_file: int,
    batch: int,
) -> tuple[dict[str, int], dict[str, int]]:
    earlier: list[str] = []
    files, defects = {}, dict.fromkeys(EVENT_DEFECTS, 0)
    for number, (start, end) in enumerate(windows):
        lines, counts = event_lines(
            rng,
            per_file,
            start,
            end,
            catalogue.customer_ids,
            catalogue.customer_weights,
            catalogue.product_ids,
            manifest.defect_rates,
            earlier,
        )
        # Names sort by arrival: the window's end, then batch and file number for uniqueness.
        name = f"events_{end:%Y%m%dT%H%M%S}_{batch:05d}_{number:02d}.jsonl"
        write_event_file(landing / EVENTS_FOLDER, name, lines)
        files[name] = len(lines)
        for key, count in counts.items():
            defects[key] += count
    return files, defects
