"""FAISS index of training-set embeddings (with stage-2 pixel sketches) and holdout calibration."""
