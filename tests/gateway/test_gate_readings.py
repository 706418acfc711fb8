"""The gate's view of the replicas' load: a scraped sample is converted once, and a new sample is seen at once."""

from __future__ import annotations

from dataclasses import dataclass

from sluice.engines import LoadSample
from sluice.gateway._gates import _ReadingsOf


@dataclass
class _Replica:
    url: str


class _Replicas:
    def __init__(self, *urls: str) -> None:
        self.set(*urls)

    def set(self, *urls: str) -> None:
        self._routable = tuple(_Replica(u) for u in urls)

    def routable(self) -> tuple[_Replica, ...]:
        return self._routable


class _Scraper:
    def __init__(self) -> None:
        self.samples: dict[str, LoadSample] = {}

    def latest(self, url: str) -> LoadSample | None:
        return self.samples.get(url)


def test_a_sample_is_converted_once_and_a_new_one_replaces_it() -> None:
    replicas, scraper = _Replicas("http://a", "http://b"), _Scraper()
    readings = _ReadingsOf(replicas, scraper)  # type: ignore[arg-type]
    scraper.samples["http://a"] = LoadSample(running=3, waiting=1, kv_usage=0.25, scraped_at=10.0)
    first = readings()
    assert first[1] is None  # never scraped
    assert first[0] is not None and (first[0].running, first[0].kv_usage, first[0].read_at_s) == (3, 0.25, 10.0)
    assert readings()[0] is first[0]  # the same sample: not converted again
    scraper.samples["http://a"] = LoadSample(running=5, waiting=0, kv_usage=0.5, scraped_at=10.2)
    newer = readings()[0]
    assert newer is not None and (newer.running, newer.kv_usage, newer.read_at_s) == (5, 0.5, 10.2)


def test_replicas_that_left_are_forgotten() -> None:
    replicas, scraper = _Replicas(), _Scraper()
    readings = _ReadingsOf(replicas, scraper)  # type: ignore[arg-type]
    for i in range(100):  # a fleet that changes: one replica at a time, each scraped
        url = f"http://r{i}"
        replicas.set(url)
        scraper.samples[url] = LoadSample(running=i, waiting=0, kv_usage=0.1, scraped_at=float(i))
        assert [r.running if r else None for r in readings()] == [i]
    assert len(readings._converted) <= 2 * 1 + 8 + 1
