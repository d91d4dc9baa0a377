"""Tokenizers: turn raw inputs (images, points, voxels, text) into tokens plus a layout."""
