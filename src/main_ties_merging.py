"""TIES-Merging (Yadav et al., 2023): trim to top 20 %, elect signs, disjoint sum, times 0.3."""

from adamerging.commands.pipeline import main

if __name__ == "__main__":
    main("ties_merging")
