"""The applications behind train.py, generate.py and evaluate.py: the only code that reads a Hydra
DictConfig; everything below them takes typed arguments."""
