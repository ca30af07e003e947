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
| LOOPWISE_TRAINER_EPOCHS / _BATCH_SIZE / _LR | 3 / 1024 / 0.01 | optimisation (Adam) |
| LOOPWISE_TRAINER_BT_WEIGHT | 1.0 | weight of the Bradley-Terry term on preference pairs |
| LOOPWISE_TRAINER_MAX_WEIGHT | 100.0 | extra clip on the examples' IPS weights |
| LOOPWISE_TRAINER_HOLDOUT_FRACTION | 0.1 | most recent slice (by time) held out for the gate |
| LOOPWISE_TRAINER_TOLERANCE_* | see below | how much worse than production a candidate may be |
| LOOPWISE_TRAINER_PARITY_TOL | 1e-4 | max abs difference ONNX vs torch, else the export is refused |
| LOOPWISE_TRAINER_DEVICE | auto | auto (CUDA when available), cpu or cuda |
"""

from __future__ import annotations

from dataclasses import dataclass

from loopwise.settings import BaseSettings


@dataclass(frozen=True)
class TrainerSettings(BaseSettings):
    metrics_port: int = 9104
    group_id: str = "loopwise-trainer"
    data_dir: str = ".loopwise/trainer"
    default_model: str = "ranker"
    # Kafka consumer: short session timeout (fast group joins on Tansu),
    # records per poll, and how often the window is flushed and offsets committed.
    session_timeout_s: float = 6.0
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
    trainer_epochs: int = 3
    trainer_batch_size: int = 1024
    trainer_lr: float = 0.01
    trainer_weight_decay: float = 0.0
    # Sparse gradients + SparseAdam for the embedding table (lazy Adam), Adam for the rest.
    trainer_sparse_embedding: bool = True
    trainer_bt_weight: float = 1.0
    trainer_max_weight: float = 100.0
    trainer_seed: int = 0
    trainer_device: str = "auto"
    trainer_threads: int = 0
    # Validation gate: candidate metric vs production metric on the holdout.
    trainer_holdout_fraction: float = 0.1
    trainer_min_holdout: int = 200
    trainer_tolerance_auc: float = 0.002
    trainer_tolerance_gauc: float = 0.005
    trainer_tolerance_logloss: float = 0.005
    trainer_tolerance_ece: float = 0.02
    trainer_ece_bins: int = 15
    # ONNX export.
    trainer_parity_tol: float = 1e-4
    trainer_parity_rows: int = 512
