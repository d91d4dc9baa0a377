"""Evaluation protocols for pretrained encoders."""
