"""The paper's experiments, one command each (see the adamerging/experiments/ package):

    python src/experiments.py {main-table,published,entropy-loss,coefficients,generalization,robustness,ablations,all} --model mini
"""
from adamerging.experiments import main

if __name__ == "__main__":
    main()
