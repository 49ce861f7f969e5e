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
"""

from fxrec.funnel.engagements import Engagements
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
from fxrec.funnel.user_embeddings import published_user_embeddings

__all__ = [
    "AlureRetriever",
    "CoEngagementRetriever",
    "Engagements",
    "PopularityRetriever",
    "RetrievalResult",
    "Retriever",
    "TwoTowerRetriever",
    "UserGraph",
    "evaluate_retrieval",
    "exact_neighbours",
    "hnsw_neighbours",
    "published_user_embeddings",
    "recall_at_k",
]
