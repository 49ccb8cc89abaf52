"""The paper's experiments, one command each (see the adamerging/experiments/ package):

    python src/experiments.py EXPERIMENT --model mini

EXPERIMENT: main-table, published, entropy-loss, coefficients, generalization, robustness,
ablations or all.
"""

from adamerging.commands.experiments import main

if __name__ == "__main__":
    main()
