"""/metrics: the latest day's counts and latencies in the Prometheus text format (prometheus_client)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from newsletter.operator import DayReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DayCollector(Collector):
    """Gauges for one day's report (the newest), read when scraped."""

    def __init__(self, report: DayReport | None, open_alerts: int) -> None:
        self.report = report
        self.open_alerts = open_alerts

    def collect(self) -> Iterator[Metric]:
        alerts = GaugeMetricFamily("newsletter_alerts_unmailed", "Operator alerts not mailed yet")
        alerts.add_metric([], self.open_alerts)
        yield alerts
        report = self.report
        if report is None:
            return
        day = report.day.isoformat()
        info = GaugeMetricFamily("newsletter_day_info", "The newest announcement day and its run status",
                                 labels=["day", "status"])
        info.add_metric([day, report.status], 1)
        yield info
        announced = GaugeMetricFamily("newsletter_day_announced_papers", "Papers the announcement feed listed",
                                      labels=["day", "type"])
        tally = report.completeness
        for kind in ("new", "cross", "replace"):
            announced.add_metric([day, kind], getattr(tally, kind) if tally else 0)
        yield announced
        yield _gauge("newsletter_day_stored_papers", "Announced papers stored with the API's details", day,
                     tally.stored if tally else 0)
        yield _gauge("newsletter_day_missing_papers", "Announced IDs the API did not return", day,
                     len(tally.missing) if tally else 0)
        yield _gauge("newsletter_day_digests_sent", "Digests the mail server accepted", day, report.sent)
        yield _gauge("newsletter_day_digests_failed", "Digests refused", day, report.failed)
        yield _gauge("newsletter_day_digests_owed", "Digests still owed", day, report.owed)
        yield _gauge("newsletter_day_billed_characters", "DeepL characters billed", day, report.billed_characters)
        stages = GaugeMetricFamily("newsletter_day_stage_seconds", "Seconds per stage of the run",
                                   labels=["day", "stage"])
        for stage, seconds in report.stage_seconds.items():
            stages.add_metric([day, stage], seconds)
        yield stages
        if report.feed_seen_at is not None:
            yield _gauge("newsletter_day_feed_seen_timestamp_seconds", "When the feed first showed the day", day,
                         report.feed_seen_at.timestamp())
        if report.last_accepted_at is not None:
            yield _gauge("newsletter_day_last_accepted_timestamp_seconds",
                         "When the mail server accepted the day's last digest", day,
                         report.last_accepted_at.timestamp())
        if report.latency_seconds is not None:
            yield _gauge("newsletter_day_latency_seconds", "From the feed showing the day to its last digest accepted",
                         day, report.latency_seconds)


def _gauge(name: str, documentation: str, day: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["day"])
    gauge.add_metric([day], value)
    return gauge


def exposition(report: DayReport | None, open_alerts: int) -> bytes:
    """The Prometheus text exposition of the newest day."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DayCollector(report, open_alerts))
    return generate_latest(registry)
