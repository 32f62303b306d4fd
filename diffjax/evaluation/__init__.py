"""Evaluation: sample generation, picture writers (and later NLL and Fréchet distances)."""
