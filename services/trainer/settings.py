"""Trainer settings (LOOPWISE_* environment variables, see loopwise.settings).

| variable | default | meaning |
|---|---|---|
| LOOPWISE_METRICS_PORT | 9104 | Prometheus metrics port (0 = any free port, -1 = off) |
| LOOPWISE_GROUP_ID | loopwise-trainer | Kafka consumer group (offsets committed after the window is on disk) |
| LOOPWISE_DATA_DIR | .loopwise/trainer | the replay window's directory |
| LOOPWISE_DEFAULT_MODEL | ranker | model of records that name none |
| LOOPWISE_TRAINER_INTERVAL_S | 600 | a run every T seconds per (tenant, model) with new data ... |
| LOOPWISE_TRAINER_EVERY_N | 50000 | ... or every N new examples, whichever first |
| LOOPWISE_TRAINER_MIN_EXAMPLES | 1000 | no run with fewer examples in the window |
| LOOPWISE_TRAINER_WINDOW_ROWS | 500000 | replay window bound per (tenant, model) and kind (oldest segments dropped) |
| LOOPWISE_TRAINER_SEGMENT_ROWS | 20000 | rows per window segment |
| LOOPWISE_TRAINER_EMBEDDING_DIM / _LAYERS / _HIDDEN_DIM | 16 / (none) / 64 | model of a fresh start |
| LOOPWISE_TRAINER_FM_DIM | 16 | factorisation-machine interaction term over the fields (0: off) |
| LOOPWISE_TRAINER_LINEAR | true | first-order per-id weights |
| LOOPWISE_TRAINER_CROSSES / _CROSS_BUCKETS | request.user_id*candidate.id / 2^22 | hashed pair weights of two fields (comma separated "a*b"; empty: none) |
| LOOPWISE_TRAINER_INCREMENTAL | true | a warm start trains only on examples after production's newest training example |
| LOOPWISE_TRAINER_EPOCHS / _BATCH_SIZE / _LR | 1 / 128 / 0.001 | optimisation (Adam for the dense layers) |
| LOOPWISE_TRAINER_WARM_LR | 1e-4 | Adam rate of the dense layers on an incremental warm start (0: _LR) |
| LOOPWISE_TRAINER_EMBEDDING_OPTIMIZER / _EMBEDDING_LR | adagrad / 0.03 | embedding and FM tables (row-wise Adagrad, state kept with the weights; or adam) |
| LOOPWISE_TRAINER_LINEAR_LR / _CROSS_LR | 0.3 / 3.0 | Adagrad rate of the first-order / cross tables (0: _LR / _LINEAR_LR) |
| LOOPWISE_ATTRIBUTION_WINDOW_MS | 1800000 | window-mode examples this close to the window's newest impression wait for the next run (fake-negative-mode ones train at once) |
| LOOPWISE_TRAINER_BT_WEIGHT | 1.0 | weight of the Bradley-Terry term on preference pairs |
| LOOPWISE_TRAINER_MAX_WEIGHT | 100.0 | extra clip on the examples' IPS weights |
| LOOPWISE_TRAINER_WEIGHTING | loss | IPS weights as loss factors (loss) or sampling frequencies (sample) |
| LOOPWISE_TRAINER_ADAGRAD_INITIAL / _CROSS_ADAGRAD_INITIAL | 0 / 0 | starting value of the tables' / cross table's Adagrad accumulators |
| LOOPWISE_TRAINER_HOLDOUT_FRACTION | 0.1 | most recent slice (by time) held out for the gate |
| LOOPWISE_TRAINER_TOLERANCE_* | see below | how much worse than production a candidate may be |
| LOOPWISE_TRAINER_TOLERANCE_SE | 1.0 | ... or that many standard errors of the paired difference, if larger |
| LOOPWISE_TRAINER_CALIBRATE | true | Platt-recalibrate each candidate on its holdout (folded into its weights) before the gate |
| LOOPWISE_TRAINER_FOLD_HOLDOUT | true | a candidate that passed the gate learns its holdout (its newest examples) on its sparse tables, in time order, before it is exported (`train.fold_recent`) |
| LOOPWISE_TRAINER_GATE_STATIC | true | the gate also refuses a candidate whose holdout AUC is below the static (cold-start) model's (tolerance _AUC or _SE paired standard errors) |
| LOOPWISE_TRAINER_WATCHDOG | true | production watchdog (watchdog.py): roll the pointer back when the serving version's online AUC is below the static model's |
| LOOPWISE_TRAINER_WATCHDOG_MARGIN / _Z | 0.005 / 3.0 | ... below by more than the margin plus Z DeLong standard errors of the paired difference ... |
| LOOPWISE_TRAINER_WATCHDOG_MIN_LABELS / _WINDOW | 2000 / 20000 | ... on at least that many final labels (a tenth of each class), the newest _WINDOW |
| LOOPWISE_TRAINER_WATCHDOG_COOLDOWN_S | 30 | no second rollback of a model for that long |
| LOOPWISE_TRAINER_WATCHDOG_CANDIDATES | 3 | earlier versions scored on the judged rows for the rollback target (else the cold-start version) |
| LOOPWISE_TRAINER_WATCHDOG_CHECK_S / _MAX_PENDING | 1.0 / 50000 | how often final labels are judged / rows waiting for a final label, at most |
| LOOPWISE_TRAINER_PARITY_TOL | 1e-4 | max abs difference ONNX vs torch, else the export is refused |
| LOOPWISE_TRAINER_DEVICE | auto | auto (CUDA when available), cpu or cuda |
| LOOPWISE_DELTAS | true | sparse deltas between full versions (deltas.py): steps on the sparse tables, published on loopwise.deltas.v1 |
| LOOPWISE_TRAINER_DELTA_INTERVAL_S / _DELTA_EVERY_N | 0.1 / 2000 | a delta step every T seconds with new examples, or at N new examples (see the README: 0.1 s measured better than 0.5 s) |
| LOOPWISE_TRAINER_DELTA_MAX_BUFFER | 100000 | examples waiting for a delta step, at most (the oldest dropped) |
| LOOPWISE_TRAINER_DELTA_CATCHUP_ROWS | 100000 | examples a new base has not learned (requeued) taken into one delta step, at most: its catch-up in one delta |
| LOOPWISE_TRAINER_DELTA_RESTREAM_S | 30 | a base's delta stream starts again on the same tables this often (replicas whose guard dropped it try again; 0: never) |
"""

