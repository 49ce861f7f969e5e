"""The ads funnel: retrieval, then (part 2) early-stage ranking, then the final stage's VMs.

A real ads system retrieves a few thousand candidates per request, cuts them down with an early-stage
ranker and lets the final-stage model pick the winners. This package holds the stages before the VMs
and what measures them:

- `engagements`: the clicks of the impression log, sliced so that day t sees only days before it;
- `user_embeddings`: each user's latest published FM user-tower embedding before day t;
- `neighbours`: the k-nearest-neighbour user graph (faiss HNSW, or exact search as the reference);
- `retrievers`: ALURE graph retrieval and its baselines (popularity, item-to-item co-engagement, a
  two-tower model trained on the same log), all behind one `Retriever` interface;
- `recall`: recall@K of the items users actually clicked; `evaluate`: every retriever over later days.

The early-stage ranker (part 2) plugs in after `Retriever.retrieve`, reading the candidate log
(`fxrec.data.candidates`) for the final stage's value of each candidate.

- `value`: the final stage's value formula, bid x pCTR x pCVR - hide_penalty x pHide (its one home);
- `candidate_rows`: each logged candidate as its request's impression row with the candidate's ad in it;
- `final_stage`: a trained VM's probabilities and value for every logged candidate (`FinalStage`);
- `esr`: the early-stage ranker (`EarlyStageRanker`, two towers, click / conversion / hide heads) and
  its single-task baseline, trained on the days before t only, optionally distilled from the final stage;
- `soft_recall`: soft recall@K, the share of the final stage's value the ESR's top K keeps.
"""

from fxrec.funnel.engagements import Engagements
from fxrec.funnel.esr import EarlyStageRanker, EsrFeatures, SeparateRankers, TowerInputs
from fxrec.funnel.evaluate import RetrievalResult, evaluate_retrieval
from fxrec.funnel.neighbours import UserGraph, exact_neighbours, hnsw_neighbours
from fxrec.funnel.recall import recall_at_k
from fxrec.funnel.retrievers import (
    AlureRetriever,
    CoEngagementRetriever,
    PopularityRetriever,
    Retriever,
    TwoTowerRetriever,
)
from fxrec.funnel.soft_recall import soft_recall_at_k, soft_recall_per_request
from fxrec.funnel.user_embeddings import published_user_embeddings
from fxrec.funnel.value import HIDE_PENALTY, value

__all__ = [
    "AlureRetriever",
    "CoEngagementRetriever",
    "EarlyStageRanker",
    "Engagements",
    "EsrFeatures",
    "HIDE_PENALTY",
    "PopularityRetriever",
    "RetrievalResult",
    "Retriever",
    "SeparateRankers",
    "TowerInputs",
    "TwoTowerRetriever",
    "UserGraph",
    "evaluate_retrieval",
    "exact_neighbours",
    "hnsw_neighbours",
    "published_user_embeddings",
    "recall_at_k",
    "soft_recall_at_k",
    "soft_recall_per_request",
    "value",
]
