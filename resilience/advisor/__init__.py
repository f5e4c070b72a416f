"""The advisor: findings from measured statistics and the policy changes they
suggest.

- `data`: every upstream's rollups for the windows the rules compare, read in
  a handful of bulk queries (never the call log);
- `rules`: one function per finding, each returning its evidence (figures,
  windows, threshold) and, where a policy change can help, a proposal;
- `services`: the advisor run (findings, stored suggestions), apply / dismiss /
  roll back through the policy's history, the effect report;
- `benchmark`, `resources`: the benchmark run and the per-process resource
  snapshots.

The per-call counts the rules read (`signals` on rollup rows) are kept by
resilience.telemetry.counters. `tasks` declares the scheduled run.

Who may import it: the edges (its `views` and `admin`, the ops dashboards,
management commands). It imports jobs, telemetry, the client and storage.
"""
