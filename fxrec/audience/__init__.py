"""fxrec's audience tools: who an advertiser's targeting reaches, before the campaign runs.

- `population`: a simulated population of users with targetable attributes and noisy data providers,
  in seeded chunks; `events`: a population folded from an event log (real tables, via the importer);
- `schema`: the targetable fields and the columnar form of users;
- `query`: the targeting language (grammar, errors); `evaluate`: a query over users, exactly;
- `strata`: stratification learned from past logs, Neyman allocation; `sample`: two-pass sampling;
- `reach`: `ReachIndex.query(expr) -> Estimate` (users and impressions, with intervals and the fuzzy
  fall-back); `build`: a ReachIndex from a population in chunks;
- `statistics`: the sample rows' partial sums a query needs (additive over shards), which
  `reach.ReachEstimator` turns into the estimate, in process and sharded alike;
- `shards`: the sample on Ray, S shards x R replicas, a dead replica retried around and replaced;
  `stored_index`: a reach index on disk (`fxrec audience build` writes it, `reach` reads it);
- `sketches`: the theta-sketch baseline; `workload`: random advertiser queries;
- `campaigns`: campaigns run over a population and the agency's aggregate truth about them;
  `quality`: a provider's precision and false-positive rate from those aggregates (constrained least
  squares, binomial MLE, cross-validation, qualified reach); `quality_report`: every provider ranked.
"""
