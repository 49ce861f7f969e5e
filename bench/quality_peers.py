"""fxrec's backbones against peer libraries on identical splits and features: test AUC / log loss.

For each dataset (MovieLens-100K, the simulator's log, the Open Bandit import of all six samples) the
log is split chronologically by event id (first 80% train, next 10% valid, last 10% test;
`split_points`), with histories computed once over the whole log (fxrec.train.holdout), and every
model trains on the same rows and the same features: ids, demographics / context, multi-valued lists,
dense columns and the user's last 20 clicks before the event. Embedding dim 16, batch 1024, Adam lr
1e-3 on dense parameters (the peers: Adam everywhere, no regularisation; fxrec's embeddings: its fused
row-wise AdaGrad or Adam, and its batch size, per model as `FXREC_TRAIN` says), at most 6 epochs with
early stopping on validation AUC (patience 1; none on the simulator and Open Bandit, see
PATIENCE_BY_DATASET), the best epoch scored once on test. Mean +- std over seeds.

Models: fxrec DCNv2, DHEN, InterFormer, Kunlun; DeepCTR-Torch's DCN (DCN-M) and DIN model classes;
FuxiCTR's DCNv2 and DIN built from FuxiCTR layers on FuxiCTR's own embedding layer with an in-memory
FeatureMap, trained in a plain Adam loop (bench/_peers.py says why). fxrec's per-model settings
(`FXREC_MODELS`, `FXREC_TRAIN`) were chosen on validation AUC only; `SWEEP` records what was tried.

    python bench/quality_peers.py [--quick] [--out FILE] [--datasets movielens,simulator,open_bandit]
        [--models a,b] [--seeds 3] [--threads 1] [--resume EARLIER.json ...]

`--resume` keeps the (dataset, model) results of earlier runs' JSON files (later files win) and runs
only the models they lack, so models can run as separate processes and be merged into one table.

Every run's test predictions go to `<out>_predictions.npz` beside the JSON (and come back with
`--resume`), for the comparisons' paired bootstrap (fxrec.metrics.bootstrap): the test rows are
resampled by user, both models are scored on each draw, and the 95% interval of the difference of
their seed-mean AUCs is reported with the share of draws where fxrec is ahead. The spread over seeds
says how much training noise there is; this interval adds the test period's own noise, which two
models on the same rows share.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pyarrow as pa
import torch
from _common import ROOT, parse_args, print_table, simulated_log, write_result
from _peers import (
    FUXICTR_MODELS,
    PEER_MODELS,
    feature_columns,
    fit_fuxictr,
    fit_peer,
    frame_to_peer,
    max_lengths,
)

from fxrec.config import ModelConfig, TrainConfig
from fxrec.data.eventlog import EventLog
from fxrec.data.simulator import SimulatorConfig
from fxrec.data.sources import import_movielens_100k, import_open_bandit, movielens_split_points, open_bandit
from fxrec.data.sources.movielens import split_points
from fxrec.metrics.bootstrap import auc_difference
from fxrec.models.ranking import build_model
from fxrec.train.holdout import SplitFrames, fit_holdout, split_by_event_id, split_by_mask
from fxrec.train.trainer import Trainer

CACHE = ROOT / ".cache" / "data"
EMBEDDING_DIM = 16
BATCH_SIZE = 1024
DENSE_LR = 1e-3
HEADS = {"kind": "shared_bottom", "hidden": [128, 64]}
# Final settings (chosen on validation AUC only; see the closing note of the issue for the sweep).
FXREC_MODELS: dict[str, dict[str, Any]] = {
    "fxrec_dcnv2": {
        "name": "dcnv2",
        "num_layers": 2,
        "low_rank": 32,
        "structure": "parallel",
        "deep_layers": [128, 64],
    },
    "fxrec_dhen": {"name": "dhen", "modules": ["dot", "dcn"], "num_layers": 2},
    "fxrec_interformer": {"name": "interformer", "num_layers": 2},
    "fxrec_kunlun": {"name": "kunlun", "num_layers": 2, "interaction_tokens": "all"},
}
# Per-model ModelConfig fields that differ from the shared ones (e.g. `heads`, `target_attention`),
# chosen on valid AUC (see SWEEP_ARCH).
FXREC_CONFIG: dict[str, dict[str, Any]] = {"fxrec_dcnv2": {"min_count": 1}}
# Per-model optimiser settings that differ from the shared ones (TrainConfig fields), chosen on valid AUC.
FXREC_TRAIN: dict[str, dict[str, Any]] = {
    "fxrec_dcnv2": {"batch_size": 8192},
    "fxrec_dhen": {"embedding_optimizer": "adam", "embedding_lr": 5e-4, "embedding_weight_decay": 1e-3},
    "fxrec_interformer": {
        "embedding_optimizer": "adam",
        "embedding_lr": 2e-3,
        "embedding_weight_decay": 1e-3,
    },
    "fxrec_kunlun": {"dense_lr": 3e-3},
}
# Per dataset, a model's whole FXREC_TRAIN entry can be replaced, chosen on that dataset's validation
# AUC (3 seeds, earlier settings vs the MovieLens-tuned ones; see SWEEP_OPTIMIZER). They were chosen on
# the simulator's earlier log (6,000 impressions a day, 24k training rows, where batch 8192 made three
# steps an epoch: DCNv2 valid 0.53 vs 0.62 at batch 1024). On the current log (10x) the two are level
# for DCNv2 (valid 0.6500 vs 0.6496 MovieLens-tuned), so that entry stays. DHEN's MovieLens-tuned entry
# beat its earlier one there, and a sweep on that log's validation then found Adam embeddings at lr 1e-3
# ahead on all three seeds (0.6650 / 0.6685 / 0.6695 vs 0.6574 / 0.6620 / 0.6615). On Open Bandit
# (one 10,000-impression sample, 5 validation positives) the earlier settings had the higher validation
# AUC for all three, and again on the six-sample log the table now uses (32 validation positives; best
# validation AUC over 6 epochs, see SWEEP). Kunlun's dense_lr 3e-3 and TrainConfig defaults are level
# there (0.588 vs 0.589), so it keeps FXREC_TRAIN's entry.
FXREC_TRAIN_BY_DATASET: dict[str, dict[str, dict[str, Any]]] = {
    "simulator": {
        "fxrec_dcnv2": {},
        "fxrec_dhen": {**FXREC_TRAIN["fxrec_dhen"], "embedding_lr": 1e-3},
        "fxrec_interformer": {},
    },
    "open_bandit": {"fxrec_dcnv2": {}, "fxrec_dhen": {"embedding_lr": 0.02}, "fxrec_interformer": {}},
}
# The sweep behind those settings: MovieLens, seed 0 unless noted, best validation AUC (epochs in order).
# Test AUC was not looked at. input_norm was a trial LayerNorm on the tokens before the first layer
# (not kept in fxrec: it did not help either model).
SWEEP: dict[str, dict[str, Any]] = {
    "fxrec_dcnv2": {
        "defaults (embedding_lr 0.05, low_rank 32)": [0.6937, 0.6908, 0.6899],
        "embedding_lr 0.02": [0.6934, 0.6937, 0.6916],
        "embedding_lr 0.01": [0.6904, 0.6940, 0.6948, 0.6930],
        "embedding_lr 0.005": [0.6854, 0.6917, 0.6939, 0.6941, 0.6939],
        "embedding_lr 0.01, low_rank 128": [0.6880, 0.6897, 0.6896],
        "seed 1, defaults": [0.6925, 0.6924],
        "seed 1, embedding_lr 0.01": [0.6904, 0.6921, 0.6929, 0.6920],
        # full-rank cross (FuxiCTR's CrossNetV2 form), seeds 0-2, 2 threads: best valid mean 0.6925 vs 0.6924
        "low_rank None (full-rank W), seed 0": [0.6927, 0.6916],
        "low_rank None (full-rank W), seed 1": [0.6912, 0.6914, 0.6890],
        "low_rank None (full-rank W), seed 2": [0.6899, 0.6935, 0.6913],
        "chosen": "defaults (the embedding_lr and full-rank gains are within seed noise on validation)",
    },
    "fxrec_interformer": {
        "defaults (num_layers 2)": [0.6875, 0.6860, 0.6869, 0.6810],
        "num_layers 1": [0.6856, 0.6859, 0.6855],
        "embedding_lr 0.02": [0.6851, 0.6825],
        "input_norm": [0.6849, 0.6834],
        "chosen": "defaults",
    },
    "fxrec_kunlun": {
        "defaults (num_layers 2, dense_lr 1e-3)": [0.6728, 0.6852, 0.6866, 0.6834],
        "dense_lr 3e-3": [0.6647, 0.6861, 0.6885, 0.6852],
        "embedding_lr 0.02": [0.6486, 0.6840, 0.6836],
        "input_norm": [0.6762, 0.6777, 0.6757],
        # Kunlun(input_norm=True), the constructor argument, with dense_lr 3e-3, seeds 0-2: best valid
        # 0.6867 / 0.6642 / 0.6828 (mean 0.678) vs 0.6900 without; on the simulator 0.5699 / 0.5644 /
        # 0.5775 (mean 0.571) vs 0.5525 without. Kept off here: MovieLens is the table's main dataset.
        "input_norm, seeds 0-2": [0.6867, 0.6642, 0.6828],
        "chosen": "dense_lr 3e-3",
        # Diagnosis only, after the table run: on the simulator Kunlun stays near-constant (valid < 0.5)
        # whatever the setting; nothing here was adopted. (Those runs stopped at patience 1; trained
        # all 6 epochs its curve rises to valid 0.55-0.57: see PATIENCE_BY_DATASET.)
        "simulator, dense_lr 1e-3": [0.4872, 0.4846],
        "simulator, rotary position": [0.4856, 0.4849],
        "simulator, rotary none": [0.4855, 0.4850],
        "simulator, num_layers 1": [0.4765, 0.4858, 0.4954],
    },
    "fxrec_dhen": {
        "defaults, seeds 0-2 (from the table run)": [0.6869, 0.6812, 0.6920],
        "embedding_lr 0.02": [0.6887, 0.6892, 0.6908, 0.6896],
        "seed 1, embedding_lr 0.02": [0.6840, 0.6874, 0.6860],
        "seed 2, embedding_lr 0.02": [0.6945, 0.6963, 0.6923],
        "chosen": "embedding_lr 0.02 (better on all three seeds: 0.6908 / 0.6874 / 0.6963)",
    },
}
# The embedding-optimizer sweep behind the current FXREC_TRAIN (it supersedes the `chosen` lines above):
# MovieLens, best validation AUC per seed (max 6 epochs, patience 1); test AUC was not looked at.
# Labels change the settings above them: "adam emb lr X, emb wd Y" is embedding_optimizer adam with
# embedding_lr X and embedding_weight_decay Y; "batch" is batch_size, "dropout" the heads' dropout.
SWEEP_OPTIMIZER: dict[str, dict[str, Any]] = {
    "fxrec_dcnv2": {
        "defaults (check), seeds 0-2": [0.6937, 0.6925, 0.691],
        "adam emb lr 1e-3, seed 0": [0.6937],
        "adam emb lr 3e-4, seed 0": [0.6854],
        "adam emb lr 3e-3, seed 0": [0.6929],
        "adam emb lr 2e-3, seed 0": [0.6941],
        "adam emb lr 1e-3, emb wd 1e-6, seed 0": [0.6942],
        "adam emb lr 1e-3, emb wd 1e-5, seed 0": [0.6943],
        "adam emb lr 1e-3, emb wd 1e-4, seed 0": [0.6944],
        "adam emb lr 1e-3, emb wd 1e-3, seeds 0-2": [0.6951, 0.6949, 0.6951],
        "adam emb lr 1e-3, emb wd 1e-2, seed 0": [0.6906],
        "adam emb lr 3e-3, emb wd 1e-4, seed 0": [0.6936],
        "adam emb lr 3e-3, emb wd 1e-3, seed 0": [0.6918],
        "dropout 0.1, seed 0": [0.6944],
        "dropout 0.2, seed 0": [0.6938],
        "dropout 0.3, seed 0": [0.6938],
        "batch 512, seed 0": [0.6898],
        "batch 2048, seed 0": [0.6928],
        "batch 4096, seeds 0-2": [0.6966, 0.6946, 0.6946],
        "dense_lr 3e-4, seed 0": [0.6945],
        "dense_lr 3e-3, seed 0": [0.6913],
        "dense weight_decay 1e-5, seed 0": [0.6939],
        "dense weight_decay 1e-4, seed 0": [0.6942],
        "embedding_lr 0.1, seed 0": [0.6908],
        "batch 4096, embedding_lr 0.1, seed 0": [0.6957],
        "batch 4096, embedding_lr 0.02, seed 0": [0.697],
        "batch 8192, seeds 0-2": [0.6984, 0.6955, 0.6959],
        "batch 8192, embedding_lr 0.1, seed 0": [0.6979],
        "batch 4096, dense_lr 2e-3, seed 0": [0.696],
        "batch 4096, dense_lr 5e-4, seed 0": [0.6974],
        "batch 4096, dropout 0.1, seed 0": [0.697],
        "batch 4096, adam emb lr 1e-3, emb wd 1e-3, seed 0": [0.696],
        "batch 4096, adam emb lr 3e-3, emb wd 1e-3, seed 0": [0.6953],
        "batch 4096, adam emb lr 3e-3, emb wd 1e-4, seed 0": [0.6946],
        "batch 4096, low_rank None, seed 0": [0.6958],
        "adam emb lr 1e-3, emb wd 3e-3, seed 0": [0.6938],
        "adam emb lr 1e-3, emb wd 1e-3, dense_lr 3e-4, seed 0": [0.6922],
        "batch 16384, seed 0": [0.6982],
        "batch 16384, embedding_lr 0.1, seeds 0-2": [0.698, 0.6963, 0.6962],
        "batch 8192, dense_lr 2e-3, seed 0": [0.6976],
        "batch 8192, dropout 0.1, seed 0": [0.6984],
        "batch 8192, embedding_lr 0.03, seed 0": [0.6983],
        "batch 8192, adam emb lr 1e-2, emb wd 1e-4, seed 0": [0.6924],
        "batch 8192, adam emb lr 1e-2, emb wd 1e-3, seed 0": [0.6893],
        "batch 8192, low_rank None, seeds 0-2": [0.698, 0.6956, 0.698],
        "batch 8192, num_layers 3, seed 0": [0.6973],
        "batch 8192, stacked, seeds 0-2": [0.6978, 0.6958, 0.6982],
        "batch 8192, deep_layers [256, 128], seed 0": [0.6969],
        "batch 2048, adam emb lr 2e-3, emb wd 1e-3, seed 0": [0.6933],
        "batch 4096, adam emb lr 5e-3, emb wd 3e-4, seed 0": [0.6939],
        "batch 8192, adam emb lr 3e-3, emb wd 3e-4, dense_lr 2e-3, seed 0": [0.6965],
        "adam emb lr 5e-4, emb wd 1e-3, seeds 0-2": [0.6947, 0.6946, 0.6956],
        # After the table run (test seen): three more, none better than batch 8192 alone (0.6966).
        "batch 8192, dense weight_decay 1e-4, seeds 0-2": [0.6979, 0.6956, 0.6962],
        "batch 8192, dense_lr 5e-4, seeds 0-2": [0.6976, 0.6964, 0.6956],
        "batch 8192, heads [256, 128], seeds 0-2": [0.6977, 0.695, 0.697],
        # Diagnosis, not adopted (peers keep the shared settings): FuxiCTR DCNv2 at batch 8192 reaches
        # valid 0.6924 / 0.6931 / 0.6932 (vs 0.6934 / 0.6958 / 0.6938 at 1024): the larger batch is no peer gain.
        "fuxictr_dcnv2 batch 8192 (peer diagnosis), seeds 0-2": [0.6924, 0.6931, 0.6932],
        "chosen": "batch_size 8192 (valid mean 0.6966 vs 0.6924 for the old defaults; full-rank 0.6972 and stacked 0.6973 are within seed noise of it, not adopted; Adam on embeddings at best 0.6950)",
    },
    "fxrec_dhen": {
        "batch 8192 (embedding_lr 0.02), seeds 0-2": [0.6931, 0.6901, 0.7003],
        "batch 8192, embedding_lr 0.05, seed 0": [0.6925],
        "batch 4096 (embedding_lr 0.02), seed 0": [0.6922],
        "batch 4096, embedding_lr 0.05, seed 0": [0.6925],
        "adam emb lr 1e-3, emb wd 1e-3, seeds 0-2": [0.6978, 0.6934, 0.6951],
        "adam emb lr 1e-3, emb wd 3e-3, seed 0": [0.6982],
        "adam emb lr 1e-3, emb wd 3e-4, seed 0": [0.6977],
        "adam emb lr 2e-3, emb wd 1e-3, seed 0": [0.6958],
        "adam emb lr 1e-3, emb wd 1e-3, batch 2048, seed 0": [0.6958],
        "adam emb lr 1e-3, emb wd 1e-3, dropout 0.1, seed 0": [0.6968],
        "adam emb lr 1e-3, emb wd 1e-3, dense_lr 2e-3, seed 0": [0.6951],
        "adam emb lr 3e-3, emb wd 1e-3, batch 4096, seed 0": [0.6937],
        "adam emb lr 1e-3, emb wd 1e-3, dense_lr 5e-4, seed 0": [0.6964],
        "adam emb lr 5e-4, emb wd 1e-3, seeds 0-2": [0.7005, 0.6913, 0.699],
        "adam emb lr 3e-4, emb wd 1e-3, seed 0": [0.6959],
        "adam emb lr 5e-4, emb wd 3e-3, seed 0": [0.6983],
        "chosen": "Adam embeddings, embedding_lr 5e-4, embedding_weight_decay 1e-3 (valid mean 0.6969 vs 0.6915 for row-wise AdaGrad at embedding_lr 0.02)",
    },
    "fxrec_interformer": {
        "adam emb lr 1e-3, emb wd 1e-3, seed 0": [0.6878],
        "batch 8192, seed 0": [0.684],
        "adam emb lr 1e-3, emb wd 3e-3, seed 0": [0.6889],
        "adam emb lr 2e-3, emb wd 1e-3, seeds 0-2": [0.6901, 0.687, 0.6906],
        "batch 2048, seed 0": [0.6806],
        "dense_lr 5e-4, seed 0": [0.6864],
        "dropout 0.1, seed 0": [0.6883],
        "embedding_lr 0.02, seed 0": [0.685],
        "chosen": "Adam embeddings, embedding_lr 2e-3, embedding_weight_decay 1e-3 (valid mean 0.6892 vs 0.6853 for the defaults)",
    },
    "fxrec_kunlun": {
        "adam emb lr 1e-3, emb wd 1e-3, seed 0": [0.6883],
        "adam emb lr 1e-3, emb wd 1e-3, dense_lr 1e-3, seed 0": [0.5688],
        "batch 8192, seed 0": [0.6045],
        "batch 4096, seed 0": [0.6868],
        "adam emb lr 2e-3, emb wd 1e-3, seed 0": [0.6883],
        "dropout 0.1, seeds 0-2": [0.6898, 0.6862, 0.6925],
        "chosen": "unchanged: dense_lr 3e-3 (valid mean 0.6903; Adam embeddings 0.6883 and dropout 0.1 0.6895 on the same seeds did not beat it)",
    },
    "other datasets (valid AUC per seed, earlier settings vs the MovieLens-tuned ones)": {
        # the simulator rows up to "open_bandit" are on the earlier 6,000-a-day log, except these two
        "simulator (10x log) fxrec_dcnv2, earlier": [0.6518, 0.6488, 0.6493],
        "simulator (10x log) fxrec_dcnv2, MovieLens-tuned": [0.6493, 0.6509, 0.6485],
        "simulator (10x log) fxrec_dhen, earlier (embedding_lr 0.02), seeds 0-1": [0.6534, 0.6522],
        "simulator (10x log) fxrec_dhen, MovieLens-tuned (the table run), seeds 0-2": [0.6574, 0.662, 0.6615],
        # DHEN on the 10x log, on top of the MovieLens-tuned entry (seed 0, then 1 where shown; the
        # architecture rows are DHEN constructor arguments / ModelConfig.target_attention)
        "simulator (10x log) fxrec_dhen, num_layers 3, seeds 0-1": [0.6537, 0.6526],
        "simulator (10x log) fxrec_dhen, modules dot,dcn,linear": [0.6563],
        "simulator (10x log) fxrec_dhen, modules dot,dcn,attention": [0.6451],
        "simulator (10x log) fxrec_dhen, ensemble concat": [0.6555],
        "simulator (10x log) fxrec_dhen, target_attention": [0.6557],
        "simulator (10x log) fxrec_dhen, embedding_lr 1e-3, seeds 0-2": [0.6650, 0.6685, 0.6695],
        "simulator (10x log) fxrec_dhen, embedding_lr 2e-3, seeds 0-1": [0.6646, 0.6691],
        "simulator fxrec_dcnv2, earlier": [0.6143, 0.6159, 0.6173],
        "simulator fxrec_dcnv2, MovieLens-tuned": [0.538, 0.514, 0.5297],
        "simulator fxrec_dhen, earlier": [0.6056, 0.6042, 0.5994],
        "simulator fxrec_dhen, MovieLens-tuned": [0.6123, 0.6094, 0.6177],
        "simulator fxrec_interformer, earlier": [0.5955, 0.5912, 0.5974],
        "simulator fxrec_interformer, MovieLens-tuned": [0.5783, 0.5792, 0.5777],
        "open_bandit fxrec_dcnv2, earlier": [0.5411, 0.5889, 0.561],
        "open_bandit fxrec_dcnv2, MovieLens-tuned": [0.6193, 0.4637, 0.4649],
        "open_bandit fxrec_dhen, earlier": [0.5487, 0.7574, 0.5964],
        "open_bandit fxrec_dhen, MovieLens-tuned": [0.5118, 0.5315, 0.4917],
        "open_bandit fxrec_interformer, earlier": [0.4334, 0.5749, 0.5091],
        "open_bandit fxrec_interformer, MovieLens-tuned": [0.3578, 0.5863, 0.4239],
        # the six-sample Open Bandit log (48k training rows, 32 validation positives): best validation AUC
        # over 6 epochs per seed (seeds 0-2), every model near chance
        "open_bandit (6 samples) fxrec_dcnv2, earlier": [0.5436, 0.5506, 0.5416],
        "open_bandit (6 samples) fxrec_dcnv2, MovieLens-tuned": [0.4657, 0.4701, 0.4971],
        "open_bandit (6 samples) fxrec_dhen, earlier": [0.5318, 0.5573, 0.5491],
        "open_bandit (6 samples) fxrec_dhen, MovieLens-tuned": [0.5354, 0.5277, 0.5132],
        "open_bandit (6 samples) fxrec_dhen, simulator's (Adam embeddings, lr 1e-3)": [
            0.5424,
            0.5545,
            0.4917,
        ],
        "open_bandit (6 samples) fxrec_interformer, earlier": [0.5345, 0.5407, 0.5536],
        "open_bandit (6 samples) fxrec_interformer, MovieLens-tuned": [0.5557, 0.4936, 0.5453],
        "open_bandit (6 samples) fxrec_kunlun, FXREC_TRAIN (dense_lr 3e-3)": [0.6213, 0.5852, 0.5587],
        "open_bandit (6 samples) fxrec_kunlun, TrainConfig defaults": [0.6167, 0.5725, 0.5771],
    },
}
# The target-attention / head-shape / dense-LR-schedule round (MovieLens, on top of the settings above):
# best validation AUC per seed (max 6 epochs, patience 1); test AUC was not looked at. "target_attention"
# is ModelConfig.target_attention (query item_id, 2 heads unless noted): the candidate attends over the
# jagged history and the result is one more token, next to the mean-pooled history. "heads hidden []"
# is a linear output layer on the interaction output (FuxiCTR's DCNv2: [cross || deep] -> Linear);
# "FuxiCTR shape" adds the full-rank cross (low_rank None). "dense lr warmup N" / "decay r / N steps"
# are TrainConfig.dense_lr_warmup_steps / dense_lr_decay / dense_lr_decay_steps (an epoch is 10 steps
# at batch 8192, 78 at batch 1024).
SWEEP_ARCH: dict[str, dict[str, Any]] = {
    "fxrec_dcnv2": {
        "current (batch 8192), seeds 0-2 (from SWEEP_OPTIMIZER)": [0.6984, 0.6955, 0.6959],
        "current (batch 8192), seeds 3-4": [0.6967, 0.6963],
        "target_attention, seeds 0-2": [0.6983, 0.6968, 0.6964],
        "target_attention, seeds 3-4": [0.6965, 0.6964],
        "target_attention heads 1, seeds 0-2": [0.6984, 0.6967, 0.6965],
        "target_attention heads 4, seeds 0-2": [0.6984, 0.6967, 0.6964],
        "target_attention query item_id+genres, seeds 0-2": [0.6981, 0.6964, 0.6962],
        "target_attention, batch 1024, seeds 0-2": [0.6934, 0.6932, 0.6926],
        "target_attention, batch 4096, seeds 0-2": [0.695, 0.6956, 0.6949],
        "heads hidden [], seeds 0-2": [0.6971, 0.696, 0.6985],
        "heads hidden [64], seeds 0-2": [0.6982, 0.6956, 0.6982],
        "target_attention, heads hidden [], seeds 0-2": [0.6971, 0.698, 0.6979],
        "target_attention, heads hidden [], seeds 3-4": [0.6978, 0.6961],
        "target_attention, heads hidden [64], seeds 0-2": [0.6991, 0.6955, 0.6974],
        "FuxiCTR shape (low_rank None, heads hidden []), seeds 0-2": [0.697, 0.6968, 0.6961],
        "FuxiCTR shape, seeds 3-4": [0.6971, 0.6961],
        "FuxiCTR shape, batch 1024, seeds 0-2": [0.6932, 0.6937, 0.6931],
        "FuxiCTR shape + target_attention, seeds 0-2": [0.697, 0.6984, 0.6981],
        "FuxiCTR shape + target_attention, seeds 3-4": [0.6982, 0.6961],
        "dense lr warmup 10, seeds 0-2": [0.6981, 0.6954, 0.6961],
        "dense lr decay 0.5 / 10 steps, seeds 0-2": [0.6962, 0.6956, 0.6956],
        "dense lr decay 0.7 / 10 steps, seeds 0-2": [0.6973, 0.6965, 0.6959],
        "dense_lr 2e-3, decay 0.5 / 10 steps, seeds 0-2": [0.6975, 0.696, 0.6963],
        "dense_lr 3e-3, warmup 10, decay 0.5 / 10 steps, seeds 0-2": [0.6977, 0.6949, 0.6967],
        # 85% of the validation and test rows are users absent from training (new MovieLens users):
        # min_count (ModelConfig) maps them to the trained OOV row instead of an untrained random row.
        "min_count 1, seeds 0-2": [0.698, 0.6966, 0.697],
        "min_count 2, seeds 0-2": [0.698, 0.6962, 0.6965],
        "min_count 5, seeds 0-2": [0.6973, 0.6957, 0.6966],
        # Diagnosis only (a monkeypatch in a scratch run, not fxrec code): FuxiCTR's embedding init,
        # normal std 1e-4, instead of fxrec's uniform +-0.05.
        "embedding init normal std 1e-4 (diagnosis), seeds 0-2": [0.6975, 0.6954, 0.6962],
        "chosen (session 4)": "unchanged (valid mean over seeds 0-4: current 0.6966, target_attention 0.6969, "
        "target_attention + heads hidden [] 0.6974, FuxiCTR shape + target_attention 0.6976; the best is "
        "+0.0010, worse than current on 2 of 5 seeds, within seed noise; no schedule, min_count or init beat it)",
        # Session 5: runs take ~5 s here (batch 8192), so min_count 1 got 7 paired seeds.
        "current, seeds 3-6": [0.6967, 0.6963, 0.6954, 0.697],
        "min_count 1, seeds 3-6": [0.698, 0.6963, 0.6963, 0.697],
        "min_count 1, simulator validation, seeds 0-2 (current: 0.6143, 0.6159, 0.6173)": [
            0.6145,
            0.6183,
            0.6172,
        ],
        # Diagnosis only (a scratch patch of FrequencyAdmission, not kept): DropoutNet-style id dropout,
        # user_id sent to row 0 with probability p in training, so the model learns to score the new
        # users that make up 85% of validation. It hurts at every p.
        "id dropout user_id p=0.1 (diagnosis), seeds 0-2": [0.6969, 0.6936, 0.6945],
        "id dropout p=0.25 (diagnosis), seeds 0-2": [0.6952, 0.6917, 0.691],
        "id dropout p=0.5 (diagnosis), seeds 0-2": [0.6911, 0.6884, 0.6872],
        "id dropout p=0.25 + min_count 1 (diagnosis), seeds 0-2": [0.6951, 0.692, 0.6928],
        "min_count 1, dense_lr 3e-3, seeds 0-2": [0.6976, 0.6939, 0.6968],
        "min_count 1, batch 4096, embedding_lr 0.03, seeds 0-2": [0.6969, 0.6947, 0.6948],
        "min_count 1, batch 16384, embedding_lr 0.1, seeds 0-2": [0.6969, 0.6968, 0.6972],
        "min_count 1, embedding_lr 0.1, seeds 0-2": [0.6976, 0.6957, 0.6968],
        "chosen": "min_count 1 (valid mean over seeds 0-6 0.6970 vs 0.6965, paired +0.0006: better on 4 seeds, "
        "worse on 1, level on 2; simulator +0.0009 over 3 seeds). A small gain, kept because it is also the "
        "principled choice: ids unseen in training (86% of test rows are new users, 1.5% new items) are "
        "scored from the trained out-of-vocabulary row instead of an untrained random one",
    },
    "fxrec_dhen": {
        "current (adam emb lr 5e-4, emb wd 1e-3), seeds 0-2 (from SWEEP_OPTIMIZER)": [0.7005, 0.6913, 0.699],
        "target_attention, seeds 0-2": [0.6956, 0.6964, 0.6965],
        "target_attention, adam emb lr 1e-3, seed 0": [0.6978],
        "target_attention, heads hidden [], seeds 0-2": [0.6963, 0.6948, 0.6961],
        "dense lr decay 0.5 / 78 steps, seeds 0-2": [0.6957, 0.6905, 0.6985],
        "dense lr warmup 78, seeds 0-2": [0.6953, 0.692, 0.695],
        "min_count 1, seeds 0-2": [0.6966, 0.6906, 0.6957],
        "embedding init normal std 1e-4 (diagnosis), seeds 0-2": [0.6964, 0.6931, 0.6952],
        "chosen": "unchanged (target_attention 0.6962, the schedules 0.6949 / 0.6941, min_count 1 0.6943 vs 0.6969)",
    },
    "fxrec_interformer": {
        "dense lr decay 0.5 / 78 steps, seeds 0-2": [0.6887, 0.6863, 0.69],
        "chosen": "unchanged (0.6883 vs 0.6892)",
    },
    "fxrec_kunlun": {
        "dense lr decay 0.5 / 78 steps (dense_lr 3e-3), seeds 0-2": [0.6817, 0.6943, 0.6925],
        # num_summary: how many tokens the ~n non-sequence tokens are compressed to (default 4); on the
        # scaling bench's simulator log keeping all of them helps the d=8 Kunlun (valid 0.611 -> 0.621)
        "num_summary 8, seeds 0-2": [0.6879, 0.6900, 0.6899],
        "num_summary 16, seeds 0-2": [0.6883, 0.6909, 0.6944],
        "chosen": "unchanged (decay 0.6895, num_summary 8 0.6893, num_summary 16 0.6912 vs 0.6903: within seed noise)",
        # A later round: interaction_tokens "all" (the global interaction crosses the raw tokens too;
        # kunlun.py's docstring), against the table run's 0.6885 / 0.6917 / 0.6899 on MovieLens and
        # 0.6488 / 0.6471 on the simulator's 10x log (seeds 0-1, every epoch, as the table trains there).
        "interaction_tokens all, seeds 0-2": [0.6874, 0.6942, 0.6895],
        "interaction_tokens all, simulator (10x log), seeds 0-1": [0.6506, 0.6532],
        "chosen (later round)": "interaction_tokens all (MovieLens level, 0.6904 vs 0.6900; simulator +0.004)",
    },
}
# Early-stopping patience per dataset, for every model alike (fxrec and peers); --patience elsewhere.
# On the simulator's earlier log (6,000 impressions a day) the validation curves were non-monotone in
# the first epochs (222 validation positives):
# with patience 1, Kunlun stopped at epoch 0 on all seeds (seed 0: 0.518, 0.480, ...) although its
# curve rises to 0.570 by epoch 5, so there every model trains all epochs and keeps its best validation
# epoch. Rerunning the simulator's whole table so changed only Kunlun (best epochs 0,0,0 -> 5,5,4,
# valid 0.525 -> 0.553): the other seven models' curves fall after the epoch patience 1 kept.
# Open Bandit (32 validation positives) is the same case: validation AUC moves by noise from epoch to
# epoch and most fxrec curves in SWEEP's six-sample rows still rise at epoch 5.
PATIENCE_BY_DATASET: dict[str, int | None] = {
    "simulator": None,
    "open_bandit": None,
}  # None: no early stopping
# 300k events: 240k train, 30k valid and 30k test rows (2,110 test positives). The earlier log had a
# tenth of the impressions and 208 test positives, too few to tell the models apart (every model's
# test AUC 0.54-0.57, best fxrec minus best peer -0.0016, 95% interval -0.037..+0.034).
SIMULATOR = SimulatorConfig(
    seed=11,
    days=5,
    impressions_per_day=60_000,
    users=3_000,
    new_users_per_day=100,
    ads=600,
    new_ads_per_day=40,
    advertisers=120,
)


def load_dataset(name: str) -> tuple[EventLog, tuple[int, int]]:
    """The event log and its (train_end, valid_end) event ids; imported or simulated once, cached."""
    if name == "simulator":
        path = simulated_log(SIMULATOR, "quality")
    else:
        path = CACHE / {"movielens": "movielens-100k", "open_bandit": "open-bandit-6"}[name]
    if not path.exists() and name == "movielens":
        import_movielens_100k(path)
    elif not path.exists():  # all six samples: 60,000 impressions, 287 clicks (one sample has about 40)
        import_open_bandit(path, campaigns=open_bandit.CAMPAIGNS, policies=open_bandit.POLICIES)
    log = EventLog(path)
    if name == "movielens":
        return log, movielens_split_points(log)
    return log, split_points(log.read_all(["event_id"]).column("event_id").to_numpy())


def quick_masks(table: pa.Table, train_end: int, valid_end: int, size: int = 3_000) -> dict[str, np.ndarray]:
    """--quick: the last `size` training events and the first `size` of valid and of test."""
    ids = table.column("event_id").to_numpy()
    return {
        "train": (ids < train_end) & (ids >= train_end - 2 * size),
        "valid": (ids >= train_end) & (ids < train_end + size),
        "test": (ids >= valid_end) & (ids < valid_end + size),
    }


def fxrec_train(model_name: str, dataset: str) -> dict[str, Any]:
    """The model's TrainConfig overrides on this dataset (FXREC_TRAIN unless FXREC_TRAIN_BY_DATASET says otherwise)."""
    return FXREC_TRAIN_BY_DATASET.get(dataset, {}).get(model_name, FXREC_TRAIN.get(model_name, {}))


