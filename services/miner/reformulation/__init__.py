"""Reformulation mining: sessions, defects, absorbing Markov chain, rewrite rules, rollback.

Pure Python/numpy/scipy, no Kafka (Ponnusamy et al., arXiv 1911.02557; see
docs/methods.md §2):

* `sessions` - `TurnRecord` (from a Turn event), `SessionState` per (tenant, user);
* `session_book` - `SessionBook`: every user's open session over a key -> bytes
  mapping, closed by turn gaps and per-partition watermarks;
* `defects` - `label_session`: defect kinds per turn and rephrase links;
* `chain` - `Chain`: decayed transition weights, distinct-user sketches,
  absorption probabilities solved per touched component;
* `rules` - `select_rules`, `Rule` (table value, audit record), `Blocklist`;
* `spans` - `SpanStats`, `select_span_rules`: entity-level rules from replaced spans;
* `carriers` - `learn_carriers`, `select_carrier_rules`: whole-utterance rules from the
  evidence of the utterances that differ only by their carrier phrase;
* `canary` - `CanaryMonitor`: a new rule on a share of users against its control;
* `rollback` - `RuleMonitor`: withdraw rules whose rewritten turns do worse;
* `pipeline` - `TenantMiner`: all of the above for one tenant, sessions in,
  rewrite-table changes out;
The offline end-to-end check on the assistant simulator lives with the
benchmarks (`bench/_reformulation_offline.py`).
"""
