"""In-painting: restore random cubes of the patch replaced by a constant or by noise."""
