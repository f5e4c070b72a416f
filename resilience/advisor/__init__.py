"""The advisor: findings from measured statistics and the policy changes they
suggest.

- `counters`: the few per-call counts the rules need that the rollups did not
  keep (retried calls that recovered, 429s, which local limit rejected a call,
  repeated cacheable fetches), added to each rollup row's `signals`;
- `data`: every upstream's rollups for the windows the rules compare, read in
  a handful of bulk queries (never the call log);
- `rules`: one function per finding, each returning its evidence (figures,
  windows, threshold) and, where a policy change can help, a proposal;
- `services`: the advisor run (findings, stored suggestions), apply / dismiss /
  roll back through the policy's history, the effect report;
- `benchmark`, `resources`: the benchmark run and the per-process resource
  snapshots.
"""