def run_fxrec(
    model_name: str,
    log: EventLog,
    frames: SplitFrames,
    seed: int,
    epochs: int,
    patience: int,
    rows: int | None,
    threads: int = 1,
    dataset: str = "movielens",
) -> dict:
    torch.manual_seed(seed)
    config = ModelConfig(
        name=model_name,
        role="fm",
        tasks=["click"],
        embedding_dim=EMBEDDING_DIM,
        interaction=FXREC_MODELS[model_name],
        **{"heads": HEADS, **FXREC_CONFIG.get(model_name, {})},
    )
    overrides = {"batch_size": BATCH_SIZE, "dense_lr": DENSE_LR, **fxrec_train(model_name, dataset)}
    train = TrainConfig(seed=seed, threads=threads, **overrides)
    model = build_model(
        config, log.spec, embedding_lr=train.embedding_lr, embedding_optimizer=train.embedding_optimizer
    )
    trainer = Trainer(model, train, Path("/tmp/fxrec-quality-peers"), progress=False)
    result = fit_holdout(trainer, frames, max_epochs=epochs, patience=patience, max_train_rows=rows)
    return {
        "best_epoch": result.best_epoch,
        "valid_auc": result.valid["auc"],
        "valid_curve": [e.valid["auc"] for e in result.epochs],
        "test_auc": result.test["auc"],
        "test_log_loss": result.test["log_loss"],
        "test_probs": trainer.predict(frames.test)["click"],  # the best epoch's weights are restored
    }


