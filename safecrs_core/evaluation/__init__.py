"""Measuring recommenders: Recall/NDCG/SVR and their bootstrap CIs, the baseline recommenders,
the evaluation runs that score every system on the same rows, and the book's figures."""
