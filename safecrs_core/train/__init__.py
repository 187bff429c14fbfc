"""The recommender and its training: the prompt format and its one parser, candidate sources,
the language model and grounded decoding, the rank-level rewards, Safe-SFT (trl SFTTrainer) and
Safe-GDPO (trl GRPOTrainer with per-reward normalisation)."""