from __future__ import annotations

from dataclasses import dataclass

from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.settings import BaseSettings


@dataclass(frozen=True)
class TrainerSettings(BaseSettings):
    metrics_port: int = 9104
    group_id: str = "loopwise-trainer"
    data_dir: str = ".loopwise/trainer"
    default_model: str = DEFAULT_MODEL
    # Kafka consumer: short session timeout (fast group joins on Tansu),
    # records per poll, and how often the window is flushed and offsets committed.
    kafka_session_timeout_s: float = 6.0
    poll_records: int = 10_000
    commit_interval_s: float = 2.0
    # Triggers, per (tenant, model).
    trainer_interval_s: float = 600.0
    trainer_every_n: int = 50_000
    trainer_min_examples: int = 1_000
    trainer_check_s: float = 1.0
    # Replay window on local disk.
    trainer_window_rows: int = 500_000
    trainer_segment_rows: int = 20_000
    # Model and optimisation (a warm start keeps the parent's sizes).
    trainer_embedding_dim: int = 16
    # Widths of extra ReLU layers before the hidden layer, comma separated
    # (none: the cold-start shape, so the first run starts from its prior).
    trainer_layers: tuple[str, ...] = ()
    trainer_hidden_dim: int = 64
    # Factorisation-machine interaction term over the fields (0: off).
    trainer_fm_dim: int = 16
    # First-order per-id weights (an Embedding(buckets, 1) summed over the fields).
    trainer_linear: bool = True
    # Hashed crosses of two sparse fields, "a*b" by spec name (VW's -q), one weight per pair.
    trainer_crosses: tuple[str, ...] = ("request.user_id*candidate.id",)
    trainer_cross_buckets: int = 1 << 22
    # Warm starts train only on the examples after the production model's newest
    # training example (each example is learned once, like an online learner);
    # false: every run trains on the whole window.
    trainer_incremental: bool = True
    trainer_epochs: int = 1
    trainer_batch_size: int = 128
    trainer_lr: float = 0.001
    # Adam rate of the dense layers on an incremental warm start (Adam's moments are not
    # kept between runs, and a restarted Adam moves every weight by ~lr at once; 0: trainer_lr).
    trainer_warm_lr: float = 1e-4
    # Learning rate of the first-order and cross weight tables (0: trainer_lr).
    trainer_linear_lr: float = 0.3
    # Adagrad rate of the cross table (0: trainer_linear_lr): a pair's first sighting moves
    # its weight by about this much (a pair seen as a negative is a negative again).
    trainer_cross_lr: float = 3.0
    # Optimiser of the embedding and FM tables: "adagrad" (row-wise, its state kept with
    # the weights) at trainer_embedding_lr, or "adam" (SparseAdam at trainer_lr, restarted each run).
    trainer_embedding_optimizer: str = "adagrad"
    trainer_embedding_lr: float = 0.03
    # Starting value of the Adagrad accumulators (tables / cross table): above a gradient's
    # square, a row's first steps scale with its gradient, so with the example's IPS weight.
    trainer_adagrad_initial: float = 0.0
    trainer_cross_adagrad_initial: float = 0.0
    trainer_weight_decay: float = 0.0
    # Sparse gradients + SparseAdam for the embedding table (lazy Adam), Adam for the rest.
    trainer_sparse_embedding: bool = True
    trainer_bt_weight: float = 1.0
    trainer_max_weight: float = 100.0
    # How the examples' IPS weights are applied: "loss" (every row once, the loss scaled)
    # or "sample" (rows drawn in proportion to their weights, bounded gradients: the
    # weights fully respected; measured worse on bench/debiasing.py, see the trainer README).
    trainer_weighting: str = "loss"
    trainer_seed: int = 0
    trainer_device: str = "auto"
    # torch's threads for training and delta steps; 0: the CPUs this process may use
    # (`loopwise.runtime.cpu_budget`: its affinity capped by its cgroup's CPU quota, e.g. the
    # chart's trainer CPU limit), not torch's default of one per core of the node.
    trainer_threads: int = 0
    # Examples whose impression time is within this of the window's newest impression
    # are not used yet (their no-feedback negatives have not arrived); the miner's setting.
    attribution_window_ms: int = 30 * 60 * 1000
    # Validation gate: candidate metric vs production metric on the holdout.
    trainer_holdout_fraction: float = 0.1
    trainer_min_holdout: int = 200
    trainer_tolerance_auc: float = 0.002
    trainer_tolerance_gauc: float = 0.005
    trainer_tolerance_logloss: float = 0.005
    trainer_tolerance_ece: float = 0.02
    # ... or this many standard errors of the difference, when larger (a small holdout's
    # AUC moves by a few points by chance; 0: the fixed tolerances only).
    trainer_tolerance_se: float = 1.0
    trainer_ece_bins: int = 15
    # Platt scaling of each candidate on the gate's holdout, folded into its parameters
    # (`model.Ranker.fold_calibration`): monotone, so AUC and gAUC are unchanged.
    trainer_calibrate: bool = True
    # A candidate that passed the gate learns its holdout's rows on its sparse tables (as the
    # deltas would once it serves) before export (`train.fold_recent`).
    trainer_fold_holdout: bool = True
    # The gate also compares the candidate with the static cold-start model on the holdout
    # (paired DeLong standard error; `gate.evaluate`): a candidate below it is refused.
    trainer_gate_static: bool = True
    # Production watchdog (watchdog.py): the serving version's online AUC on final labels
    # against the static model's on the same rows; below by margin + z standard errors
    # on at least min_labels (the newest `window`): the pointer goes back.
    trainer_watchdog: bool = True
    trainer_watchdog_margin: float = 0.005
    trainer_watchdog_z: float = 3.0
    trainer_watchdog_min_labels: int = 2_000
    trainer_watchdog_window: int = 20_000
    trainer_watchdog_cooldown_s: float = 30.0
    trainer_watchdog_candidates: int = 3
    trainer_watchdog_check_s: float = 1.0
    trainer_watchdog_max_pending: int = 50_000
    # Sparse deltas (deltas.py): small steps on the sparse tables between full versions,
    # every delta_interval_s with new examples or at delta_every_n of them.
    deltas: bool = True
    trainer_delta_interval_s: float = 0.1
    trainer_delta_every_n: int = 2000
    trainer_delta_max_buffer: int = 100_000
    # Requeued examples (a new base has not learned them) taken into one step, at most.
    trainer_delta_catchup_rows: int = 100_000
    # A base's delta stream starts again (same tables, every changed row re-sent) this often:
    # replicas whose guard dropped it try again (0: never).
    trainer_delta_restream_s: float = 30.0
    # ONNX export.
    trainer_parity_tol: float = 1e-4
    trainer_parity_rows: int = 512
