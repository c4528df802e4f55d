"""Parses each node's /metrics (the files named) with the reference OpenMetrics parser of
prometheus_client, which refuses anything the format does not allow, checks that the families
a dashboard needs are there with the right types, and that the nodes counted records written."""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

want = {
    "millrace_node": "info",
    "millrace_produce_seconds": "histogram",
    "millrace_get_records_seconds": "histogram",
    "millrace_flush_round_seconds": "histogram",
    "millrace_fsyncs": "counter",
    "millrace_stream_records_written": "counter",
    "millrace_raft_groups_led": "gauge",
}
written = 0
for path in sys.argv[1:]:
    with open(path) as f:
        families = {f.name: f for f in text_string_to_metric_families(f.read())}
    for name, kind in want.items():
        if name not in families:
            sys.exit(f"{path}: no {name}")
        if families[name].type != kind:
            sys.exit(f"{path}: {name} is a {families[name].type}, not a {kind}")
    written += sum(
        s.value
        for s in families["millrace_stream_records_written"].samples
        if s.name.endswith("_total")
    )
if written < 1:
    sys.exit("/metrics: no node counted a record written")
print(f"openmetrics: {len(sys.argv) - 1} nodes parsed, {written:.0f} records written counted")
