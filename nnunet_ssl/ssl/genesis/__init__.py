"""Models Genesis (Zhou et al. 2019, 2021): restore a patch from shuffled, curved and painted versions of it."""