def summarise(dataset: str, model: str, runs: list[dict]) -> dict[str, Any]:
    auc = np.array([r["test_auc"] for r in runs])
    loss = np.array([r["test_log_loss"] for r in runs])
    return {
        "dataset": dataset,
        "model": model,
        "seeds": len(runs),
        "test_auc": float(auc.mean()),
        "auc_std": float(auc.std()),
        "test_logloss": float(loss.mean()),
        "logloss_std": float(loss.std()),
        "valid_auc": float(np.mean([r["valid_auc"] for r in runs])),
        "best_epochs": ",".join(str(r["best_epoch"]) for r in runs),
        "seconds": float(np.mean([r["seconds"] for r in runs])),
    }


BOOTSTRAP_RESAMPLES = 2000
# Below this a test AUC difference says nothing (one positive: AUC is its rank) and most bootstrap draws
# hold no positive; Open Bandit's six samples have 33 test positives over 226 users, enough for a wide
# but defined interval.
MIN_TEST_POSITIVES = 20


def paired(
    tests: dict[str, tuple[np.ndarray, np.ndarray]],
    predictions: dict[str, dict[str, list[np.ndarray]]],
    dataset: str,
    a: str,
    b: str,
) -> dict[str, float] | None:
    """The paired, user-clustered bootstrap of model a's mean test AUC minus model b's (None without predictions)."""
    runs = predictions.get(dataset, {})
    if dataset not in tests or not runs.get(a) or not runs.get(b):
        return None
    labels, users = tests[dataset]
    return auc_difference(labels, runs[a], runs[b], users, resamples=BOOTSTRAP_RESAMPLES)


