"""Rotation prediction (Gidaris et al. 2018): classify by how many quarter turns a patch was rotated in-plane."""