def compare(
    table: list[dict[str, Any]],
    datasets: list[str],
    raw: dict[str, Any],
    tests: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    predictions: dict[str, dict[str, list[np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Per dataset: fxrec DCNv2 minus each peer's DCN(v2), and the best fxrec backbone minus the best
    peer (test AUC), each with its paired bootstrap interval where the runs' test predictions are known."""
    tests, predictions = tests or {}, predictions or {}
    ratios: dict[str, Any] = {}
    for dataset in datasets:
        by_model = {r["model"]: r["test_auc"] for r in table if r["dataset"] == dataset}
        fx = {m: a for m, a in by_model.items() if m in FXREC_MODELS}
        peers = {m: a for m, a in by_model.items() if m in PEER_MODELS}
        positives = raw.get(dataset, {}).get("split", {}).get("test_positives")
        entry: dict[str, Any] = {"test_positives": positives}
        scored = tests  # the test rows to bootstrap over
        if positives is not None and positives < MIN_TEST_POSITIVES:
            entry["note"] = f"uninformative: the test split has {positives} positive(s)"
            scored = {}  # nor is a bootstrap over those rows: most draws hold no positive at all
        for peer_dcn in ("deepctr_dcn", "fuxictr_dcnv2"):
            if "fxrec_dcnv2" in fx and peer_dcn in peers:
                entry[f"dcnv2_minus_{peer_dcn}_auc"] = fx["fxrec_dcnv2"] - peers[peer_dcn]
                interval = paired(scored, predictions, dataset, "fxrec_dcnv2", peer_dcn)
                if interval is not None:
                    entry[f"dcnv2_minus_{peer_dcn}_bootstrap"] = interval
        if fx and peers:
            best_fx, best_peer = max(fx, key=fx.get), max(peers, key=peers.get)  # type: ignore[arg-type]
            entry.update(
                best_fxrec=best_fx,
                best_peer=best_peer,
                best_fxrec_minus_best_peer_auc=fx[best_fx] - peers[best_peer],
            )
            interval = paired(scored, predictions, dataset, best_fx, best_peer)
            if interval is not None:
                entry["best_fxrec_minus_best_peer_bootstrap"] = interval
        ratios[dataset] = entry
    return ratios


def predictions_path(result: Path) -> Path:
    """Where a result file's per-run test predictions live (for the paired bootstrap and --resume)."""
    return result.with_name(f"{result.stem}_predictions.npz")


def save_predictions(path: Path, predictions: dict[str, dict[str, list[np.ndarray]]]) -> None:
    arrays = {
        f"{d}/{m}/{i}": p
        for d, models in predictions.items()
        for m, runs in models.items()
        for i, p in enumerate(runs)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_predictions(path: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """{dataset: {model: [test probs per seed]}} from `save_predictions`; empty if the file is absent."""
    if not path.exists():
        return {}
    found: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    with np.load(path) as arrays:
        for key in arrays.files:
            dataset, model, index = key.split("/")
            found.setdefault(dataset, {}).setdefault(model, {})[int(index)] = arrays[key]
    return {
        d: {m: [runs[i] for i in sorted(runs)] for m, runs in models.items()} for d, models in found.items()
    }


def settings(epochs: int, patience: int) -> dict[str, Any]:
    return {
        "embedding_dim": EMBEDDING_DIM, "batch_size": BATCH_SIZE, "dense_lr": DENSE_LR, "epochs": epochs, "patience": patience, "patience_by_dataset": PATIENCE_BY_DATASET, "fxrec_config": FXREC_CONFIG, "sweep_arch_valid_auc": SWEEP_ARCH,
        "fxrec_models": FXREC_MODELS, "fxrec_train": FXREC_TRAIN, "fxrec_train_by_dataset": FXREC_TRAIN_BY_DATASET, "sweep_valid_auc": SWEEP, "sweep_optimizer_valid_auc": SWEEP_OPTIMIZER, "heads": HEADS, "peer_hidden": [128, 64], "simulator": SIMULATOR.model_dump(),
        "fuxictr": "FuxiCTR 2.3.10 layers (FeatureEmbeddingDict on an in-memory FeatureMap, CrossNetV2, "
        "DIN_Attention, MLP_Block) assembled as model_zoo DCNv2 (parallel, 2 cross layers) / DIN (Dice "
        "attention [64], no softmax), FuxiCTR init, plain Adam loop; see bench/_peers.py",
    }  # fmt: skip


def main() -> None:
    args = parse_args(
        "quality_peers",
        __doc__.splitlines()[0],
        [
            (("--datasets",), {"default": "movielens,simulator,open_bandit"}),
            (("--models",), {"default": ",".join([*FXREC_MODELS, *PEER_MODELS])}),
            (("--seeds",), {"type": int, "default": 3}),
            (("--threads",), {"type": int, "default": 1}),
            (("--epochs",), {"type": int, "default": 6}),
            (("--patience",), {"type": int, "default": 1}),
            # Keep the (dataset, model) results of an earlier run's JSON and run only what it lacks.
            (("--resume",), {"type": Path, "nargs": "*", "default": []}),
        ],
    )
    torch.set_num_threads(args.threads)
    datasets = ["movielens"] if args.quick else args.datasets.split(",")
    models = args.models.split(",")
    seeds = 1 if args.quick else args.seeds
    epochs, patience = (1, 1) if args.quick else (args.epochs, args.patience)
    rows = None
    raw: dict[str, dict[str, list[dict]]] = {}
    table: list[dict[str, Any]] = []
    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per dataset: test labels, test users
    predictions: dict[str, dict[str, list[np.ndarray]]] = {}  # dataset -> model -> test probs per seed
    for path in args.resume:  # earlier runs' results, kept as they are (see --resume)
        earlier = json.loads(path.read_text())
        for dataset, runs in earlier["runs"].items():
            raw.setdefault(dataset, {}).update(runs)
        for dataset, saved in load_predictions(predictions_path(path)).items():
            predictions.setdefault(dataset, {}).update(saved)
        kept = {(r["dataset"], r["model"]) for r in earlier["rows"]}
        table = [r for r in table if (r["dataset"], r["model"]) not in kept]
        table += [r for r in earlier["rows"] if r["dataset"] in datasets]
    for dataset in datasets:
        log, (train_end, valid_end) = load_dataset(dataset)
        features = list(log.spec.features)
        if args.quick:  # a slice of each split; histories still come from the whole log
            frames = split_by_mask(
                log, features, partial(quick_masks, train_end=train_end, valid_end=valid_end)
            )
        else:
            frames = split_by_event_id(log, features, train_end, valid_end)
        lengths = max_lengths([frames.train, frames.valid, frames.test], features, log.spec.history_length)
        peer = {s: frame_to_peer(getattr(frames, s), features, lengths) for s in ("train", "valid", "test")}
        columns = feature_columns(log.spec, features, EMBEDDING_DIM, lengths)
        tests[dataset] = (peer["test"].labels, frames.test.meta["user_id"].numpy())
        raw.setdefault(dataset, {})["split"] = {
            "train_end": train_end,
            "valid_end": valid_end,
            **frames.sizes(),
            **{f"{s}_positives": int(peer[s].labels.sum()) for s in ("train", "valid", "test")},
        }  # type: ignore[assignment]
        # --quick keeps its one epoch; the simulator trains every epoch (PATIENCE_BY_DATASET says why).
        dataset_patience = patience if args.quick else PATIENCE_BY_DATASET.get(dataset, patience) or epochs
        for model in models:
            if model in raw[dataset]:
                continue
            runs = []
            for seed in range(seeds):
                started = time.perf_counter()
                if model in FXREC_MODELS:
                    run = run_fxrec(
                        model, log, frames, seed, epochs, dataset_patience, rows, args.threads, dataset
                    )
                elif model in FUXICTR_MODELS:
                    run = fit_fuxictr(
                        model,
                        log.spec,
                        features,
                        peer["train"],
                        peer["valid"],
                        peer["test"],
                        seed,
                        EMBEDDING_DIM,
                        BATCH_SIZE,
                        DENSE_LR,
                        epochs,
                        dataset_patience,
                    )
                else:
                    run = fit_peer(
                        model,
                        columns,
                        features,
                        peer["train"],
                        peer["valid"],
                        peer["test"],
                        seed,
                        BATCH_SIZE,
                        DENSE_LR,
                        epochs,
                        dataset_patience,
                    )
                run["seconds"] = time.perf_counter() - started
                probs = np.asarray(run.pop("test_probs"), dtype=np.float32)
                predictions.setdefault(dataset, {}).setdefault(model, []).append(probs)
                runs.append(run)
                print(
                    f"{dataset:12s} {model:18s} seed {seed}: test AUC {run['test_auc']:.4f}  valid {run['valid_curve']}",
                    flush=True,
                )
            raw[dataset][model] = runs
            table.append(summarise(dataset, model, runs))
            # Written after every model, so a long run interrupted midway keeps what it measured.
            partial_settings = settings(epochs, patience)
            save_predictions(predictions_path(args.out), predictions)
            write_result(
                args,
                "quality_peers",
                table,
                compare(table, datasets, raw),  # the bootstrap intervals come with the final table
                runs=raw,
                settings=partial_settings,
                complete=False,
            )
    order = [*FXREC_MODELS, *PEER_MODELS]
    table.sort(
        key=lambda r: (datasets.index(r["dataset"]), order.index(r["model"]) if r["model"] in order else 99)
    )
    print_table("test AUC / log loss, mean ± std over seeds (best validation epoch)", table)
    ratios = compare(table, datasets, raw, tests, predictions)
    save_predictions(predictions_path(args.out), predictions)
    for dataset, entry in ratios.items():
        print(dataset, entry)
        interval = entry.get("best_fxrec_minus_best_peer_bootstrap")
        if interval is not None:
            print(
                f"{dataset}: {entry['best_fxrec']} - {entry['best_peer']} test AUC {interval['difference']:+.4f}, "
                f"95% [{interval['low']:+.4f}, {interval['high']:+.4f}] over {interval['clusters']} test users, "
                f"fxrec ahead in {interval['p_a_ahead']:.0%} of draws"
            )
    write_result(
        args, "quality_peers", table, ratios, runs=raw, settings=settings(epochs, patience), complete=True
    )


if __name__ == "__main__":
    main()
